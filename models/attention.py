"""Attention blocks of the SD UNet, with the keys and values of self-attention exposed.

RegionDrag's *mutual self-attention* (attention swap) needs two things from every
self-attention layer: report the keys and values it computed (during inversion), and
use given keys and values instead of its own (during denoising). Both go through plain
arguments and return values, so torch.compile traces them without graph breaks:

    out, (k, v) = self_attn(x)            # k, v: (B, L, C) after to_k / to_v
    out, _      = self_attn(x, kv=(k, v)) # replay: queries from x, keys/values given

Reporting is free (k and v are computed anyway); `kv=None` is the plain layer.
q, k and v stay separate projections (never fused) so a swap is one argument.

Module and parameter names follow the diffusers layout (`attn1.to_q`, `ff.net.0.proj`,
...), so diffusers folders load without renaming.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KV = tuple[Tensor, Tensor]  # keys, values of one self-attention layer: (B, L, C) each


class ImagePrompt(NamedTuple):
    """Image tokens for IP-Adapter's decoupled cross-attention, and their weight."""
    tokens: Tensor  # (B, N, context_dim), N = 16 (or 32 in the reference's layout)
    scale: float


def multihead_attention(q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor:
    """softmax(q k^T / sqrt(d)) v over `heads` heads; q: (B, Lq, C), k/v: (B, Lk, C)."""
    b = q.shape[0]
    q, k, v = (t.view(b, -1, heads, t.shape[-1] // heads).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, Lq, d)
    return out.transpose(1, 2).reshape(b, -1, heads * out.shape[-1])


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])  # diffusers' to_out.1 is a parameter-free dropout

    def forward(self, x: Tensor, kv: Optional[KV] = None) -> tuple[Tensor, KV]:
        if kv is None:
            kv = (self.to_k(x), self.to_v(x))
        out = multihead_attention(self.to_q(x), kv[0], kv[1], self.heads)
        return self.to_out[0](out), kv


class CrossAttention(nn.Module):
    """Attention from image positions to text tokens; optionally IP-Adapter's decoupled
    image branch: softmax(q k_ip^T) v_ip, scaled, added before the output projection."""

    def __init__(self, dim: int, context_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])
        self.to_k_ip: Optional[nn.Linear] = None  # created by add_image_prompt_projections()
        self.to_v_ip: Optional[nn.Linear] = None

    def add_image_prompt_projections(self) -> None:
        dim, context_dim = self.to_k.out_features, self.to_k.in_features
        self.to_k_ip = nn.Linear(context_dim, dim, bias=False).to(self.to_k.weight)
        self.to_v_ip = nn.Linear(context_dim, dim, bias=False).to(self.to_k.weight)

    def forward(self, x: Tensor, context: Tensor, image_prompt: Optional[ImagePrompt] = None) -> Tensor:
        q = self.to_q(x)
        out = multihead_attention(q, self.to_k(context), self.to_v(context), self.heads)
        if image_prompt is not None and image_prompt.scale != 0:
            if self.to_k_ip is None:
                raise RuntimeError("image_prompt given but this UNet has no IP-Adapter weights loaded")
            tokens = image_prompt.tokens.expand(q.shape[0], -1, -1)  # one photo's tokens for every latent
            ip = multihead_attention(q, self.to_k_ip(tokens), self.to_v_ip(tokens), self.heads)
            out = out + image_prompt.scale * ip
        return self.to_out[0](out)


class GEGLU(nn.Module):
    """Gated GELU projection of the transformer's feed-forward (Shazeer 2020)."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: Tensor) -> Tensor:
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        # indices 0 and 2 match diffusers' `ff.net.0` / `ff.net.2` (1 is a dropout)
        self.net = nn.ModuleList([GEGLU(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim)])

    def forward(self, x: Tensor) -> Tensor:
        return self.net[2](self.net[0](x))


class BasicTransformerBlock(nn.Module):
    """Self-attention, cross-attention, feed-forward; pre-LayerNorm, residual each."""

    def __init__(self, dim: int, context_dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: Tensor, context: Tensor, kv: Optional[KV] = None,
                image_prompt: Optional[ImagePrompt] = None) -> tuple[Tensor, KV]:
        h, kv = self.attn1(self.norm1(x), kv)
        x = x + h
        x = x + self.attn2(self.norm2(x), context, image_prompt)
        x = x + self.ff(self.norm3(x))
        return x, kv


class SpatialTransformer(nn.Module):
    """Transformer over the positions of a feature map (diffusers' Transformer2DModel): a stack of
    `depth` blocks (SD1.x/2.x: 1; SDXL: 2 or 10), each with its own self-attention layer.

    SD1.x projects in/out with 1x1 convolutions, SD2.x and SDXL with linear layers (`linear_proj`).
    """

    def __init__(self, channels: int, context_dim: int, heads: int, linear_proj: bool, groups: int, depth: int = 1):
        super().__init__()
        self.linear_proj = linear_proj
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)  # 1e-6 in SD's transformer blocks
        make = (lambda: nn.Linear(channels, channels)) if linear_proj else (lambda: nn.Conv2d(channels, channels, 1))
        self.proj_in = make()
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(channels, context_dim, heads)
                                                 for _ in range(depth)])
        self.proj_out = make()

    def forward(self, x: Tensor, context: Tensor, kv: Sequence[Optional[KV]],
                image_prompt: Optional[ImagePrompt] = None) -> tuple[Tensor, list[KV]]:
        """kv: one entry per block (given K/V or None); returns the output and the K/V each block used."""
        b, c, hgt, wid = x.shape
        h = self.norm(x)
        if not self.linear_proj:
            h = self.proj_in(h)
        h = h.permute(0, 2, 3, 1).reshape(b, hgt * wid, c)  # (B, HW, C)
        if self.linear_proj:
            h = self.proj_in(h)
        used = []
        for block, block_kv in zip(self.transformer_blocks, kv, strict=True):
            h, layer_kv = block(h, context, block_kv, image_prompt)
            used.append(layer_kv)
        if self.linear_proj:
            h = self.proj_out(h)
        # back in x's memory format: a view in the other one would run proj_out, the residual add and every
        # later convolution on mixed layouts (on CPU in bfloat16, 10-20% of a UNet call)
        layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        h = h.reshape(b, hgt, wid, c).permute(0, 3, 1, 2).contiguous(memory_format=layout)
        if not self.linear_proj:
            h = self.proj_out(h)
        return x + h, used
