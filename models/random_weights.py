"""SD models of random weights, for what does not need real ones: tests, the benchmark, `--random-tiny`.

    unet, vae, context = random_sd(UNetConfig.tiny(), VAEConfig.tiny(), seed=0)

Speed does not depend on the weights' values, and plumbing is exercised as well by any; a fixed
random prompt embedding stands in for the text encoder (with a pooled one for SDXL-shaped UNets).
"""
from __future__ import annotations

import torch

from .unet import Conditioning, Context, UNet, UNetConfig
from .vae import AutoencoderKL, VAEConfig


def random_sd(unet_cfg: UNetConfig, vae_cfg: VAEConfig, seed: int = 0) -> tuple[UNet, AutoencoderKL, Context]:
    """(UNet, VAE, prompt embedding), drawn from torch's global RNG seeded with `seed`, in eval mode on the CPU."""
    torch.manual_seed(seed)
    unet, vae = UNet(unet_cfg).eval(), AutoencoderKL(vae_cfg).eval()
    context = torch.randn(1, 77, unet_cfg.context_dim)
    if unet_cfg.pooled_text_dim:  # SDXL: the pooled embedding too (the pipeline adds the size ids)
        context = Conditioning(context, torch.randn(1, unet_cfg.pooled_text_dim))
    return unet, vae, context
