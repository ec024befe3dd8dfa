"""Prompt -> CLIP token embeddings, the UNet's cross-attention context.

SD1.x uses CLIP ViT-L/14's last hidden state (after the final LayerNorm). SD2.x uses
OpenCLIP ViT-H's penultimate layer; diffusers' SD2 folders already store that text model
with its last layer removed, so `skip_last_layers=0` is right for them too.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor, nn
from transformers import CLIPTextModel, CLIPTokenizer


class TextEncoder(nn.Module):
    def __init__(self, model: CLIPTextModel, tokenizer: CLIPTokenizer, skip_last_layers: int = 0):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.skip_last_layers = skip_last_layers

    @property
    def width(self) -> int:
        return self.model.config.hidden_size

    @torch.no_grad()
    def forward(self, prompts: Union[str, Sequence[str]]) -> Tensor:
        """(B, 77, width) embeddings of the prompts, padded to the tokenizer's max length."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(self.model.device)
        if self.skip_last_layers == 0:
            return self.model(ids).last_hidden_state
        hidden = self.model(ids, output_hidden_states=True).hidden_states[-1 - self.skip_last_layers]
        # transformers 5 flattened CLIPTextModel (no `.text_model`); 4.x nests it
        return getattr(self.model, "text_model", self.model).final_layer_norm(hidden)
