"""DragBench metrics: LPIPS, Mean Distance under the two protocols the literature uses, and DAI.

    d = lpips_distance(original, edited, load_lpips())
    dift = DIFT(unet, vae, text_encoder)
    md = mean_distance(original, edited, handles, targets, prompt, dift, generator)          # RegionDrag's
    px = point_distances(original, edited, handles, targets, prompt, dift, DRAGDIFFUSION, generator)
    dai_by_radius = dai(original, edited, handles, targets)                                 # GoodDrag's

Images are uint8 (H, W, 3) RGB arrays, points (x, y) pixel positions, truncated to integers (as
both reference scorers do; DragBench's clicks are integers).

Mean Distance (MD): where the content of each handle point ended up in the edited image, found by
matching DIFT features (Tang et al. 2023: SD2.1, one UNet call at t = 261 on 8 noised copies,
features after the second up-block, averaged), and how far that is from the target point. Two
protocols share that idea and differ in every detail, so their numbers cannot be compared:

- `REGIONDRAG` (RegionDrag's `region_utils/evaluator.py` `compute_distance`, its paper's Table 1):
  both images resized (nearest) to 768x768; latents the VAE posterior's mean; features resized
  (nearest) back to the photo's size; the handle's feature matched by cosine similarity only inside
  the disks of radius max(5, |target - handle| / sqrt 2) around the handle and the target; the
  distance measured with x / W and y / H; a sample's MD is the mean over its points, a benchmark's
  the mean over samples; printed x100.
- `DRAGDIFFUSION` (DragDiffusion's `drag_bench_evaluation/run_eval_point_matching.py` with its
  `dift_sd.py`, used by GoodDrag, FastDrag, FlowDrag and most drag papers since 2024): DIFT on each
  image at its own size; latents a posterior sample per noised copy (`latent_dist.sample()`);
  features upsampled bilinearly to the photo's size; the handle's feature matched by cosine
  similarity over the whole edited image; the Euclidean distance to the target in pixels; a
  benchmark's MD the mean over all points of all its samples (not of per-sample means).
Both scorers draw DIFT's noise from the global RNG seeded once per run; we seed a generator per
sample (and protocol), so a score does not depend on which samples or metrics ran before it.

DAI (GoodDrag's Dragging Accuracy Index, Zhang et al. 2024, arXiv 2404.07206, section 5): for patch
radius r (the paper's gamma: 1, 5, 10, 20), the mean over a sample's points of
||patch(edited, target, r) - patch(original, handle, r)||^2 / (2r + 1)^2, images in [0, 1], the
squared norm over the patch's pixels and RGB; a benchmark's DAI is the mean over samples. The paper
leaves patches at the image border undefined; here the offsets where either patch leaves its image
are dropped and the rest averaged. GoodDrag's released `evaluation/compute_DAI.py` differs: it
divides the sum by the number of points twice (its numbers are DAI / N), and cuts border patches by
numpy slicing (a patch past the top or left edge comes out empty or misaligned). We follow the paper.

LPIPS: AlexNet v0.1 on both images resized (bilinear) to 224x224, as both reference scorers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
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
FEATURE_CHUNK = 64  # channels upsampled bilinearly at a time: SD2.1's 1280 at a 512x512 photo would be 1.3 GB
DAI_RADII = (1, 5, 10, 20)  # GoodDrag's patch radii (its gamma)


@dataclass(frozen=True)
class MeanDistanceProtocol:
    """How Mean Distance is computed (the module docstring defines both protocols and their sources)."""
    name: str
    dift_square: bool        # DIFT sees the images resized (nearest) to its square image_size; False: as they are
    sample_posterior: bool   # DIFT's latents: a VAE posterior sample per noised copy; False: the posterior mean
    feature_resize: str      # how features are resized to the photo: "nearest" or "bilinear"
    whole_image: bool        # the match is searched over the whole edited image; False: disks around handle, target
    relative: bool           # distances with x / W and y / H; False: pixels
    pooled: bool             # a benchmark's score: mean over all its points; False: mean of per-sample means
    scale: float             # reported as score x scale
    label: str               # its table header, with protocol and unit


REGIONDRAG = MeanDistanceProtocol("regiondrag", dift_square=True, sample_posterior=False, feature_resize="nearest",
                                  whole_image=False, relative=True, pooled=False, scale=100,
                                  label="MD×100 (regiondrag)")
DRAGDIFFUSION = MeanDistanceProtocol("dragdiffusion", dift_square=False, sample_posterior=True,
                                     feature_resize="bilinear", whole_image=True, relative=False, pooled=True, scale=1,
                                     label="MD px (dragdiffusion)")

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
    def forward(self, image: Tensor, context: Tensor, generator: Optional[torch.Generator] = None, *,
                square: bool = True, sample_posterior: bool = False) -> Tensor:
        """(1, 3, H, W) image in [-1, 1] -> (1, C, h, w) features of the image resized (nearest) to
        image_size x image_size (`square`, RegionDrag's) or as it is; the latents are the posterior's mean
        (RegionDrag's `mode()`) or, `sample_posterior`, a sample per copy (DragDiffusion's `sample()`)."""
        image = image.to(self._param)
        if square:
            image = F.interpolate(image, size=(self.image_size, self.image_size))  # nearest, as the reference
        if sample_posterior:  # the draws come first, as the reference encodes before it noises
            mean, logvar = (m.expand(self.ensemble, -1, -1, -1) for m in self.vae.encode_moments(image))
            latent = self.vae.sample(mean, logvar, generator) * self.vae.scaling_factor
        else:
            latent = (self.vae.encode(image) * self.vae.scaling_factor).expand(self.ensemble, -1, -1, -1)
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


def _nearest_similarity(src_features: Tensor, trg_features: Tensor, handles: Tensor, size: tuple[int, int]) -> Tensor:
    """(N, H, W) cosine similarity of each handle's feature with every pixel's, features resized (nearest)
    to `size`. Nearest resizing only repeats feature vectors, so the similarities are computed at the
    features' (h, w) and then repeated: the same result (ties included) without a (C, H, W) map per image."""
    device = src_features.device
    fh, fw = src_features.shape[2:]
    iy, ix = _nearest_indices(fh, size[0]).to(device), _nearest_indices(fw, size[1]).to(device)
    src = F.normalize(src_features[0].float(), dim=0)  # (C, fh, fw) unit vectors
    trg = F.normalize(trg_features[0].float(), dim=0).flatten(1)  # (C, fh * fw)
    queries = src[:, iy[handles[:, 1]], ix[handles[:, 0]]]  # (C, N)
    return (queries.t() @ trg).view(len(handles), fh, fw)[:, iy][:, :, ix]


def _bilinear_similarity(src_features: Tensor, trg_features: Tensor, handles: Tensor,
                         size: tuple[int, int]) -> Tensor:
    """(N, H, W) cosine similarity of each handle's feature with every pixel's, both feature maps upsampled
    bilinearly to `size` (DragDiffusion's F.interpolate). Dot products and squared norms are sums over
    channels, so FEATURE_CHUNK channels are upsampled at a time."""
    def chunks(features: Tensor):
        for chunk in features[0].float().split(FEATURE_CHUNK):
            yield F.interpolate(chunk[None], size=size, mode="bilinear")[0]  # (c, H, W)

    queries = torch.cat([up[:, handles[:, 1], handles[:, 0]] for up in chunks(src_features)])  # (C, N)
    dots = queries.new_zeros(len(handles), *size)
    squares = queries.new_zeros(size)
    for q, up in zip(queries.split(FEATURE_CHUNK), chunks(trg_features)):
        dots += torch.einsum("cn,chw->nhw", q, up)
        squares += up.square().sum(dim=0)
    return dots / (queries.norm(dim=0)[:, None, None] * squares.sqrt()).clamp(min=1e-8)  # nn.CosineSimilarity's eps


FEATURE_RESIZES = {"nearest": _nearest_similarity, "bilinear": _bilinear_similarity}


def match_points(src_features: Tensor, trg_features: Tensor, handles: Tensor, masks: Tensor,
                 resize: str = "nearest") -> Tensor:
    """(N, 2) (x, y) in the edited image best matching each handle's feature (cosine), within its mask.

    Features are (1, C, h, w), resized (`resize`: "nearest" or "bilinear") to the (H, W) of `masks`
    before matching, as the reference scorers do; argmax takes the first of equal maxima, as theirs.
    """
    n, h, w = masks.shape
    handles = handles.to(src_features.device)
    similarity = FEATURE_RESIZES[resize](src_features, trg_features, handles, (h, w))
    best = similarity.masked_fill(~masks.to(similarity.device), -torch.inf).flatten(1).argmax(dim=1)
    return torch.stack([best % w, best // w], dim=1)


def _image_pair(original: np.ndarray, edited: np.ndarray) -> tuple[Tensor, Tensor]:
    x0, x1 = image_to_tensor(original, "original"), image_to_tensor(edited, "edited")
    if x0.shape != x1.shape:
        raise ValueError(f"edited image is {x1.shape[3]}x{x1.shape[2]}, original {x0.shape[3]}x{x0.shape[2]}: "
                         "resize the edited image to the original's size (points are on the original)")
    return x0, x1


def _point_pairs(handle_points: Points, target_points: Points, h: int, w: int) -> tuple[Tensor, Tensor]:
    handles, targets = _points(handle_points, "handle", h, w), _points(target_points, "target", h, w)
    if len(handles) != len(targets):
        raise ValueError(f"{len(handles)} handle points but {len(targets)} target points")
    return handles, targets


@torch.no_grad()
def point_distances(original: np.ndarray, edited: np.ndarray, handle_points: Points, target_points: Points,
                    prompt: Union[str, Tensor], dift: DIFT, protocol: MeanDistanceProtocol = REGIONDRAG,
                    generator: Optional[torch.Generator] = None) -> Tensor:
    """(N,) distance of each target point to where its handle's content was found, under `protocol`
    (its unit: a fraction of the image's size, or pixels; not yet x its scale).

    Each image gets its own noise, drawn from `generator` in turn, as the references draw from the
    global RNG: one shared draw would correlate the two feature maps position by position and bias
    matches toward not moving.
    """
    x0, x1 = _image_pair(original, edited)
    h, w = x0.shape[2:]
    handles, targets = _point_pairs(handle_points, target_points, h, w)
    context = dift.context(prompt)
    options = dict(square=protocol.dift_square, sample_posterior=protocol.sample_posterior)
    features = [dift(x, context, generator, **options) for x in (x0, x1)]
    masks = torch.ones(len(handles), h, w, dtype=torch.bool) if protocol.whole_image else \
        search_masks(handles, targets, h, w)
    error = (targets - match_points(*features, handles, masks, protocol.feature_resize).cpu()).float()
    if protocol.relative:
        error = error / torch.tensor([w, h], dtype=torch.float32)
    return error.norm(dim=1)


def mean_distance(original: np.ndarray, edited: np.ndarray, handle_points: Points, target_points: Points,
                  prompt: Union[str, Tensor], dift: DIFT, generator: Optional[torch.Generator] = None,
                  protocol: MeanDistanceProtocol = REGIONDRAG) -> float:
    """A sample's Mean Distance: the mean of its point_distances (RegionDrag's MD before x100 by default)."""
    return point_distances(original, edited, handle_points, target_points, prompt, dift, protocol,
                           generator).mean().item()


def dai(original: np.ndarray, edited: np.ndarray, handle_points: Points, target_points: Points,
        radii: Sequence[int] = DAI_RADII) -> dict[int, float]:
    """GoodDrag's Dragging Accuracy Index of a sample per patch radius (module docstring): how far the
    edited image's patch at each target is from the original's patch at its handle."""
    _image_pair(original, edited)  # the checks
    h, w = original.shape[:2]
    handles, targets = _point_pairs(handle_points, target_points, h, w)
    before, after = original.astype(np.float64) / 255, edited.astype(np.float64) / 255
    scores = {}
    for r in radii:
        total = 0.0
        for (hx, hy), (tx, ty) in zip(handles.tolist(), targets.tolist()):
            # the offsets in [-r, r]^2 at which both the handle's and the target's pixel lie in the image
            top, bottom = max(-r, -hy, -ty), min(r, h - 1 - hy, h - 1 - ty)
            left, right = max(-r, -hx, -tx), min(r, w - 1 - hx, w - 1 - tx)
            a = before[hy + top:hy + bottom + 1, hx + left:hx + right + 1]
            b = after[ty + top:ty + bottom + 1, tx + left:tx + right + 1]
            total += np.square(b - a).sum() / (a.shape[0] * a.shape[1])
        scores[r] = total / len(handles)
    return scores
