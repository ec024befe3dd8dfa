"""The benchmark's in-run baseline: diffusers' UNet, VAE and IP-Adapter behind our pipeline's calls.

    baseline = RegionDragPipeline(DiffusersUNet(unet, resampler), DiffusersVAE(vae), text_encoder,
                                  ReferenceImagePrompter(image_encoder))

The same weights as ours, run the way the reference implementation runs them: K/V recorded and
replayed by forward hooks on every self-attention's to_k / to_v, and IP-Adapter-Plus through
diffusers' own attention processors and image projection, fed the reference's 32 image tokens
(the CLIP features of a zero image and of the photo, stacked, at latent batch 1).
"""
from __future__ import annotations

from typing import Optional

import torch
from PIL import Image
from torch import nn

from models import AutoencoderKL, UNet
from models.attention import ImagePrompt
from models.image_encoder import ImageEncoder
from models.resampler import Resampler
from weights.ip_adapter import ip_adapter_key_map


def _quiet_diffusers() -> None:
    from diffusers.utils import logging

    logging.set_verbosity_error()  # it warns about `.to(dtype)` on models built without from_pretrained


class DiffusersUNet(nn.Module):
    """diffusers' UNet behind our UNet's call signature; K/V recorded and replayed by forward
    hooks on each self-attention's to_k / to_v, the reference implementation's mechanism.
    With `resampler` (ours has IP-Adapter projections), the adapter loads into diffusers'
    processors from the official checkpoint keys, and image_prompt.tokens are CLIP features
    as ReferenceImagePrompter makes them."""

    def __init__(self, ours: UNet, resampler: Optional[Resampler] = None):
        super().__init__()
        from diffusers import UNet2DConditionModel

        _quiet_diffusers()
        c = ours.cfg
        self.inner = UNet2DConditionModel(
            block_out_channels=c.block_channels, layers_per_block=c.layers_per_block,
            down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in c.attention_levels),
            up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(c.attention_levels)),
            cross_attention_dim=c.context_dim, attention_head_dim=c.heads,
            use_linear_projection=c.linear_proj, norm_num_groups=c.norm_groups)
        p = next(ours.parameters())
        self.inner.load_state_dict({k: v for k, v in ours.state_dict().items() if "_ip." not in k}, strict=True)
        if resampler is not None:  # our tensors under the official checkpoint's keys, loaded as diffusers loads them
            official = ip_adapter_key_map(ours, resampler)
            nested = {group: {k.removeprefix(group + "."): v.float() for k, v in official.items()
                              if k.startswith(group + ".")} for group in ("image_proj", "ip_adapter")}
            self.inner._load_ip_adapter_weights([nested], low_cpu_mem_usage=False)
        self.inner.to(device=p.device, dtype=p.dtype).eval().requires_grad_(False)
        self.cfg, self.num_self_attention_layers = c, ours.num_self_attention_layers
        self._scale: Optional[float] = None
        self._record: list = []
        self._replay: list = []
        paths = []
        for name, m in self.inner.named_modules():
            if name.endswith("attn1"):
                m.to_k.register_forward_hook(self._hook)
                m.to_v.register_forward_hook(self._hook)
                paths.append(name.split("."))
        # our layer names, read off diffusers' module paths: down_blocks.1.attentions.0.transformer_blocks.k.attn1
        # -> down.1.0 (mid_block...: mid.0), with .k where that transformer has more than one block
        deep = {tuple(p[:-3]) for p in paths if p[-2] != "0"}
        visiting = sorted(paths, key=lambda p: ("down_blocks", "mid_block", "up_blocks").index(p[0]))  # stable
        self._names = [".".join([p[0].split("_")[0], *p[1:-5], p[-4], *([p[-2]] if tuple(p[:-3]) in deep else [])])
                       for p in visiting]

    def _hook(self, module, inputs, output):
        if self._replay:
            given = self._replay.pop(0)
            return output if given is None else given
        self._record.append(output)
        return output

    def self_attention_layer_names(self) -> list[str]:
        return list(self._names)

    def _image_kwargs(self, image_prompt: Optional[ImagePrompt]) -> dict:
        if image_prompt is None:
            return {}
        if image_prompt.scale != self._scale:
            for proc in self.inner.attn_processors.values():
                if hasattr(proc, "scale"):  # the IP-Adapter processors (cross-attention)
                    proc.scale = [image_prompt.scale]
            self._scale = image_prompt.scale
        return {"added_cond_kwargs": {"image_embeds": [image_prompt.tokens]}}

    def forward(self, x, t, context, *, kv=None, image_prompt: ImagePrompt | None = None):
        self._record = []
        self._replay = [] if kv is None else [part for layer in kv for part in (layer or (None, None))]
        return self.inner(x, t, encoder_hidden_states=context, **self._image_kwargs(image_prompt)).sample

    def forward_recording_kv(self, x, t, context, *, image_prompt: ImagePrompt | None = None):
        out, flat = self.forward(x, t, context, image_prompt=image_prompt), self._record
        return out, [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


class ReferenceImagePrompter:
    """(photo, scale) -> ImagePrompt whose tokens are what the reference hands diffusers' UNet: the CLIP
    features of a zero image and of the photo stacked, (2, 1, 257, width) (its utils/drag.py
    `ip_encode_image`); diffusers' image projection turns them into 32 tokens inside every UNet call."""

    def __init__(self, encoder: ImageEncoder):
        self.encoder = encoder

    @torch.no_grad()
    def __call__(self, photo: Image.Image, scale: float) -> ImagePrompt:
        pixels = self.encoder.preprocess(photo)
        return ImagePrompt(torch.stack([self.encoder(torch.zeros_like(pixels)), self.encoder(pixels)]), scale)


class DiffusersVAE(nn.Module):
    def __init__(self, ours: AutoencoderKL):
        super().__init__()
        from diffusers import AutoencoderKL as DAutoencoderKL

        _quiet_diffusers()
        c = ours.cfg
        n = len(c.block_channels)
        self.inner = DAutoencoderKL(block_out_channels=c.block_channels, layers_per_block=c.layers_per_block,
                                    down_block_types=("DownEncoderBlock2D",) * n,
                                    up_block_types=("UpDecoderBlock2D",) * n, latent_channels=c.latent_channels,
                                    norm_num_groups=c.norm_groups)
        p = next(ours.parameters())
        self.inner.load_state_dict(ours.state_dict(), strict=True)
        self.inner.to(device=p.device, dtype=p.dtype).eval().requires_grad_(False)
        self.cfg, self.scaling_factor, self.sample = c, ours.scaling_factor, ours.sample

    def encode_moments(self, images):
        dist = self.inner.encode(images).latent_dist
        return dist.mean, dist.logvar

    def decode(self, latents):
        return self.inner.decode(latents).sample
