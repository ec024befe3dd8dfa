"""The upsampler's nearest 2x upsampling and 3x3 convolution, folded into 2x2 convolutions of the small image.

    fold_upsamplers(vae.decoder)    # every Upsample inside becomes a FoldedUpsample, in place (after loading weights)

The UNet's and the VAE decoder's upsamplers repeat each pixel 2x2, then convolve 3x3. Output pixel (2i+a, 2j+b)
of phase (a, b) sees only 2x2 distinct pixels of the small image: rows i-1, i (a = 0) or i, i+1 (a = 1), and the
same for columns, so the 3x3 taps that land on one pixel add up into a 2x2 kernel. The four phases are one 2x2
convolution with 4x the output channels: the same function for 16 multiply-adds per pixel and channel pair
instead of 36, and no 4x-sized upsampled tensor: in bfloat16 on CPU an SD1.5 VAE decode at 512 px takes 5.8 s
instead of 6.7 s. The sums of taps round differently, so it is used where the weights are rounded anyway, and
only where that rounding measured harmless: the VAE decoder in bfloat16 on CPU, not the UNet (regiondrag/precision.py).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from .onednn import replace_modules
from .unet import Upsample

# PHASE_TAPS[a][r][k]: whether the 3x3 kernel's row k (dy = k - 1) lands on the 2x2 kernel's row r in phase a.
# The 2x2 kernel's rows are the small image's rows p - 1 and p (padding 1); phase a's output row i sits at p = i + a.
PHASE_TAPS = ((
    (1, 0, 0),   # a = 0, row i - 1: dy = -1
    (0, 1, 1),   # a = 0, row i: dy = 0 and +1
), (
    (1, 1, 0),   # a = 1, row i: dy = -1 and 0
    (0, 0, 1),   # a = 1, row i + 1: dy = +1
))


class FoldedUpsample(Upsample):
    """An Upsample whose 2x case runs as the four phases' 2x2 convolution (`phases`, made from `conv`).

    `conv` stays for upsampling to an odd size (the UNet's up path meeting an odd skip) and is what the state dict
    holds: `phases` is derived from it, so load weights before folding."""

    def __init__(self, upsample: Upsample):
        nn.Module.__init__(self)
        self.conv = upsample.conv
        weight, bias = self.conv.weight.detach(), self.conv.bias
        taps = torch.tensor(PHASE_TAPS, dtype=torch.float64, device=weight.device)
        phases = torch.einsum("ark,bsl,oikl->aboirs", taps, taps, weight.double()).flatten(0, 2)  # (4 out, in, 2, 2)
        self.phases = nn.Conv2d(weight.shape[1], phases.shape[0], 2, padding=1, bias=bias is not None,
                                device="meta")
        self.phases.weight = nn.Parameter(phases.to(weight.dtype), requires_grad=False)
        if bias is not None:
            self.phases.bias = nn.Parameter(bias.detach().repeat(4), requires_grad=False)
        self.register_state_dict_post_hook(drop_phases)

    def forward(self, x: Tensor, size: Optional[Sequence[int]] = None) -> Tensor:
        n, _, h, w = x.shape
        if size is not None and tuple(size) != (2 * h, 2 * w):
            return super().forward(x, size)
        phases = self.phases(x).unflatten(1, (2, 2, -1))  # (B, a, b, C, h + 1, w + 1)
        layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        out = torch.empty(n, phases.shape[3], 2 * h, 2 * w, dtype=phases.dtype, device=x.device, memory_format=layout)
        grid = out.unflatten(2, (h, 2)).unflatten(4, (w, 2))  # (B, C, i, a, j, b): pixel (2i + a, 2j + b)
        for a in (0, 1):
            for b in (0, 1):
                grid[:, :, :, a, :, b] = phases[:, a, b, :, a:a + h, b:b + w]
        return out


def drop_phases(module: FoldedUpsample, state_dict: dict, prefix: str, local_metadata) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + "phases.")]:
        del state_dict[key]


def fold_upsamplers(module: nn.Module) -> int:
    """Replace every Upsample in `module` by a FoldedUpsample, in place; returns how many."""
    return replace_modules(module, Upsample, lambda up: up if isinstance(up, FoldedUpsample) else FoldedUpsample(up))
