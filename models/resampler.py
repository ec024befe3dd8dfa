"""IP-Adapter-Plus's image projection: a Perceiver resampler (Ye et al. 2023, after Flamingo).

A fixed set of learned queries cross-attends to the CLIP image features (every patch
token, not just the pooled embedding), so any image becomes the same small number of
tokens in the UNet's context width:

    tokens = resampler(features)   # (B, 257, 1280) CLIP ViT-H/14 -> (B, 16, 768) for SD1.5

Module names follow the official checkpoint's `image_proj.*` keys (`latents`, `proj_in`,
`layers.{i}.0` attention, `layers.{i}.1` feed-forward, `proj_out`, `norm_out`), so it
loads without renaming (see weights/ip_adapter.py).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from .attention import multihead_attention


@dataclass(frozen=True)
class ResamplerConfig:
    # ip-adapter-plus_sd15 as tencent-ailab/IP-Adapter's `IPAdapterPlus.init_proj` builds it
    # (ip_adapter/ip_adapter.py): Resampler(dim=768, depth=4, dim_head=64, heads=12,
    # num_queries=16, embedding_dim=1280, output_dim=768, ff_mult=4).
    num_queries: int = 16       # image tokens per image (the checkpoint's `latents` is (1, 16, 768))
    depth: int = 4              # (perceiver attention + feed-forward) layers
    dim: int = 768              # width inside the resampler = SD1.5's cross-attention width
    heads: int = 12
    dim_head: int = 64
    embedding_dim: int = 1280   # CLIP ViT-H/14 hidden size (the image encoder's features)
    output_dim: int = 768       # the UNet's context width (SD1.x: CLIP ViT-L/14 text width)
    ff_mult: int = 4

    @classmethod
    def sd15(cls) -> "ResamplerConfig":
        return cls()

    @classmethod
    def sdxl(cls) -> "ResamplerConfig":
        """ip-adapter-plus_sdxl_vit-h as `IPAdapterPlusXL.init_proj` builds it: dim 1280, 20 heads,
        output 2048 (SDXL's context width), the same ViT-H features in."""
        return cls(dim=1280, heads=20, output_dim=2048)

    @classmethod
    def tiny(cls, **overrides) -> "ResamplerConfig":
        """Small resampler for tests, output width matching `UNetConfig.tiny()`; dim_head stays 64
        and depth 4 because diffusers' converter assumes both (heads = to_q rows // 64, 4 layers)."""
        return replace(cls(num_queries=4, dim=32, heads=2, embedding_dim=24, output_dim=32),
                       **overrides)


class PerceiverAttention(nn.Module):
    """Queries from the latents; keys/values from image features and latents together."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.norm1 = nn.LayerNorm(dim)  # on the image features
        self.norm2 = nn.LayerNorm(dim)  # on the latents
        self.to_q = nn.Linear(dim, inner, bias=False)
        # fused as in the checkpoint: the resampler is never attention-swapped, so k/v stay one layer
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: Tensor, latents: Tensor) -> Tensor:
        x, latents = self.norm1(x), self.norm2(latents)
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)  # (B, N + Q, inner) each
        return self.to_out(multihead_attention(self.to_q(latents), k, v, self.heads))


class FeedForward(nn.Sequential):
    """LayerNorm, Linear, GELU, Linear (no biases); indices 0, 1, 3 are the checkpoint's."""

    def __init__(self, dim: int, mult: int):
        super().__init__(nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(),
                         nn.Linear(dim * mult, dim, bias=False))


class Resampler(nn.Module):
    def __init__(self, cfg: ResamplerConfig):
        super().__init__()
        self.cfg = cfg
        self.latents = nn.Parameter(torch.randn(1, cfg.num_queries, cfg.dim) / cfg.dim ** 0.5)  # the learned queries
        self.proj_in = nn.Linear(cfg.embedding_dim, cfg.dim)
        self.layers = nn.ModuleList([
            nn.ModuleList([PerceiverAttention(cfg.dim, cfg.heads, cfg.dim_head), FeedForward(cfg.dim, cfg.ff_mult)])
            for _ in range(cfg.depth)
        ])
        self.proj_out = nn.Linear(cfg.dim, cfg.output_dim)
        self.norm_out = nn.LayerNorm(cfg.output_dim)

    def forward(self, features: Tensor) -> Tensor:
        """(B, N, embedding_dim) image features -> (B, num_queries, output_dim) image tokens."""
        x = self.proj_in(features)
        latents = self.latents.expand(features.shape[0], -1, -1)
        for attn, ff in self.layers:
            latents = latents + attn(x, latents)
            latents = latents + ff(latents)
        return self.norm_out(self.proj_out(latents))
