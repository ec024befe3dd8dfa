"""The image prompt: the photo being edited, as IP-Adapter-Plus tokens for every UNet call.

    prompter = ImagePrompter.from_pretrained(unet)   # h94/IP-Adapter; gives unet its to_k_ip / to_v_ip
    image_prompt = prompter(photo)                   # ImagePrompt((1, 32, 768) tokens, scale 0.5)
    eps = unet(x, t, context, image_prompt=image_prompt)

The reference's token layout (REFERENCE_LAYOUT): its `ip_encode_image` (Visual-AI/RegionDrag
utils/drag.py) stacks the CLIP features of a zero pixel tensor and of the photo into one
(2, 1, 257, 1280) tensor; with guidance 1 its `get_eps` (region_utils/cycle_sde.py) keeps that
list whole at latent batch 1, and diffusers' IP-Adapter attention views the (2, 1, 16, 768)
projections as (1, 32, 768). So every cross-attention attends, in one softmax, to 32 image
tokens: the zero image's 16, then the photo's 16 (the order itself is immaterial: attention
without positions is invariant to permuting keys; sharing one softmax is what changes the output).
The plain layout is IP-Adapter's own conditional branch: the photo's 16 tokens only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch
from torch import Tensor, nn

from models.attention import ImagePrompt
from models.image_encoder import ImageEncoder
from models.resampler import Resampler, ResamplerConfig
from models.unet import UNet
from models.backbones import BACKBONES, backbone_of
from weights.ip_adapter import IP_ADAPTER_REPO, ip_adapter_files, load_image_encoder, load_ip_adapter

REFERENCE_LAYOUT = True   # zero-image tokens then photo tokens: 2 x 16 = 32 image tokens per cross-attention


class ImagePrompter(nn.Module):
    """Photo -> ImagePrompt: CLIP features (ImageEncoder), resampled to tokens (Resampler)."""

    def __init__(self, encoder: ImageEncoder, resampler: Resampler, reference_layout: bool = REFERENCE_LAYOUT):
        super().__init__()
        self.encoder = encoder
        self.resampler = resampler
        self.reference_layout = reference_layout

    @classmethod
    def from_pretrained(cls, unet: UNet, src: Union[str, Path] = IP_ADAPTER_REPO, *,
                        cfg: Optional[ResamplerConfig] = None, reference_layout: bool = REFERENCE_LAYOUT,
                        dtype: Optional[torch.dtype] = None, device=None) -> "ImagePrompter":
        """Load IP-Adapter-Plus into `unet` (its to_k_ip / to_v_ip) and a new Resampler, and the CLIP
        image encoder. src: an adapter file, an h94/IP-Adapter-like folder, or a hub id (fetched when
        missing); in a folder or hub repo, the file of the UNet's backbone (SD1.5 or SDXL's Plus ViT-H
        adapter); see `weights.ip_adapter.ip_adapter_files`."""
        adapter, encoder_folder = ip_adapter_files(src, backbone_of(unet.cfg))
        resampler = load_ip_adapter(adapter, unet, cfg)
        return cls(load_image_encoder(encoder_folder), resampler, reference_layout).to(device=device, dtype=dtype)

    @torch.no_grad()
    def tokens(self, images) -> Tensor:
        """PIL image(s) / uint8 HxWx3 array(s) -> (B, 16, C) tokens, or (B, 32, C) in the reference layout."""
        pixels = self.encoder.preprocess(images)          # (B, 3, 224, 224)
        tokens = self.resampler(self.encoder(pixels))     # (B, 16, C)
        if self.reference_layout:
            # zeros *after* CLIP normalisation (i.e. CLIP's mean colour), as the reference and IP-Adapter's
            # own `IPAdapterPlus.get_image_embeds` build their unconditional image
            zero = self.resampler(self.encoder(torch.zeros_like(pixels[:1])))
            tokens = torch.cat([zero.expand_as(tokens), tokens], dim=1)
        return tokens

    def forward(self, images, scale: float = BACKBONES["sd15"].ip_scale) -> ImagePrompt:
        return ImagePrompt(self.tokens(images), scale)
