"""The method's settings: one frozen `EditConfig`, with the reference's evaluation settings as `REFERENCE`.

    config = EditConfig(start_t=0.7, method="cp_then_encode")   # or REFERENCE.replace(start_t=0.7)
    pipe.edit(photo, regions, config=config)
    config = REFERENCE.with_settings({"steps": 25.0, "swap_layers": "up.*"})  # flat values: a flag, a UI control

Every range is checked here, once, when a config is made; `with_settings` is the one translator from
flat outside values (CLI flags, the browser editor's controls, a sweep file's entries) to a config.
The fields an inversion depends on are marked (`inversion_field`); `config.inversion` is that frozen
part, the pipeline's cache key (with the photo and the prompt).

Every field is an ablation axis of the paper or of ours; the defaults are the reference
implementation's (RegionDrag run_eval.py, DESIGN.md "Facts"): 20 steps, start_t 0.5, handle
noise 1.0, seed 42, its timestep grid, copy-paste at every step, IP-Adapter-Plus at 0.5.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

from models.backbones import BACKBONES
from sampling import START_T, STEPS, TRAIN_TIMESTEPS, Grid, consistent_grid, reference_grid

from .attention_swap import AttentionSwap
from .copy_paste import END_T, PASTE_SCHEDULES
from .image_io import MAX_SIDE

NOISE_SCALE = 1.0    # handle noise s: pure noise at handle positions
SEED = 42
METHODS = {  # ours -> the reference UI's names
    "encode_then_cp": "Encode then CP",  # cycle-SDE inversion of the photo, paste latents (default)
    "cp_then_encode": "CP then Encode",  # DDIM inversion of a pixel copy-pasted preview
}
GRIDS = {"reference": reference_grid, "consistent": consistent_grid}  # the reference's (549/550 mismatch) or ours
# Bounds of the settings that size the work: more steps than training timesteps have no
# timestep to visit (and the K/V store grows with every inversion step); a long side above
# this makes one self-attention map (side/8)^4 entries: 4096 px is 16 GB of it in fp16.
MAX_STEPS = TRAIN_TIMESTEPS
MAX_SIDE_LIMIT = 4096
SEED_RANGE = (0, 2**64 - 1)  # what torch.Generator.manual_seed and numpy's default_rng both take
# A prompt's length in characters: CLIP reads its first 77 tokens (a few hundred characters) and
# drops the rest, which would only cost tokenizing time and memory (8 MB of text: 2.5 GB, 20 s).
MAX_PROMPT_CHARS = 2000


class ConfigError(ValueError):
    """A setting out of its range; `field` names it (the CLI names its flag), the message says the range."""

    def __init__(self, field: str, value, requirement: str, message: Optional[str] = None):
        self.field = field
        super().__init__(message or f"{field}={value!r:.40} {requirement}")


def check_prompt(prompt) -> str:
    """The text prompt (not a setting of EditConfig, but an input checked as one: ConfigError)."""
    if not isinstance(prompt, str):
        raise ConfigError("prompt", prompt, "must be text (a str)")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ConfigError("prompt", None, "", f"a prompt of {len(prompt)} characters is longer than "
                          f"{MAX_PROMPT_CHARS}; CLIP reads only its first 77 tokens: shorten it")
    return prompt


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def inversion_field(default):
    """A setting the inversion depends on: part of `EditConfig.inversion`, the inversion cache's key.
    (tests/test_config.py checks that changing any other setting leaves the inversion as it is.)"""
    return field(default=default, metadata={"inversion": True})


@dataclass(frozen=True)
class InversionSettings:
    """The frozen part of an EditConfig an inversion depends on: its marked fields, by name and value."""
    items: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class EditConfig:
    steps: int = inversion_field(STEPS)             # timestep grid of the whole diffusion (20)
    start_t: float = inversion_field(START_T)       # fraction of it inverted and denoised (0.5: 10 steps)
    end_t: float = END_T                            # read only by paste_schedule="until_end_t"
    noise_scale: float = NOISE_SCALE                # handle noise s: x*sqrt(1-s^2) + s*noise
    seed: int = inversion_field(SEED)               # the inversion's noises, then the handle noise
    method: str = inversion_field("encode_then_cp") # see METHODS (cycle-SDE or DDIM inversion)
    ip_scale: float = inversion_field(BACKBONES["sd15"].ip_scale)  # image-prompt scale (with an IP-Adapter); 0: off
    grid: str = inversion_field("reference")        # see GRIDS
    paste_schedule: str = "every_step"              # see copy_paste.PASTE_SCHEDULES
    attention_swap: AttentionSwap = AttentionSwap()
    point_fraction: float = 1.0                     # ablation: keep this fraction of the mapping's pairs
    max_side: Optional[int] = inversion_field(MAX_SIDE)  # long side the model works at; None: the photo's own

    def __post_init__(self):
        for name, label, choices in (("method", "method", METHODS), ("grid", "grid", GRIDS),
                                     ("paste_schedule", "copy-paste schedule", PASTE_SCHEDULES)):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in choices:
                raise ConfigError(name, value, "", f"unknown {label} {value!r:.40}; choose one of {', '.join(choices)}")
        if not (_is_int(self.steps) and 2 <= self.steps <= MAX_STEPS):
            raise ConfigError("steps", self.steps, f"must be a whole number in 2 ... {MAX_STEPS}")
        if not _is_real(self.start_t):
            raise ConfigError("start_t", self.start_t, "must be a number strictly between 0 and 1")
        try:  # the grid's own rule (sampling.num_inversion_steps) bounds start_t
            grid = self.timestep_grid()
        except ValueError as e:
            raise ConfigError("start_t", self.start_t, "", str(e)) from None
        if max(t for step in grid.inversion + grid.denoising for t in step) >= TRAIN_TIMESTEPS:
            raise ConfigError("steps", self.steps, "", f"steps={self.steps} with start_t={self.start_t} steps past the "
                              f"last training timestep ({TRAIN_TIMESTEPS - 1}); use more steps or a smaller start_t")
        for name, low, high, closed in (("end_t", 0, 1, True), ("noise_scale", 0, 1, True),
                                        ("point_fraction", 0, 1, False), ("ip_scale", 0, math.inf, True)):
            value = getattr(self, name)
            if not (_is_real(value) and (low <= value if closed else low < value) and value <= high):
                interval = f"{'[' if closed else '('}{low}, {high}]" if high < math.inf else f">= {low}"
                raise ConfigError(name, value, f"must be a finite number {'in ' if high < math.inf else ''}{interval}")
        if not (_is_int(self.seed) and SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]):
            raise ConfigError("seed", self.seed, "must be a whole number in 0 ... 2**64 - 1")
        if self.max_side is not None and not (_is_int(self.max_side) and 8 <= self.max_side <= MAX_SIDE_LIMIT):
            raise ConfigError("max_side", self.max_side, f"must be a whole number of pixels in 8 ... {MAX_SIDE_LIMIT}")
        self._check_attention_swap()

    def _check_attention_swap(self) -> None:
        swap = self.attention_swap
        if not isinstance(swap, AttentionSwap):
            raise ConfigError("attention_swap", swap, "must be an AttentionSwap")
        layer = lambda i: (_is_int(i) and i >= 0) or (isinstance(i, str) and i.strip())  # noqa: E731
        for name, valid, what in (("layers", layer, "layer indices >= 0, names or patterns"),
                                  ("steps", lambda j: _is_int(j) and j >= 0, "indices >= 0")):
            chosen = getattr(swap, name)
            if chosen is not None and not (isinstance(chosen, frozenset) and all(valid(i) for i in chosen)):
                raise ConfigError(f"attention_swap.{name}", chosen, f"must be None or a set of {what}")
        n = len(self.timestep_grid().denoising)
        if swap.steps is not None and any(j >= n for j in swap.steps):
            raise ConfigError("attention_swap.steps", swap.steps, f"must be denoising step indices 0 ... {n - 1}")

    def resolve_attention_swap(self, layer_names: Sequence[str]) -> AttentionSwap:
        """attention_swap with its layers as indices into the UNet's self-attention layers (their names known
        only with the model: `unet.self_attention_layer_names()`); a layer it names that is not there is a
        ConfigError."""
        try:
            return self.attention_swap.resolve(layer_names)
        except ValueError as e:
            raise ConfigError("attention_swap.layers", self.attention_swap.layers, "", f"attention_swap.layers: {e}") from None

    @property
    def inversion(self) -> InversionSettings:
        """The settings an inversion depends on (with the photo and prompt, the inversion cache's key)."""
        return InversionSettings(tuple((f.name, getattr(self, f.name)) for f in dataclasses.fields(self)
                                       if f.metadata.get("inversion")))

    @classmethod
    def setting_names(cls) -> list[str]:
        """What with_settings takes: the fields, and the attention swap's flat parts."""
        return [f.name for f in dataclasses.fields(cls)] + ["swap_layers", "swap_steps"]

    def with_settings(self, settings: Mapping[str, Any]) -> "EditConfig":
        """A copy with flat outside values applied: a CLI flag's, a browser control's, a sweep file's.

        Keys are the fields' names; the attention swap is `attention_swap` (a bool: on or off; or a dict of
        AttentionSwap's fields), `swap_layers` (indices, names or patterns such as "up.*", a list or a
        comma-separated string) and `swap_steps`. Numbers may come as floats with whole values (a number
        box's), or as text; a value of the wrong kind or out of range is a ConfigError naming the setting.
        """
        unknown = [name for name in settings if name not in self.setting_names()]
        if unknown:
            raise ConfigError(unknown[0], settings[unknown[0]], "", f"{unknown[0]!r:.40} is not a setting; the settings "
                                                                    f"are {', '.join(self.setting_names())}")
        changes, swap = {}, {}
        for name, value in settings.items():
            if name in ("swap_layers", "swap_steps"):
                swap[name[len("swap_"):]] = _selection(name, value)
            elif name == "attention_swap" and isinstance(value, Mapping):
                unknown = set(value) - {f.name for f in dataclasses.fields(AttentionSwap)}
                if unknown:
                    raise ConfigError(name, value, "may only have the keys enabled, layers, steps")
                swap.update({k: _selection(f"swap_{k}", v) if k != "enabled" else _flag(name, v)
                             for k, v in value.items()})
            elif name == "attention_swap" and not isinstance(value, AttentionSwap):
                swap["enabled"] = _flag(name, value)
            else:
                changes[name] = _typed(self, name, value)
        if swap:
            base = changes.get("attention_swap", self.attention_swap)
            changes["attention_swap"] = dataclasses.replace(base, **swap) if isinstance(base, AttentionSwap) else base
        return self.replace(**changes)

    def replace(self, **changes) -> "EditConfig":
        """A copy with these fields changed; an unknown name (a typo of `edit(..., start_t=...)`) is a ConfigError."""
        fields = [f.name for f in dataclasses.fields(self)]
        for name in changes:
            if name not in fields:
                raise ConfigError(name, changes[name], "", f"{name!r:.40} is not a setting; EditConfig has "
                                                           f"{', '.join(fields)}")
        return dataclasses.replace(self, **changes)

    def timestep_grid(self) -> Grid:
        return GRIDS[self.grid](self.steps, self.start_t)

    @property
    def sde(self) -> bool:
        """Encode then CP inverts with the cycle-consistent SDE; CP then Encode with DDIM."""
        return self.method == "encode_then_cp"


REFERENCE = EditConfig()


def _flag(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "on", "off", "1", "0"):
        return value.strip().lower() in ("true", "on", "1")
    raise ConfigError(name, value, "must be true or false")


def _selection(name: str, value) -> Optional[frozenset]:
    """A swap_layers / swap_steps value: None (all), or indices, names and patterns (text: comma-separated)."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "all")):
        return None
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple, set, frozenset, range)):
        raise ConfigError(name, value, "must be a list of indices or names, or comma-separated text")
    out = set()
    for item in items:
        item = item.strip() if isinstance(item, str) else item
        out.add(int(item) if isinstance(item, str) and item.isdigit() else item)
    return frozenset(out)


def _typed(config: EditConfig, name: str, value):
    """value as the field's type: whole floats (a number box's) and numeric text become numbers."""
    fields = {f.name: f for f in dataclasses.fields(config)}
    if name not in fields:
        return value  # replace() names the unknown setting
    default = getattr(REFERENCE, name)
    if value is None or isinstance(default, (str, AttentionSwap)) or isinstance(value, bool):
        return value  # the config's own checks judge it (a bool is never a number here)
    try:
        if isinstance(value, str):
            value = float(value.strip()) if value.strip() else value
        if isinstance(default, int) or name == "max_side":  # whole numbers (max_side: Optional[int])
            return int(value) if isinstance(value, float) and value.is_integer() else value
        return float(value) if isinstance(value, int) else value
    except (ValueError, OverflowError):
        raise ConfigError(name, value, "must be a number") from None
