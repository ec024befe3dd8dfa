"""The inversion and denoising loops: plain functions over (model, latent, grid)."""
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .grids import Grid
from .schedule import alpha_bar
from .steps import Model, cycle_sde_inversion_step, ddim_inversion_step, ddim_step

# before_step(i, t, x) -> x, called before each model call; return a new tensor rather than editing x
# in place, since x is also the recorded latents[i]
BeforeStep = Callable[[int, int, Tensor], Tensor]


@dataclass(frozen=True)
class Trajectory:
    """latents[0] is the loop's input and latents[i + 1] the result of step i.
    noises[i] is the noise of step i: the z a cycle-SDE inversion step stores for its reverse step,
    or the noise a stochastic denoising step used; empty for deterministic loops."""

    latents: list[Tensor]
    noises: list[Tensor]


def _randn(x: Tensor, generator: torch.Generator | None) -> Tensor:
    if generator is None:
        raise ValueError("stochastic sampling needs a torch.Generator (the global RNG is never used)")
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


@torch.no_grad()
def invert(
    model: Model,
    x: Tensor,
    grid: Grid,
    alphas_cumprod: Tensor,
    sde: bool = True,
    generator: torch.Generator | None = None,
    prediction_type: str = "epsilon",
    disable: bool = False,
) -> Trajectory:
    """Invert x along grid.inversion: cycle-SDE with fresh noise each step, or DDIM (sde=False)."""
    latents, noises = [x], []
    for i, (t, t_next) in enumerate(tqdm(grid.inversion, desc="inversion", disable=disable)):
        if sde:
            x, z = cycle_sde_inversion_step(model, x, t, t_next, i, alphas_cumprod, _randn(x, generator),
                                            prediction_type)
            noises.append(z)
        else:
            x = ddim_inversion_step(model, x, t, t_next, i, alphas_cumprod, prediction_type)
        latents.append(x)
    return Trajectory(latents, noises)


@torch.no_grad()
def denoise(
    model: Model,
    x: Tensor,
    grid: Grid,
    alphas_cumprod: Tensor,
    eta: float = 0.0,
    noises: Sequence[Tensor] | None = None,
    before_step: BeforeStep | None = None,
    generator: torch.Generator | None = None,
    prediction_type: str = "epsilon",
    disable: bool = False,
) -> Trajectory:
    """Denoise x along grid.denoising with the DDIM step of the given eta (1: DDPM).

    noises, in denoising order (noises[j] for step j, i.e. a cycle-SDE inversion's noises reversed),
    replace fresh Gaussian noise; with eta = 1 they make the loop retrace that inversion.
    """
    n = len(grid.denoising)
    if noises is not None and (not eta or len(noises) != n):
        raise ValueError(f"stored noises need eta > 0 and one noise per step ({n}); got eta={eta}, {len(noises)}")
    latents, used = [x], []
    for j, (t, t_prev) in enumerate(tqdm(grid.denoising, desc="denoising", disable=disable)):
        if before_step is not None:
            x = before_step(j, t, x)
        noise = None
        if eta:
            noise = noises[j] if noises is not None else _randn(x, generator)
        a, a_prev = alpha_bar(alphas_cumprod, t), alpha_bar(alphas_cumprod, t_prev)
        x = ddim_step(x, model(x, t, j), a, a_prev, eta, noise, prediction_type)
        latents.append(x)
        if noise is not None:
            used.append(noise)
    return Trajectory(latents, used)
