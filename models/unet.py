"""The Stable Diffusion UNet (SD1.x / SD2.x / SDXL), hand-written.

    eps = unet(x, t, context)                          # x: (B, 4, h, w), context: (B, 77, C)
    eps, kvs = unet.forward_recording_kv(x, t, context) # kvs[i]: (k, v) of self-attention layer i
    eps = unet(x, t, context, kv=kvs)                  # replay recorded keys/values
    eps = unet(x, t, context, kv=[None] * 6 + kvs[6:]) # replay in chosen layers only
    feats = unet.features(x, t, context, up_block=1)   # DIFT features: the map after up block 1

SDXL's UNet is conditioned on more than the text context: `Conditioning(context, pooled, time_ids)`
stands in for the context tensor wherever the UNet takes one (see Conditioning).

Self-attention layers are numbered in the order the forward visits them: down blocks,
mid block, up blocks, and inside a SpatialTransformer its blocks in order (SD1.5: 6 + 1 + 9 = 16
layers; SDXL: 24 + 10 + 36 = 70), and named `unet.self_attention_layer_names()`:
"{down|mid|up}.{block}.{attention}" (mid: "mid.{attention}"), with ".{k}" for the k-th block of
a transformer deeper than one (SDXL). SD1.5: down.0.0 down.0.1 down.1.0 ... down.2.1, mid.0,
up.1.0 ... up.3.2 (diffusers' up block 0 has no attention). Module names follow diffusers'
`UNet2DConditionModel`, so its folders load by name; see weights/ for the original layout.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import KV, ImagePrompt, SpatialTransformer


@dataclass(frozen=True)
class UNetConfig:
    block_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    attention_levels: tuple[bool, ...] = (True, True, True, False)  # CrossAttnDownBlock2D x3, DownBlock2D
    heads: tuple[int, ...] = (8, 8, 8, 8)   # per level; SD1.x: 8 heads everywhere (head dim varies)
    layers_per_block: int = 2
    context_dim: int = 768                  # CLIP ViT-L/14 width (SD1.x); OpenCLIP ViT-H: 1024
    linear_proj: bool = False               # SD2.x projects in/out of transformers with Linear
    in_channels: int = 4
    out_channels: int = 4
    norm_groups: int = 32
    prediction_type: str = "epsilon"        # SD2.1-768 predicts v
    # blocks per SpatialTransformer, per level (diffusers' transformer_layers_per_block; ignored at levels
    # without attention); the mid block's is the last level's. None: one everywhere (SD1.x/2.x)
    transformer_depth: Optional[tuple[int, ...]] = None
    # SDXL's "text_time" added embedding: the pooled text embedding (pooled_text_dim wide) and
    # sinusoidal embeddings (addition_time_embed_dim wide) of the six size numbers; 0: none (SD1.x/2.x)
    addition_time_embed_dim: int = 0
    pooled_text_dim: int = 0

    def depth(self, level: int) -> int:
        return 1 if self.transformer_depth is None else self.transformer_depth[level]

    @classmethod
    def sd15(cls) -> "UNetConfig":
        return cls()

    @classmethod
    def sd21(cls) -> "UNetConfig":
        """SD2.1 (768-v); SD2.1-base is the same with prediction_type='epsilon'."""
        return cls(heads=(5, 10, 20, 20), context_dim=1024, linear_proj=True, prediction_type="v_prediction")

    @classmethod
    def sdxl(cls) -> "UNetConfig":
        """SDXL base 1.0 (stabilityai/stable-diffusion-xl-base-1.0 unet/config.json): three levels, no
        attention at the first, 2 and 10 transformer blocks at the others, 64-wide heads, 2048-wide
        context (CLIP ViT-L 768 + OpenCLIP ViT-bigG 1280), text_time embedding of 1280 + 6 x 256."""
        return cls(block_channels=(320, 640, 1280), attention_levels=(False, True, True), heads=(5, 10, 20),
                   transformer_depth=(1, 2, 10), context_dim=2048, linear_proj=True,
                   addition_time_embed_dim=256, pooled_text_dim=1280)

    @classmethod
    def tiny_sdxl(cls, **overrides) -> "UNetConfig":
        """SDXL's structure at test size: no attention at level 0, transformer depth > 1, text_time."""
        return replace(cls(block_channels=(32, 64, 64), attention_levels=(False, True, True), heads=(2, 2, 4),
                           transformer_depth=(1, 2, 3), context_dim=48, linear_proj=True, norm_groups=8,
                           addition_time_embed_dim=8, pooled_text_dim=16), **overrides)

    @classmethod
    def tiny(cls, **overrides) -> "UNetConfig":
        """A few-MB SD1-shaped UNet for tests: same structure, small widths."""
        return replace(cls(block_channels=(32, 64), attention_levels=(True, False), heads=(2, 2),
                           layers_per_block=1, context_dim=32, norm_groups=8), **overrides)


@dataclass(frozen=True)
class Conditioning:
    """What a UNet call is conditioned on besides the timestep. SD1.x/2.x: the text context only
    (a plain tensor works too); SDXL adds, to the timestep embedding, the pooled text embedding and
    six "micro-conditioning" numbers: original size (h, w), crop top-left (y, x), target size (h, w)."""
    context: Tensor                       # (B, 77, context_dim)
    pooled: Optional[Tensor] = None       # (B, pooled_text_dim): SDXL's second text encoder, projected
    time_ids: Optional[Tensor] = None     # (B, 6)

    def to(self, *args, **kwargs) -> "Conditioning":
        """Tensor.to on every tensor (device/dtype), as for a plain context."""
        move = lambda t: None if t is None else t.to(*args, **kwargs)  # noqa: E731
        return Conditioning(move(self.context), move(self.pooled), move(self.time_ids))

    def at_size(self, width: int, height: int) -> "Conditioning":
        """time_ids of an uncropped image of this size: original = target = (height, width), crop (0, 0),
        as diffusers' SDXL pipeline and the reference (`[H, W, 0, 0, H, W]`) pass them."""
        ids = torch.tensor([[height, width, 0, 0, height, width]], device=self.context.device,
                           dtype=self.context.dtype).expand(self.context.shape[0], -1)
        return replace(self, time_ids=ids)


Context = Union[Tensor, Conditioning]


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding, cosine half first (SD's `flip_sin_to_cos=True`, shift 0)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class TimestepEmbedding(nn.Module):
    def __init__(self, dim: int, out: int):
        super().__init__()
        self.linear_1 = nn.Linear(dim, out)
        self.linear_2 = nn.Linear(out, out)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class ResBlock(nn.Module):
    """Two 3x3 convolutions with GroupNorm+SiLU, the timestep embedding added in between."""

    def __init__(self, cin: int, cout: int, groups: int, temb_dim: Optional[int], eps: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_dim, cout) if temb_dim else None
        self.norm2 = nn.GroupNorm(groups, cout, eps=eps)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: Tensor, temb: Optional[Tensor] = None) -> Tensor:
        # SiLU and the residual add in place on tensors of this block's own: the same values, and at the VAE's
        # 512 px no fresh 64 MB tensor whose pages the CPU faults in anew (decode: 0.3 of 5.8 s in bfloat16)
        h = self.conv1(F.silu(self.norm1(x), inplace=True))
        if self.time_emb_proj is not None:
            h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h), inplace=True))
        return h.add_(x if self.conv_shortcut is None else self.conv_shortcut(x))


class Downsample(nn.Module):
    def __init__(self, channels: int, pad_right_bottom: bool = False):
        super().__init__()
        # The VAE pads only right/bottom then convolves without padding; the UNet pads 1 all round.
        self.pad_right_bottom = pad_right_bottom
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0 if pad_right_bottom else 1)

    def forward(self, x: Tensor) -> Tensor:
        if self.pad_right_bottom:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, size: Optional[Sequence[int]] = None) -> Tensor:
        """2x nearest upsampling, or to `size`: the UNet's up path meets the down path's skip, whose
        side is odd when the latent's is not a multiple of 2^levels (diffusers' `upsample_size`)."""
        x = F.interpolate(x, scale_factor=2.0, mode="nearest") if size is None else \
            F.interpolate(x, size=tuple(size), mode="nearest")
        return self.conv(x)


class UNetBlock(nn.Module):
    """One resolution level: ResBlocks, each optionally followed by a SpatialTransformer,
    then an optional down/up-sampler. Serves as diffusers' (CrossAttn)Down/UpBlock2D."""

    def __init__(self, resnets: list[ResBlock], attentions: list[SpatialTransformer], sampler: Optional[nn.Module],
                 up: bool):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(attentions)  # empty for levels without attention
        if sampler is not None:
            setattr(self, "upsamplers" if up else "downsamplers", nn.ModuleList([sampler]))

    @property
    def sampler(self) -> Optional[nn.Module]:
        samplers = getattr(self, "upsamplers", None) or getattr(self, "downsamplers", None)
        return samplers[0] if samplers else None


class UNet(nn.Module):
    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        ch, groups, n = cfg.block_channels, cfg.norm_groups, cfg.layers_per_block
        temb = ch[0] * 4
        res = lambda cin, cout: ResBlock(cin, cout, groups, temb, eps=1e-5)  # noqa: E731
        attn = lambda c, level: SpatialTransformer(  # noqa: E731
            c, cfg.context_dim, cfg.heads[level], cfg.linear_proj, groups, cfg.depth(level))

        self.time_embedding = TimestepEmbedding(ch[0], temb)
        self.add_embedding = (TimestepEmbedding(cfg.pooled_text_dim + 6 * cfg.addition_time_embed_dim, temb)
                              if cfg.addition_time_embed_dim else None)
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)

        skip_channels = [ch[0]]  # channels of every feature map the down path hands to the up path
        self.down_blocks = nn.ModuleList()
        cin = ch[0]
        for level, cout in enumerate(ch):
            last = level == len(ch) - 1
            resnets = [res(cin if j == 0 else cout, cout) for j in range(n)]
            attns = [attn(cout, level) for _ in range(n)] if cfg.attention_levels[level] else []
            self.down_blocks.append(UNetBlock(resnets, attns, None if last else Downsample(cout), up=False))
            skip_channels += [cout] * (n if last else n + 1)
            cin = cout

        self.mid_block = UNetBlock([res(ch[-1], ch[-1]), res(ch[-1], ch[-1])], [attn(ch[-1], -1)], None, up=False)

        self.up_blocks = nn.ModuleList()
        cin = ch[-1]
        for level in reversed(range(len(ch))):
            cout, last = ch[level], level == 0
            resnets = [res((cin if j == 0 else cout) + skip_channels.pop(), cout) for j in range(n + 1)]
            attns = [attn(cout, level) for _ in range(n + 1)] if cfg.attention_levels[level] else []
            self.up_blocks.append(UNetBlock(resnets, attns, None if last else Upsample(cout), up=True))
            cin = cout

        self.conv_norm_out = nn.GroupNorm(groups, ch[0], eps=1e-5)
        self.conv_out = nn.Conv2d(ch[0], cfg.out_channels, 3, padding=1)
        self.num_self_attention_layers = sum(len(t.transformer_blocks) for b in self._blocks() for t in b.attentions)

    def _blocks(self) -> list[UNetBlock]:
        return [*self.down_blocks, self.mid_block, *self.up_blocks]

    def self_attention_layer_names(self) -> list[str]:
        """Every self-attention layer's name, in visiting order (the index of a layer in kv= lists)."""
        names = []
        parts = [("down", i, b) for i, b in enumerate(self.down_blocks)] + [("mid", None, self.mid_block)] + \
                [("up", i, b) for i, b in enumerate(self.up_blocks)]
        for part, index, block in parts:
            for a, transformer in enumerate(block.attentions):
                name = f"{part}.{a}" if index is None else f"{part}.{index}.{a}"
                depth = len(transformer.transformer_blocks)
                names += [name] if depth == 1 else [f"{name}.{k}" for k in range(depth)]
        return names

    def add_image_prompt_projections(self) -> None:
        """Give every cross-attention IP-Adapter's extra key/value projections."""
        for block in self._blocks():
            for t in block.attentions:
                for transformer_block in t.transformer_blocks:
                    transformer_block.attn2.add_image_prompt_projections()

    def added_embedding(self, cond: Conditioning) -> Tensor:
        """SDXL's text_time embedding: pooled text embedding and the six size numbers' sinusoids, through an MLP."""
        if cond.pooled is None or cond.time_ids is None:
            raise ValueError("this UNet (SDXL-style) is conditioned on the pooled text embedding and size time ids "
                             "too: pass Conditioning(context, pooled, time_ids), e.g. from an SDXL text encoder "
                             "with .at_size(width, height)")
        sizes = timestep_embedding(cond.time_ids.flatten(), self.cfg.addition_time_embed_dim)
        sizes = sizes.reshape(cond.time_ids.shape[0], -1)  # (B, 6 * addition_time_embed_dim)
        return self.add_embedding(torch.cat([cond.pooled, sizes.to(cond.pooled.dtype)], dim=-1))

    def forward(self, x: Tensor, t, context: Context, *, kv: Optional[Sequence[Optional[KV]]] = None,
                image_prompt: Optional[ImagePrompt] = None) -> Tensor:
        """Predict the noise (or v) for latent `x` at timestep `t`.

        kv: per self-attention layer, (k, v) to use instead of the layer's own, or None.
        """
        return self._run(x, t, context, kv, image_prompt)[0]

    def forward_recording_kv(self, x: Tensor, t, context: Context, *,
                             image_prompt: Optional[ImagePrompt] = None) -> tuple[Tensor, list[KV]]:
        """The prediction and the (k, v) every self-attention layer computed, in layer order."""
        return self._run(x, t, context, None, image_prompt)

    def features(self, x: Tensor, t, context: Context, up_block: int) -> Tensor:
        """The feature map after up block `up_block` (DIFT's diffusion features); the rest is not run."""
        return self._run(x, t, context, None, None, stop_after_up_block=up_block)[0]

    def _run(self, x: Tensor, t, context: Context, kv: Optional[Sequence[Optional[KV]]],
             image_prompt: Optional[ImagePrompt], stop_after_up_block: Optional[int] = None) -> tuple[Tensor, list[KV]]:
        """The UNet body: (output, K/V of every self-attention layer visited)."""
        b = x.shape[0]
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(b)
        temb = self.time_embedding(timestep_embedding(t, self.cfg.block_channels[0]).to(x.dtype))
        cond = context if isinstance(context, Conditioning) else Conditioning(context)
        if self.add_embedding is not None:
            temb = temb + self.added_embedding(cond).to(x.dtype)
        context = cond.context
        kv_in = list(kv) if kv is not None else [None] * self.num_self_attention_layers
        kv_out: list[KV] = []

        def attend(transformer: SpatialTransformer, h: Tensor) -> Tensor:
            """The next self-attention layers in visiting order: their given K/V in, the ones they used recorded."""
            first = len(kv_out)
            h, used = transformer(h, context, kv_in[first:first + len(transformer.transformer_blocks)], image_prompt)
            kv_out.extend(used)
            return h

        def run(block: UNetBlock, h: Tensor, up: bool) -> Tensor:
            """One level: the down path pushes every output on the skip stack, the up path pops."""
            for j, resnet in enumerate(block.resnets):
                if up:
                    h = torch.cat([h, skips.pop()], dim=1)
                h = resnet(h, temb)
                if block.attentions:
                    h = attend(block.attentions[j], h)
                if not up:
                    skips.append(h)
            if block.sampler is not None:
                h = block.sampler(h, skips[-1].shape[-2:]) if up else block.sampler(h)
                if not up:
                    skips.append(h)
            return h

        h = self.conv_in(x)
        skips = [h]
        for block in self.down_blocks:
            h = run(block, h, up=False)
        h = self.mid_block.resnets[0](h, temb)
        h = attend(self.mid_block.attentions[0], h)
        h = self.mid_block.resnets[1](h, temb)
        for i, block in enumerate(self.up_blocks):
            h = run(block, h, up=True)
            if i == stop_after_up_block:
                return h, kv_out
        # in the latent's layout (a CPU's packed convolutions return channels-last)
        return self.conv_out(F.silu(self.conv_norm_out(h))).contiguous(), kv_out
