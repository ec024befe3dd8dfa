"""Image -> CLIP vision features, the input of IP-Adapter-Plus's resampler.

IP-Adapter-Plus uses every token (class + patches) that the second-to-last transformer layer
outputs, not the pooled, projected image embedding: 257 x 1280 for CLIP ViT-H/14 at 224 px.

    pixels = encoder.preprocess(image)   # (B, 3, 224, 224), resized, centre-cropped, CLIP-normalised
    features = encoder(pixels)           # (B, 257, 1280)
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import CLIPVisionModelWithProjection

try:  # transformers >= 5 names the PIL backend, which is what the reference's transformers 4.40 used
    from transformers import CLIPImageProcessorPil as CLIPImageProcessor
except ImportError:
    from transformers import CLIPImageProcessor

# hidden_states[-2]: tencent-ailab/IP-Adapter `IPAdapterPlus.get_image_embeds` and the
# reference's `ip_encode_image` (Visual-AI/RegionDrag utils/drag.py) both take this layer.
FEATURE_LAYER = -2


def clip_image_processor(image_size: int) -> CLIPImageProcessor:
    """CLIP preprocessing at the encoder's resolution: shortest edge to `image_size` (bicubic),
    centre crop, scale to [0, 1], normalise with CLIP's mean/std. diffusers' `load_ip_adapter`
    builds the same (the h94/IP-Adapter encoder folder has no preprocessor config)."""
    return CLIPImageProcessor(size={"shortest_edge": image_size},
                              crop_size={"height": image_size, "width": image_size})


class ImageEncoder(nn.Module):
    def __init__(self, model: CLIPVisionModelWithProjection, processor: CLIPImageProcessor):
        super().__init__()
        self.model = model
        self.processor = processor

    @property
    def width(self) -> int:
        return self.model.config.hidden_size

    def preprocess(self, images) -> Tensor:
        """PIL image(s) or uint8 HxWx3 array(s) -> (B, 3, S, S) pixel values on the model's device/dtype."""
        pixels = self.processor(images, return_tensors="pt").pixel_values
        return pixels.to(device=self.model.device, dtype=self.model.dtype)

    @torch.no_grad()
    def forward(self, pixels: Tensor) -> Tensor:
        """(B, 3, S, S) preprocessed pixels -> (B, 1 + patches, width) penultimate hidden states."""
        return self.model(pixel_values=pixels, output_hidden_states=True).hidden_states[FEATURE_LAYER]
