"""Errors of the weights package: one base class, so callers can catch every loading problem."""


class WeightsError(RuntimeError):
    """A checkpoint that cannot be used: unreadable, wrong layout, or not matching the config."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    """No checkpoint where we looked: a missing path, or a hub model not in the local cache."""
