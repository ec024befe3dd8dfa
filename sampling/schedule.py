"""The SD noise schedule: betas, cumulative alphas, and the model-output parameterisations."""
import math

import torch
from torch import Tensor

# SD v1/v2 scheduler_config.json and v1-inference.yaml: "scaled_linear", linear_start/end, 1000 steps
BETA_START = 0.00085
BETA_END = 0.012
TRAIN_TIMESTEPS = 1000

PREDICTION_TYPES = ("epsilon", "v_prediction")


def scaled_linear_alphas_cumprod(
    beta_start: float = BETA_START, beta_end: float = BETA_END, train_timesteps: int = TRAIN_TIMESTEPS
) -> Tensor:
    """ᾱ_t for t = 0 … train_timesteps-1, in float64: fp16/fp32 lose digits in 1 - ᾱ near t = 0."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, train_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0)


def alpha_bar(alphas_cumprod: Tensor, t: int) -> float:
    """ᾱ_t as a Python float, so multiplying a latent keeps the latent's dtype."""
    return float(alphas_cumprod[t])


def eps_and_x0(x: Tensor, pred: Tensor, alpha: float, prediction_type: str = "epsilon") -> tuple[Tensor, Tensor]:
    """The noise ε and the clean-sample estimate x̂_0 implied by the model's prediction at x_t.

    x_t = √ᾱ x_0 + √(1-ᾱ) ε; v-prediction (SD2.x 768) predicts v = √ᾱ ε - √(1-ᾱ) x_0.
    """
    a, s = math.sqrt(alpha), math.sqrt(1 - alpha)
    if prediction_type == "epsilon":
        return pred, (x - s * pred) / a
    if prediction_type == "v_prediction":
        return a * pred + s * x, a * x - s * pred
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
