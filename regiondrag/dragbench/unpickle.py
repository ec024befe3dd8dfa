"""A pickle reader that builds only plain values and numpy arrays (DragBench's metadata files).

Pickles can run code when loaded, so DragBench's `.pkl` files are read by an unpickler that
only builds plain Python values and numpy arrays, and refuses anything else by name.
"""
from __future__ import annotations

import io
import pickle

# The globals a pickle of dicts, lists, strings, numbers and numpy arrays refers to, by the
# numpy >= 2 names (numpy 1 wrote `numpy.core`, read as `numpy._core`): arrays are rebuilt
# by `_reconstruct` (protocols <= 4) or `_frombuffer` (5); protocol 2 spells bytes as
# `_codecs.encode`.
ALLOWED_GLOBALS = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"), ("builtins", "set"), ("builtins", "frozenset"),
})


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle that refers to something other than plain values and numpy arrays."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        canonical = module.replace("numpy.core", "numpy._core", 1) if module.startswith("numpy.core") else module
        if (canonical, name) not in ALLOWED_GLOBALS:
            raise UnsafePickleError(f"refusing to load {module}.{name}: only plain values and numpy "
                                    f"arrays are allowed in DragBench metadata")
        try:
            return super().find_class(canonical, name)
        except ModuleNotFoundError:  # numpy 1 has no numpy._core
            return super().find_class(module, name)


def restricted_load(data: bytes):
    """pickle.loads that builds only plain values and numpy arrays."""
    return _RestrictedUnpickler(io.BytesIO(data)).load()
