"""The method's settings: one frozen `EditConfig`, with the reference's evaluation settings as `REFERENCE`.

    config = EditConfig(start_t=0.7, method="cp_then_encode")   # or REFERENCE.replace(start_t=0.7)
    pipe.edit(photo, regions, config=config)

Every field is an ablation axis of the paper or of ours; the defaults are the reference
implementation's (RegionDrag run_eval.py, DESIGN.md "Facts"): 20 steps, start_t 0.5, handle
noise 1.0, seed 42, its timestep grid, copy-paste at every step, IP-Adapter-Plus at 0.5.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

from sampling import START_T, STEPS, TRAIN_TIMESTEPS, Grid, consistent_grid, reference_grid

from .attention_swap import AttentionSwap
from .copy_paste import END_T, PASTE_SCHEDULES
from .image_io import MAX_SIDE
from .image_prompt import IP_SCALE

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


class ConfigError(ValueError):
    """A setting out of its range; `field` names it (the CLI names its flag), the message says the range."""

    def __init__(self, field: str, value, requirement: str, message: Optional[str] = None):
        self.field = field
        super().__init__(message or f"{field}={value!r:.40} {requirement}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class EditConfig:
    steps: int = STEPS                   # timestep grid of the whole diffusion (20)
    start_t: float = START_T             # fraction of it inverted and denoised (0.5: 10 steps)
    end_t: float = END_T                 # read only by paste_schedule="until_end_t"
    noise_scale: float = NOISE_SCALE     # handle noise s: x*sqrt(1-s^2) + s*noise
    seed: int = SEED
    method: str = "encode_then_cp"       # see METHODS
    ip_scale: float = IP_SCALE           # image-prompt scale (when an IP-Adapter is loaded); 0 turns it off
    grid: str = "reference"              # see GRIDS
    paste_schedule: str = "every_step"   # see copy_paste.PASTE_SCHEDULES
    attention_swap: AttentionSwap = AttentionSwap()
    point_fraction: float = 1.0          # ablation: keep this fraction of the mapping's pairs
    max_side: Optional[int] = MAX_SIDE   # long side the model works at; None: the photo's own size

    def __post_init__(self):
        for name, label, choices in (("method", "method", METHODS), ("grid", "grid", GRIDS),
                                     ("paste_schedule", "copy-paste schedule", PASTE_SCHEDULES)):
            value = getattr(self, name)
            if not isinstance(value, str) or value not in choices:
                raise ConfigError(name, value, "", f"unknown {label} {value!r:.40}; choose one of {', '.join(choices)}")
        if not (_is_int(self.steps) and 2 <= self.steps <= MAX_STEPS):
            raise ConfigError("steps", self.steps, f"must be a whole number in 2 ... {MAX_STEPS}")
        if not (_is_real(self.start_t) and 0 < self.start_t < 1):
            raise ConfigError("start_t", self.start_t, "must be a number strictly between 0 and 1")
        if not 1 <= int(self.start_t * self.steps) <= self.steps - 1:  # sampling.num_inversion_steps
            raise ConfigError("start_t", self.start_t, f"inverts int(start_t * steps) = "
                              f"{int(self.start_t * self.steps)} steps of {self.steps}; it must be 1 ... "
                              f"{self.steps - 1}: use start_t >= {1 / self.steps:g} or more steps")
        grid = self.timestep_grid()
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
            raise ConfigError("seed", self.seed, f"must be a whole number in 0 ... 2**64 - 1")
        if self.max_side is not None and not (_is_int(self.max_side) and 8 <= self.max_side <= MAX_SIDE_LIMIT):
            raise ConfigError("max_side", self.max_side, f"must be a whole number of pixels in 8 ... {MAX_SIDE_LIMIT}")
        self._check_attention_swap()

    def _check_attention_swap(self) -> None:
        swap = self.attention_swap
        if not isinstance(swap, AttentionSwap):
            raise ConfigError("attention_swap", swap, "must be an AttentionSwap")
        for name in ("layers", "steps"):
            chosen = getattr(swap, name)
            if chosen is not None and not (isinstance(chosen, (set, frozenset, list, tuple, range))
                                           and all(_is_int(i) and i >= 0 for i in chosen)):
                raise ConfigError(f"attention_swap.{name}", chosen, "must be None or a set of indices >= 0")
        n = len(self.timestep_grid().denoising)
        if swap.steps is not None and any(j >= n for j in swap.steps):
            raise ConfigError("attention_swap.steps", swap.steps, f"must be denoising step indices 0 ... {n - 1}")

    def check_layers(self, num_layers: int) -> None:
        """attention_swap.layers against the UNet's count of self-attention layers (known only with the model)."""
        layers = self.attention_swap.layers
        if layers is not None and any(i >= num_layers for i in layers):
            raise ConfigError("attention_swap.layers", layers,
                              f"must be self-attention layer indices 0 ... {num_layers - 1} of this UNet")

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
