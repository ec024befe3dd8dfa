"""One reverse step (DDIM, with DDPM as eta = 1) and one forward (inversion) step.

ᾱ values are Python floats (float64 maths); latents keep their own dtype.
"""
import math
from collections.abc import Callable

from torch import Tensor

from .schedule import alpha_bar, eps_and_x0

Model = Callable[[Tensor, int, int], Tensor]  # model(x, t, i) -> prediction at timestep t, loop step i


def ddim_sigma(alpha_t: float, alpha_prev: float, eta: float) -> float:
    """σ of the reverse step t -> prev (DDIM eq. 16); eta = 1 is the DDPM posterior std."""
    return eta * math.sqrt((1 - alpha_prev) / (1 - alpha_t) * (1 - alpha_t / alpha_prev))


def ddim_step(
    x: Tensor,
    pred: Tensor,
    alpha_t: float,
    alpha_prev: float,
    eta: float = 0.0,
    noise: Tensor | None = None,
    prediction_type: str = "epsilon",
) -> Tensor:
    """x_t -> x_prev = √ᾱ_prev x̂_0 + √(1-ᾱ_prev-σ²) ε + σ noise (DDIM eq. 12).

    With eta = 0 and alpha_prev < alpha_t this is also the DDIM (ODE) inversion step.
    """
    sigma = ddim_sigma(alpha_t, alpha_prev, eta) if eta else 0.0
    if sigma and noise is None:
        raise ValueError("a stochastic step (eta > 0) needs `noise`; draw it from a torch.Generator")
    eps, x0 = eps_and_x0(x, pred, alpha_t, prediction_type)
    x_prev = math.sqrt(alpha_prev) * x0 + math.sqrt(1 - alpha_prev - sigma**2) * eps
    return x_prev + sigma * noise if sigma else x_prev


def ddim_inversion_step(model: Model, x: Tensor, t: int, t_next: int, i: int, alphas_cumprod: Tensor,
                        prediction_type: str = "epsilon") -> Tensor:
    """x_t -> x_t_next by the DDIM (ODE) step run upwards, the model evaluated at (x_t, t)."""
    a, a_next = alpha_bar(alphas_cumprod, t), alpha_bar(alphas_cumprod, t_next)
    return ddim_step(x, model(x, t, i), a, a_next, prediction_type=prediction_type)


def cycle_sde_inversion_step(model: Model, x: Tensor, t: int, t_next: int, i: int, alphas_cumprod: Tensor,
                             noise: Tensor, prediction_type: str = "epsilon") -> tuple[Tensor, Tensor]:
    """x_t -> (x_t_next, z): the cycle-consistent SDE step of SDE-Drag.

    Sample q(x_t_next | x_t) with `noise`, evaluate the model at (x_t_next, t_next), and return the z
    for which the eta = 1 reverse step from x_t_next lands exactly on x_t.
    """
    a, a_next = alpha_bar(alphas_cumprod, t), alpha_bar(alphas_cumprod, t_next)
    x_next = math.sqrt(a_next / a) * x + math.sqrt(1 - a_next / a) * noise
    pred = model(x_next, t_next, i)
    # the reverse step with zero noise is its mean; z is what σ z must add to reach x_t
    mean = ddim_step(x_next, pred, a_next, a, prediction_type=prediction_type, eta=1.0, noise=noise.new_zeros(()))
    return x_next, (x - mean) / ddim_sigma(a_next, a, 1.0)
