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

import fnmatch
from dataclasses import dataclass, replace
from typing import Optional, Sequence, Union

from models.attention import KV
from sampling import matching_inversion_step


@dataclass(frozen=True)
class AttentionSwap:
    """Which self-attention layers, at which denoising steps, use the recorded K/V.

    The reference swaps all 16 layers of SD1.5 at every denoising step; narrower
    selections are ablations. `enabled=False` runs plain self-attention throughout.
    Layers are chosen by index (visiting order), by name or by fnmatch pattern of the names
    `unet.self_attention_layer_names()` lists, e.g. AttentionSwap(layers={"up.*"}) (decoder only),
    {"mid.*", "up.1.*"}; SD1.5's are down.0.0 ... down.2.1, mid.0, up.1.0 ... up.3.2.
    """
    enabled: bool = True
    layers: Optional[frozenset[Union[int, str]]] = None  # indices, names or patterns; None: all
    steps: Optional[frozenset[int]] = None               # denoising step indices; None: all

    def __post_init__(self):
        for name in ("layers", "steps"):  # a list or one name given: as a frozenset (EditConfig checks the items)
            chosen = getattr(self, name)
            if isinstance(chosen, (str, int)) and not isinstance(chosen, bool):
                chosen = (chosen,)
            if isinstance(chosen, (list, tuple, set, range)):
                object.__setattr__(self, name, frozenset(chosen))

    def resolve(self, layer_names: Sequence[str]) -> "AttentionSwap":
        """This selection with its layers as indices into `layer_names` (a UNet's, in visiting order);
        a ValueError names an index, name or pattern that selects none of them."""
        if self.layers is None:
            return self
        chosen = set()
        for item in self.layers:
            if isinstance(item, int):
                if item >= len(layer_names):
                    raise ValueError(f"layer index {item} is not one of this UNet's self-attention layers "
                                     f"0 ... {len(layer_names) - 1}")
                chosen.add(item)
                continue
            matched = [i for i, name in enumerate(layer_names) if fnmatch.fnmatchcase(name, item)]
            if not matched:
                raise ValueError(f"{item!r:.40} names none of this UNet's self-attention layers "
                                 f"({layer_names[0]} ... {layer_names[-1]}; see unet.self_attention_layer_names())")
            chosen.update(matched)
        return replace(self, layers=frozenset(chosen))


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
        reached its noise level, in the selected layers (resolved to indices), None elsewhere (None overall
        when nothing is swapped)."""
        if not swap.enabled or (swap.steps is not None and denoise_step not in swap.steps):
            return None
        source = self._kv[matching_inversion_step(denoise_step, len(self._kv))]
        return [kv if swap.layers is None or layer in swap.layers else None for layer, kv in enumerate(source)]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for kvs in self._kv.values() for kv in kvs for t in kv)
