"""The SD autoencoder (AutoencoderKL), hand-written.

    mean = vae.encode(images)            # images in [-1, 1], (B, 3, H, W) -> (B, 4, H/8, W/8), unscaled
    mean, logvar = vae.encode_moments(images)
    latent = vae.sample(mean, logvar, generator) * vae.scaling_factor
    images = vae.decode(latent / vae.scaling_factor)

The pipeline applies `scaling_factor`; the VAE itself works on unscaled latents.
Module names follow diffusers' `AutoencoderKL`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import multihead_attention
from .unet import Downsample, ResBlock, UNetBlock, Upsample


@dataclass(frozen=True)
class VAEConfig:
    block_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_groups: int = 32
    scaling_factor: float = 0.18215  # SD1.x/2.x latent scale (LDM paper's unit-variance rescaling)

    @classmethod
    def sd15(cls) -> "VAEConfig":
        return cls()

    @classmethod
    def sdxl(cls) -> "VAEConfig":
        """SDXL's VAE: SD's architecture retrained, latents scaled by 0.13025 (its vae/config.json)."""
        return cls(scaling_factor=0.13025)

    @classmethod
    def tiny(cls, **overrides) -> "VAEConfig":
        """Same structure (three 2x downsamplings: latents at 1/8), small widths."""
        return replace(cls(block_channels=(8, 16, 16, 16), layers_per_block=1, norm_groups=4), **overrides)


EPS = 1e-6  # GroupNorm eps in every VAE block


class VAEAttention(nn.Module):
    """Single-head self-attention over positions in the VAE's middle block."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=EPS)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y = self.group_norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        y = multihead_attention(self.to_q(y), self.to_k(y), self.to_v(y), heads=1)
        return x + self.to_out[0](y).transpose(1, 2).reshape(b, c, h, w)


class MidBlock(nn.Module):
    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.resnets = nn.ModuleList([ResBlock(channels, channels, groups, None, EPS) for _ in range(2)])
        self.attentions = nn.ModuleList([VAEAttention(channels, groups)])

    def forward(self, x: Tensor) -> Tensor:
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


def run_block(block: UNetBlock, x: Tensor) -> Tensor:
    for resnet in block.resnets:
        x = resnet(x)
    return x if block.sampler is None else block.sampler(x)


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, g = cfg.block_channels, cfg.norm_groups
        self.conv_in = nn.Conv2d(3, ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        cin = ch[0]
        for i, cout in enumerate(ch):
            resnets = [ResBlock(cin if j == 0 else cout, cout, g, None, EPS) for j in range(cfg.layers_per_block)]
            down = Downsample(cout, pad_right_bottom=True) if i < len(ch) - 1 else None
            self.down_blocks.append(UNetBlock(resnets, [], down, up=False))
            cin = cout
        self.mid_block = MidBlock(ch[-1], g)
        self.conv_norm_out = nn.GroupNorm(g, ch[-1], eps=EPS)
        self.conv_out = nn.Conv2d(ch[-1], 2 * cfg.latent_channels, 3, padding=1)  # mean and log-variance

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for block in self.down_blocks:
            h = run_block(block, h)
        return self.conv_out(F.silu(self.conv_norm_out(self.mid_block(h))))


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch, g = cfg.block_channels[::-1], cfg.norm_groups
        self.conv_in = nn.Conv2d(cfg.latent_channels, ch[0], 3, padding=1)
        self.mid_block = MidBlock(ch[0], g)
        self.up_blocks = nn.ModuleList()
        cin = ch[0]
        for i, cout in enumerate(ch):
            resnets = [ResBlock(cin if j == 0 else cout, cout, g, None, EPS) for j in range(cfg.layers_per_block + 1)]
            up = Upsample(cout) if i < len(ch) - 1 else None
            self.up_blocks.append(UNetBlock(resnets, [], up, up=True))
            cin = cout
        self.conv_norm_out = nn.GroupNorm(g, ch[-1], eps=EPS)
        self.conv_out = nn.Conv2d(ch[-1], 3, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            h = run_block(block, h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


class AutoencoderKL(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.scaling_factor = cfg.scaling_factor
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.latent_channels, 2 * cfg.latent_channels, 1)
        self.post_quant_conv = nn.Conv2d(cfg.latent_channels, cfg.latent_channels, 1)

    def encode_moments(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of the diagonal Gaussian posterior q(z | image)."""
        mean, logvar = self.quant_conv(self.encoder(images)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)  # the LDM posterior's clamp, for exp() safety

    def encode(self, images: Tensor) -> Tensor:
        return self.encode_moments(images)[0]

    @staticmethod
    def sample(mean: Tensor, logvar: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + torch.exp(0.5 * logvar) * noise

    def decode(self, latents: Tensor) -> Tensor:
        return self.decoder(self.post_quant_conv(latents))
