"""Noise schedule, timestep grids, DDIM/DDPM steps, and the ODE and cycle-SDE loops.

Knows nothing of images, regions or attention: the model is any callable model(x, t, i) -> prediction.
"""
from .grids import (START_T, STEPS, Grid, consistent_grid, linspace_timesteps, matching_inversion_step,
                    num_inversion_steps, reference_grid)
from .loops import Trajectory, denoise, invert
from .schedule import (
    BETA_END,
    BETA_START,
    PREDICTION_TYPES,
    TRAIN_TIMESTEPS,
    alpha_bar,
    eps_and_x0,
    scaled_linear_alphas_cumprod,
)
from .steps import cycle_sde_inversion_step, ddim_inversion_step, ddim_sigma, ddim_step

__all__ = [
    "BETA_END", "BETA_START", "PREDICTION_TYPES", "START_T", "STEPS", "TRAIN_TIMESTEPS",
    "Grid", "Trajectory",
    "alpha_bar", "consistent_grid", "cycle_sde_inversion_step", "ddim_inversion_step", "ddim_sigma", "ddim_step",
    "denoise", "eps_and_x0", "invert", "linspace_timesteps", "matching_inversion_step", "num_inversion_steps",
    "reference_grid", "scaled_linear_alphas_cumprod",
]
