"""LPIPS (Zhang et al. 2018), AlexNet trunk, version 0.1: DragBench's image-fidelity metric.

    d = LPIPS()(x0, x1)   # x0, x1: (B, 3, H, W) in [-1, 1] -> (B,) distances

The trunk is torchvision's AlexNet `features` (attribute names kept, so its ImageNet
checkpoint loads by name); the five 1x1 heads are the `lpips` package's calibrated
`lin0..lin4` (v0.1). See weights/lpips.py for both files.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

CHANNELS = (64, 192, 384, 256, 256)  # AlexNet's conv widths: one head per ReLU tap


class ScalingLayer(nn.Module):
    """[-1, 1] images to the trunk's input range: the ImageNet mean/std rewritten for [-1, 1]."""

    def __init__(self):
        super().__init__()
        # lpips v0.1's constants; not in any checkpoint, hence non-persistent
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None], persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None], persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.shift) / self.scale


class AlexNet(nn.Module):
    """torchvision's AlexNet `features` up to the fifth ReLU; returns the five ReLU outputs."""

    TAPS = (1, 4, 7, 9, 11)  # indices of relu1..relu5 in `features`

    def __init__(self):
        super().__init__()
        # The final max-pool (index 12) is dropped: LPIPS reads nothing after relu5.
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, stride=2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, stride=2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.TAPS:
                taps.append(x)
        return taps


def normalize_channels(x: Tensor, eps: float = 1e-10) -> Tensor:
    """Unit-length feature vector at every position (lpips adds eps to the norm, not max)."""
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    def __init__(self):
        super().__init__()
        self.scaling_layer = ScalingLayer()
        self.net = AlexNet()
        # lpips' NetLinLayer: a 1x1 conv to one channel, no bias (its dropout acts only in training)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in CHANNELS)

    def forward(self, x0: Tensor, x1: Tensor) -> Tensor:
        """(B,) distances between image batches in [-1, 1]; any size the trunk accepts."""
        b = x0.shape[0]
        taps = self.net(self.scaling_layer(torch.cat([x0, x1])))  # both batches in one pass
        d = x0.new_zeros(b)
        for feat, lin in zip(taps, self.lins):
            f0, f1 = normalize_channels(feat).split(b)
            d = d + lin((f0 - f1).pow(2)).mean(dim=(1, 2, 3))  # weighted squared difference, spatial mean
        return d
