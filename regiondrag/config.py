"""The method's settings: one frozen `EditConfig`, with the reference's evaluation settings as `REFERENCE`.

    config = EditConfig(start_t=0.7, method="cp_then_encode")   # or REFERENCE.replace(start_t=0.7)
    pipe.edit(photo, regions, config=config)

Every field is an ablation axis of the paper or of ours; the defaults are the reference
implementation's (RegionDrag run_eval.py, DESIGN.md "Facts"): 20 steps, start_t 0.5, handle
noise 1.0, seed 42, its timestep grid, copy-paste at every step, IP-Adapter-Plus at 0.5.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from sampling import START_T, STEPS, Grid, consistent_grid, reference_grid

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
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.grid not in GRIDS:
            raise ValueError(f"unknown grid {self.grid!r}; choose one of {', '.join(GRIDS)}")
        if self.paste_schedule not in PASTE_SCHEDULES:
            raise ValueError(f"unknown copy-paste schedule {self.paste_schedule!r}; "
                             f"choose one of {', '.join(PASTE_SCHEDULES)}")

    def replace(self, **changes) -> "EditConfig":
        return dataclasses.replace(self, **changes)

    def timestep_grid(self) -> Grid:
        return GRIDS[self.grid](self.steps, self.start_t)

    @property
    def sde(self) -> bool:
        """Encode then CP inverts with the cycle-consistent SDE; CP then Encode with DDIM."""
        return self.method == "encode_then_cp"


REFERENCE = EditConfig()
