"""What the RegionDrag pipeline needs from a UNet, written down: any module with these members can
stand in for models.unet.UNet (an ablated architecture, a compiled or wrapped one)."""
from __future__ import annotations

from typing import Optional, Protocol, Sequence, runtime_checkable

from torch import Tensor

from .attention import KV, ImagePrompt
from .unet import Context, UNetConfig


@runtime_checkable
class DenoisingUNet(Protocol):
    cfg: UNetConfig                  # the pipeline reads cfg.prediction_type ("epsilon" or "v_prediction")
    num_self_attention_layers: int   # how many (k, v) pairs forward_recording_kv returns and kv= takes

    def __call__(self, x: Tensor, t: Tensor, context: Context, *, kv: Optional[Sequence[Optional[KV]]] = None,
                 image_prompt: Optional[ImagePrompt] = None) -> Tensor:
        """The prediction for latent x at timestep t; kv[i], where given, replaces self-attention layer i's
        own keys and values."""

    def forward_recording_kv(self, x: Tensor, t: Tensor, context: Context, *,
                             image_prompt: Optional[ImagePrompt] = None) -> tuple[Tensor, list[KV]]:
        """The prediction and the (k, v) every self-attention layer computed, in visiting order."""

    def self_attention_layer_names(self) -> list[str]:
        """A name per self-attention layer, in visiting order ("down.1.0", "mid.0", "up.2.1", ...)."""
