"""Prompt -> CLIP token embeddings, the UNet's cross-attention context.

SD1.x uses CLIP ViT-L/14's last hidden state (after the final LayerNorm). SD2.x uses
OpenCLIP ViT-H's penultimate layer, then the final LayerNorm; diffusers' SD2 folders already
store that text model with its last layer removed, so `skip_last_layers=0` is right for them
too (and our SD2 single-file loader drops that layer likewise).

SDXL (`SDXLTextEncoder`) has two: CLIP ViT-L/14 and OpenCLIP ViT-bigG/14. Its context is both
penultimate hidden states *without* the final LayerNorm, concatenated (768 + 1280 = 2048), and
the second's pooled, projected embedding conditions the UNet's timestep embedding (models.unet
`Conditioning`), as diffusers' `StableDiffusionXLPipeline.encode_prompt` does.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor, nn
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from .unet import Conditioning

Prompts = Union[str, Sequence[str]]
PENULTIMATE = -2  # SDXL's hidden_states index (the generative models' "clip skip 2")


class TextEncoder(nn.Module):
    def __init__(self, model: Union[CLIPTextModel, CLIPTextModelWithProjection], tokenizer: CLIPTokenizer,
                 skip_last_layers: int = 0):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.skip_last_layers = skip_last_layers

    @property
    def width(self) -> int:
        return self.model.config.hidden_size

    def run(self, prompts: Prompts):
        """transformers' output (hidden_states included) for the prompts, padded to the tokenizer's max length."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(self.model.device)
        return self.model(ids, output_hidden_states=True)

    @torch.no_grad()
    def forward(self, prompts: Prompts) -> Tensor:
        """(B, 77, width) embeddings of the prompts."""
        out = self.run(prompts)
        if self.skip_last_layers == 0:
            return out.last_hidden_state
        # transformers 5 flattened CLIPTextModel (no `.text_model`); 4.x nests it
        final_norm = getattr(self.model, "text_model", self.model).final_layer_norm
        return final_norm(out.hidden_states[-1 - self.skip_last_layers])


class SDXLTextEncoder(nn.Module):
    """SDXL's two text encoders -> Conditioning(context (B, 77, 2048), pooled (B, 1280)); the size
    time ids are the image's, added by the caller (`Conditioning.at_size`)."""

    def __init__(self, first: TextEncoder, second: TextEncoder):
        super().__init__()
        if not isinstance(second.model, CLIPTextModelWithProjection):
            raise TypeError("SDXL's second text encoder must be a CLIPTextModelWithProjection (its pooled "
                            "embedding is projected)")
        self.first, self.second = first, second

    @property
    def width(self) -> int:
        return self.first.width + self.second.width

    @torch.no_grad()
    def forward(self, prompts: Prompts) -> Conditioning:
        a, b = self.first.run(prompts), self.second.run(prompts)
        context = torch.cat([a.hidden_states[PENULTIMATE], b.hidden_states[PENULTIMATE]], dim=-1)
        return Conditioning(context, b.text_embeds)
