"""The three backbones the reference offers (its drag.py `sd_version`), and which one a UNet is.

    backbone_of(unet.cfg)   # "sd15" | "sd21" | "sdxl", from the structure the tensors imply

SD2.x projects its transformers in and out with Linear layers where SD1.x uses 1x1 convolutions;
SDXL alone has the text_time added embedding. Both are visible in the tensors (proj_in's rank,
add_embedding's presence), so a tiny test model is classified the same way as a real one.
"""
from __future__ import annotations

from models.unet import UNetConfig

from .hub import DEFAULT_MODEL, SD21_MODEL, SDXL_MODEL

BACKBONES = ("sd15", "sd21", "sdxl")
HUB_IDS = {"sd15": DEFAULT_MODEL, "sd21": SD21_MODEL, "sdxl": SDXL_MODEL}  # the reference's base models
CONTEXT_DIMS = {"sd15": 768, "sd21": 1024, "sdxl": 2048}  # CLIP ViT-L; OpenCLIP ViT-H; ViT-L + ViT-bigG


def backbone_of(cfg: UNetConfig) -> str:
    if cfg.addition_time_embed_dim:
        return "sdxl"
    return "sd21" if cfg.linear_proj else "sd15"
