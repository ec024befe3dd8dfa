"""Convolutions with weights pre-packed for oneDNN, torch's CPU convolution library (bfloat16 on CPU).

    pack_convolutions(unet)     # every nn.Conv2d inside becomes a PackedConv2d, in place
    unpack_convolutions(unet)   # and back (torch.compile packs a graph's weights itself)

A plain bfloat16 nn.Conv2d on CPU has oneDNN reorder its weight into a blocked layout at every call; packed
once, an SD1.5 UNet call at 512 px takes 10% less time (2.94 -> 2.68 s on this project's 2-core CI machine).
This is what torch.compile's CPU "freezing" does to a graph's weights, without compiling (slower on CPU,
see regiondrag/precision.py). It uses torch's mkldnn operators `_convolution_pointwise` and
`mkldnn_reorder_conv2d_weight`: private to torch, so `packing_available()` checks for them first.

The packed weight replaces the dense one (no second copy: the SD1.5 UNet's convolutions are 1.1 GB in
bfloat16), so a packed model is for inference on CPU only; `weight` still reads the dense values back.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def packing_available() -> bool:
    """Whether this torch build has oneDNN's convolution with packed weights, in bfloat16."""
    ops = torch.ops.mkldnn
    return (torch.backends.mkldnn.is_available() and hasattr(ops, "_convolution_pointwise")
            and hasattr(torch._C._nn, "mkldnn_reorder_conv2d_weight") and ops._is_mkldnn_bf16_supported())


class PackedConv2d(nn.Module):
    """An nn.Conv2d (zero padding) whose weight oneDNN holds packed for the input shape it last saw.

    oneDNN picks the packed layout for an input shape: the weight is packed again when the shape changes
    (a new photo size; within one edit every call has the same shapes). Its output is channels-last,
    oneDNN's layout for activations."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(f"only zero-padded convolutions with numeric padding are packed, not {conv}")
        self.in_channels, self.out_channels, self.kernel_size = conv.in_channels, conv.out_channels, conv.kernel_size
        self.geometry = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach(), requires_grad=False)
        self.packed: Tensor = conv.weight.detach().to_mkldnn()  # oneDNN's plain layout until the first call
        self.packed_for: tuple[int, ...] | None = None

    @property
    def weight(self) -> Tensor:
        return self.packed.to_dense()

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "weight"] = self.weight  # a state dict as the nn.Conv2d's (e.g. to build a baseline)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape != self.packed_for:
            self.packed = torch._C._nn.mkldnn_reorder_conv2d_weight(self.packed, *self.geometry, list(x.shape))
            self.packed_for = tuple(x.shape)
        return torch.ops.mkldnn._convolution_pointwise(x, self.packed, self.bias, *self.geometry, "none", [], "")

    def unpacked(self) -> nn.Conv2d:
        """The plain nn.Conv2d with the same weight and bias."""
        padding, stride, dilation, groups = self.geometry
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, stride, padding, dilation, groups,
                         bias=self.bias is not None, device="meta")
        conv.weight = nn.Parameter(self.weight, requires_grad=False)
        if self.bias is not None:
            conv.bias = self.bias
        return conv

    def extra_repr(self) -> str:
        padding, stride, _, _ = self.geometry
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={tuple(stride)}, "
                f"padding={tuple(padding)}, packed for {self.packed_for}")


def pack_convolutions(module: nn.Module) -> int:
    """Replace every nn.Conv2d in `module` by a PackedConv2d, in place; returns how many."""
    return replace_modules(module, nn.Conv2d, PackedConv2d)


def unpack_convolutions(module: nn.Module) -> int:
    """Replace every PackedConv2d in `module` by its plain nn.Conv2d, in place; returns how many."""
    return replace_modules(module, PackedConv2d, PackedConv2d.unpacked)


def replace_modules(module: nn.Module, kind: type, make) -> int:
    count = 0
    for name, child in module.named_children():
        if isinstance(child, kind):
            setattr(module, name, make(child))
            count += 1
        else:
            count += replace_modules(child, kind, make)
    return count
