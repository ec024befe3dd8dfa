"""Latent copy-paste: the operations of RegionDrag's denoising phase, on latents.

All positions are latent-resolution (x, y) index arrays of shape (N, 2) from the dense
mapping; `handle_xy[i]` is the source of `target_xy[i]`.
"""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np
import torch
from torch import Tensor

from sampling import TRAIN_TIMESTEPS

# Which denoising steps paste. The reference compares timesteps (e.g. 549) with
# int(end_t * steps) (e.g. 4), so it pastes at every step and end_t has no effect;
# "every_step" reproduces that. The others are ablations of the paper's analysis.
PASTE_SCHEDULES = ("every_step", "until_end_t", "single_step")
END_T = 0.2  # RegionDrag run_eval.py; only "until_end_t" reads it


def paste(latent: Tensor, source: Tensor, handle_xy: Tensor, target_xy: Tensor) -> Tensor:
    """latent with latent[..., y_t, x_t] = source[..., y_h, x_h] for every mapped pair."""
    out = latent.clone()
    out[:, :, target_xy[:, 1], target_xy[:, 0]] = source[:, :, handle_xy[:, 1], handle_xy[:, 0]]
    return out


def add_handle_noise(latent: Tensor, handle_xy: Tensor, scale: float,
                     generator: Optional[torch.Generator] = None) -> Tensor:
    """x*sqrt(1-s^2) + s*noise at handle positions (pure noise times s for s >= 1).

    Where the handle is not covered by a target afterwards, this erases the content that
    moved away, so the UNet regenerates background there instead of leaving a copy.
    """
    out = latent.clone()
    ys, xs = handle_xy[:, 1], handle_xy[:, 0]
    keep = (1 - scale ** 2) ** 0.5 if scale < 1 else 0.0
    noise = torch.randn(out[:, :, ys, xs].shape, generator=generator, device=out.device, dtype=out.dtype)
    out[:, :, ys, xs] = out[:, :, ys, xs] * keep + noise * scale
    return out


def paste_steps(timesteps: list[int], schedule: str = "every_step", end_t: float = END_T,
                num_train_timesteps: int = TRAIN_TIMESTEPS) -> list[bool]:
    """For each denoising UNet timestep, whether copy-paste happens before that call."""
    if schedule == "every_step":
        return [True] * len(timesteps)
    if schedule == "until_end_t":  # end_t as a true fraction of the diffusion time
        return [t >= end_t * num_train_timesteps for t in timesteps]
    if schedule == "single_step":
        return [i == 0 for i in range(len(timesteps))]
    raise ValueError(f"unknown copy-paste schedule {schedule!r}; choose one of {', '.join(PASTE_SCHEDULES)}")


def region_border(xy: Tensor, size: tuple[int, int]) -> Tensor:
    """The vertices of the outer contours of a set of (x, y) positions on an (h, w) grid.

    The reference's border of the target in "CP then Encode": OpenCV's *simplified* contour
    (CHAIN_APPROX_SIMPLE: a rectangle's 4 corners, not its every edge cell). It is noised together
    with the handles in one draw; the cells lie inside the target and are overwritten by the first
    paste, so they matter only through the length of that draw.
    """
    h, w = size
    grid = np.zeros((h, w), np.uint8)
    pts = xy.cpu().numpy()
    grid[pts[:, 1], pts[:, 0]] = 1
    contours, _ = cv2.findContours(grid, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return xy[:0]
    border = np.concatenate([c[:, 0, :] for c in contours])  # (N, 2) as (x, y)
    return torch.as_tensor(border, dtype=xy.dtype, device=xy.device)
