"""Timestep grids: which (from, to) timesteps the inversion and denoising loops visit.

Timesteps are integer training timesteps (0 … 999); ᾱ is looked up at each.
"""
from dataclasses import dataclass

import numpy as np

from .schedule import TRAIN_TIMESTEPS

# RegionDrag run_eval.py: steps = 20, start_t = 0.5 (10 inversion steps)
STEPS = 20
START_T = 0.5

Steps = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Grid:
    """inversion[i] = (t, t_next): step i of the inversion takes x_t to x_t_next (ascending).
    denoising[j] = (t, t_prev): step j of the denoising calls the model at t and lands at t_prev."""

    inversion: Steps
    denoising: Steps


def matching_inversion_step(j: int, n: int) -> int:
    """The inversion step whose result denoising step j starts from: n-1-j of n.

    The two loops visit the same noise levels in opposite order, so denoising step j pastes the
    latent that inversion step n-1-j produced, replays the K/V recorded in that step's UNet call,
    and (cycle-SDE) retraces that step with its stored noise. This is the one place the rule is written.
    """
    return n - 1 - j


def linspace_timesteps(steps: int, train_timesteps: int = TRAIN_TIMESTEPS) -> list[int]:
    """Diffusers' DPM-Solver "linspace" grid (999, 949, …, 50 for 20 steps), descending.

    numpy float64 linspace + round-half-to-even, as the reference, so .5 ties (499.5 -> 500) agree.
    """
    return np.linspace(0, train_timesteps - 1, steps + 1).round()[::-1][:-1].astype(np.int64).tolist()


def num_inversion_steps(steps: int, start_t: float) -> int:
    """The reference's int(start_t * steps), in 1 … steps-1 (with n = steps its inversion passes t = 999)."""
    n = int(start_t * steps)
    if not 1 <= n <= steps - 1:
        raise ValueError(f"start_t={start_t:g} with steps={steps} inverts int(start_t * steps) = {n} steps; that must be "
                         f"1 ... {steps - 1}: use a start_t in [{1 / steps:g}, 1) or more steps")
    return n


def reference_grid(steps: int = STEPS, start_t: float = START_T, train_timesteps: int = TRAIN_TIMESTEPS) -> Grid:
    """RegionDrag's (and SDE-Drag's) grid, 549/550 mismatch included.

    Both loops step by stride = train_timesteps // steps from timesteps of the linspace grid:
    inversion from the n smallest (50, 100, …, 500 -> 100, …, 550; the clean latent counts as x_50);
    denoising from the n grid timesteps after the first steps-n-1 (549, 500, …, 100 -> 499, 450, …, 50).
    x_550 is thus denoised as if it were x_549, and x_499 is next treated as x_500, so a no-op edit
    does not reconstruct its input exactly; `consistent_grid` removes that. When stride does not divide
    train_timesteps the inversion steps do not chain either (steps=7: 143 -> 285, 285 -> 427, 428 -> 570).
    """
    n = num_inversion_steps(steps, start_t)
    stride = train_timesteps // steps
    grid = linspace_timesteps(steps, train_timesteps)
    return Grid(
        inversion=tuple((t, t + stride) for t in reversed(grid[steps - n :])),
        denoising=tuple((t, t - stride) for t in grid[steps - n - 1 : -1]),
    )


def consistent_grid(steps: int = STEPS, start_t: float = START_T, train_timesteps: int = TRAIN_TIMESTEPS) -> Grid:
    """The reference inversion, denoised along the same steps in reverse (550 -> 500 -> … -> 50).

    Denoising step j undoes inversion step matching_inversion_step(j, n) exactly, so a cycle-SDE no-op edit reconstructs its input.
    """
    inversion = reference_grid(steps, start_t, train_timesteps).inversion
    return Grid(inversion=inversion, denoising=tuple((t_next, t) for t, t_next in reversed(inversion)))
