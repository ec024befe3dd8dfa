"""DragBench metrics as RegionDrag reports them: LPIPS and Mean Distance (the paper prints both x100).

    d = lpips_distance(original, edited, load_lpips())
    md = mean_distance(original, edited, handles, targets, prompt, DIFT(unet, vae, text_encoder))

Images are uint8 (H, W, 3) RGB arrays, points (x, y) pixel positions, as in the reference
evaluation (RegionDrag `region_utils/evaluator.py`, `DragEvaluator`).

Mean Distance: DIFT features (Tang et al. 2023) of both images; each handle point's feature is
looked up in the edited image, nearest neighbour by cosine similarity inside a disk around the
handle and the target; the distance of that match to the target point, x over the width and y
over the height, averaged over the points.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.lpips import LPIPS
from sampling.schedule import alpha_bar, scaled_linear_alphas_cumprod

from ..image_io import to_tensor

# RegionDrag evaluator.py compute_lpips (as DragDiffusion run_eval_similarity.py): bilinear resize to 224x224
LPIPS_SIZE = 224
# DIFT's SD defaults (dift extract_dift.py; RegionDrag evaluator.py SDFeaturizer; DragDiffusion dift_sd.py)
DIFT_TIMESTEP = 261  # noise level of the one UNet call
DIFT_ENSEMBLE = 8  # noised copies whose features are averaged
DIFT_UP_BLOCK = 1  # features after the second up-block (DIFT `up_ft_index=1`)
# RegionDrag evaluator.py compute_distance: both images resized (nearest) to 768x768 for SD2.1
DIFT_IMAGE_SIZE = 768
# RegionDrag evaluator.py create_mask: search where distance to handle or target < max(5, |target - handle| / sqrt(2))
SEARCH_RADIUS_MIN = 5.0
SEARCH_RADIUS_SCALE = 1 / math.sqrt(2)

Points = Union[Sequence[Sequence[float]], np.ndarray, Tensor]


def image_to_tensor(image: np.ndarray, name: str = "image") -> Tensor:
    """uint8 (H, W, 3) RGB -> (1, 3, H, W) float in [-1, 1], the reference's `preprocess_image`."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"{name} must be a uint8 (H, W, 3) RGB array, got a {desc}")
    return to_tensor(image)


@torch.no_grad()
def lpips_distance(original: np.ndarray, edited: np.ndarray, lpips: LPIPS) -> float:
    """LPIPS of the two images, each resized to 224x224 first (so their sizes may differ)."""
    param = next(lpips.parameters())
    x0, x1 = (F.interpolate(image_to_tensor(im, name).to(param), size=(LPIPS_SIZE, LPIPS_SIZE), mode="bilinear")
              for im, name in ((original, "original"), (edited, "edited")))
    return lpips(x0, x1).item()


class DIFT(nn.Module):
    """Diffusion features: one noised UNet call per copy, features of an up-block, averaged."""

    def __init__(self, unet: nn.Module, vae: nn.Module, text_encoder: Optional[nn.Module] = None, *,
                 timestep: int = DIFT_TIMESTEP, ensemble: int = DIFT_ENSEMBLE, up_block: int = DIFT_UP_BLOCK,
                 image_size: int = DIFT_IMAGE_SIZE):
        super().__init__()
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.timestep, self.ensemble, self.up_block, self.image_size = timestep, ensemble, up_block, image_size
        self.alpha_bar = alpha_bar(scaled_linear_alphas_cumprod(), timestep)  # as the reference's scheduler.add_noise

    @property
    def _param(self) -> Tensor:
        return next(self.unet.parameters())

    def context(self, prompt: Union[str, Tensor]) -> Tensor:
        """The UNet's (1, 77, C) text context: a given tensor as is, a string through the text encoder."""
        if isinstance(prompt, Tensor):
            return prompt.to(self._param)
        if self.text_encoder is None:
            raise ValueError("this DIFT has no text encoder: pass the prompt's (1, 77, C) embedding instead")
        return self.text_encoder(prompt).to(self._param)

    @torch.no_grad()
    def forward(self, image: Tensor, context: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """(1, 3, H, W) image in [-1, 1] -> (1, C, h, w) features of the image resized to image_size."""
        size = (self.image_size, self.image_size)
        image = F.interpolate(image.to(self._param), size=size)  # nearest, as the reference
        latent = self.vae.encode(image) * self.vae.scaling_factor  # posterior mean (the reference's latent_dist.mode())
        latent = latent.expand(self.ensemble, -1, -1, -1)
        device = generator.device if generator is not None else latent.device
        noise = torch.randn(latent.shape, generator=generator, device=device).to(latent)
        noisy = math.sqrt(self.alpha_bar) * latent + math.sqrt(1 - self.alpha_bar) * noise
        features = self.unet.features(noisy, self.timestep, context.expand(self.ensemble, -1, -1), self.up_block)
        return features.mean(dim=0, keepdim=True)


def _points(points: Points, name: str, h: int, w: int) -> Tensor:
    """(N, 2) integer (x, y); the reference truncates to int before any use."""
    p = torch.as_tensor(np.asarray(points, dtype=np.float64))
    if p.ndim != 2 or p.shape[1] != 2 or len(p) == 0:
        raise ValueError(f"{name} points must be a non-empty (N, 2) list of (x, y), got shape {tuple(p.shape)}")
    outside = (p[:, 0] < 0) | (p[:, 0] >= w) | (p[:, 1] < 0) | (p[:, 1] >= h)
    if outside.any():
        raise ValueError(f"{name} points {p[outside].tolist()} lie outside the {w}x{h} image (x in [0, {w}), "
                         f"y in [0, {h}))")
    return p.long()


def search_masks(handles: Tensor, targets: Tensor, h: int, w: int) -> Tensor:
    """(N, H, W) bool: pixels closer than max(5, |t - h| / sqrt 2) to the handle or to the target."""
    handles, targets = handles.float(), targets.float()
    radius = ((targets - handles).norm(dim=1) * SEARCH_RADIUS_SCALE).clamp(min=SEARCH_RADIUS_MIN)[:, None, None]
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")

    def dist(p: Tensor) -> Tensor:
        return ((x - p[:, 0, None, None]) ** 2 + (y - p[:, 1, None, None]) ** 2).sqrt()

    return (dist(handles) < radius) | (dist(targets) < radius)


def _nearest_indices(n_in: int, n_out: int) -> Tensor:
    """Source index of every output position under F.interpolate(mode='nearest')."""
    ramp = torch.arange(n_in, dtype=torch.float32)[None, None, :, None]
    return F.interpolate(ramp, size=(n_out, 1))[0, 0, :, 0].long()


def match_points(src_features: Tensor, trg_features: Tensor, handles: Tensor, masks: Tensor) -> Tensor:
    """(N, 2) (x, y) in the edited image best matching each handle's feature, within its mask.

    Features are (1, C, h, w); the reference first resizes them (nearest) to the (H, W) of
    `masks`. Nearest resizing only repeats feature vectors, so the cosine similarities are computed
    at (h, w) and then repeated: the same result (ties included, argmax takes the first) without
    a (C, H, W) map per image (1280 x 512 x 512 floats for SD2.1).
    """
    device = src_features.device
    fh, fw = src_features.shape[2:]
    n, h, w = masks.shape
    handles, masks = handles.to(device), masks.to(device)
    iy, ix = _nearest_indices(fh, h).to(device), _nearest_indices(fw, w).to(device)
    src = F.normalize(src_features[0].float(), dim=0)  # (C, fh, fw) unit vectors
    trg = F.normalize(trg_features[0].float(), dim=0).flatten(1)  # (C, fh * fw)
    queries = src[:, iy[handles[:, 1]], ix[handles[:, 0]]]  # (C, N)
    similarity = (queries.t() @ trg).view(n, fh, fw)[:, iy][:, :, ix]  # (N, H, W)
    best = similarity.masked_fill(~masks, -torch.inf).flatten(1).argmax(dim=1)
    return torch.stack([best % w, best // w], dim=1)


@torch.no_grad()
def mean_distance(original: np.ndarray, edited: np.ndarray, handle_points: Points, target_points: Points,
                  prompt: Union[str, Tensor], dift: DIFT, generator: Optional[torch.Generator] = None) -> float:
    """Mean over points of |target - match| with x / W and y / H (RegionDrag's MD, before x100).

    Each image gets its own noise, drawn from `generator` in turn, as the reference draws from the
    global RNG: one shared draw would correlate the two feature maps position by position and bias
    matches toward not moving.
    """
    x0, x1 = image_to_tensor(original, "original"), image_to_tensor(edited, "edited")
    if x0.shape != x1.shape:
        raise ValueError(f"edited image is {x1.shape[3]}x{x1.shape[2]}, original {x0.shape[3]}x{x0.shape[2]}: "
                         "resize the edited image to the original's size (points are on the original)")
    h, w = x0.shape[2:]
    handles, targets = _points(handle_points, "handle", h, w), _points(target_points, "target", h, w)
    if len(handles) != len(targets):
        raise ValueError(f"{len(handles)} handle points but {len(targets)} target points")
    context = dift.context(prompt)
    matches = match_points(dift(x0, context, generator), dift(x1, context, generator), handles,
                           search_masks(handles, targets, h, w)).cpu()
    error = (targets - matches).float() / torch.tensor([w, h], dtype=torch.float32)
    return error.norm(dim=1).mean().item()
