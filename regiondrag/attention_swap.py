"""Mutual self-attention (attention swap): record K/V during inversion, replay them while denoising.

During inversion every UNet call reports the keys and values of its self-attention layers
(`unet.forward_recording_kv(...)`); the store keeps them keyed by (inversion step, layer). The
denoising UNet call of step j then uses, in every selected layer, the keys and values of
the inversion step at the same noise level (sampling.matching_inversion_step), so the
edited latent attends to the original image's features at its own noise level. This is
what keeps the appearance of the dragged content (as in MasaCtrl, SDE-Drag, RegionDrag).

Nothing is counted or hooked: which step and layer a tensor belongs to is an explicit key.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from models.attention import KV
from sampling import matching_inversion_step


@dataclass(frozen=True)
class AttentionSwap:
    """Which self-attention layers, at which denoising steps, use the recorded K/V.

    The reference swaps all 16 layers of SD1.5 at every denoising step; narrower
    selections are ablations. `enabled=False` runs plain self-attention throughout.
    """
    enabled: bool = True
    layers: Optional[frozenset[int]] = None  # self-attention layer indices; None: all
    steps: Optional[frozenset[int]] = None   # denoising step indices; None: all


class KVStore:
    """Keys and values of every self-attention layer at every inversion step."""

    def __init__(self, num_layers: int):
        self.num_layers = num_layers
        self._kv: dict[int, list[KV]] = {}  # inversion step -> per-layer (k, v), each (B, L, C)

    def record(self, step: int, kvs: list[KV]) -> None:
        if len(kvs) != self.num_layers:
            raise ValueError(f"expected K/V of {self.num_layers} self-attention layers, got {len(kvs)}")
        self._kv[step] = [(k.detach(), v.detach()) for k, v in kvs]

    def get(self, step: int, layer: int) -> KV:
        return self._kv[step][layer]

    def replay(self, denoise_step: int, swap: AttentionSwap) -> Optional[list[Optional[KV]]]:
        """The `kv=` argument for denoising step `denoise_step`: the K/V of the inversion step that
        reached its noise level, in the selected layers, None elsewhere (None overall when nothing is swapped)."""
        if not swap.enabled or (swap.steps is not None and denoise_step not in swap.steps):
            return None
        source = self._kv[matching_inversion_step(denoise_step, len(self._kv))]
        return [kv if swap.layers is None or layer in swap.layers else None for layer, kv in enumerate(source)]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for kvs in self._kv.values() for kv in kvs for t in kv)
