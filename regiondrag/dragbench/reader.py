"""DragBench-SR / DragBench-DR on disk: find the samples, read each one's photo and pickles.

The RegionDrag release (README "DragBench-SR & DragBench-DR") lays the data out as::

    drag_data/
        dragbench-sr/<sample>/               100 samples, from SDE-Drag's DragBench-S
        dragbench-dr/<category>/<sample>/    205 samples, from DragDiffusion's DragBench(-D)

and every sample folder holds `original_image.png`, `user_drag.png` (a drawing of the
drag, unused), `meta_data.pkl` and `meta_data_region.pkl`. Both pickles hold one dict
(RegionDrag README; DragDiffusion drag_bench_evaluation/labeling_tool.py `save_all`;
RegionDrag region_utils/drag.py `get_meta_data`)::

    {'prompt': str,
     'points': [(x1, y1), (x2, y2), ...],  # image pixels: handle, target, handle, target, ...
     'mask':   (H, W) uint8 array}         # the editable area, non-zero = editable

In `meta_data.pkl` the points are the benchmark's sparse handle/target clicks; in
`meta_data_region.pkl` they are the region version's dense pairs, already mapped, at image
scale (the reference divides them by 8 to index the latent). Points may be tuples, lists
or numpy arrays. Both are read through `unpickle.restricted_load`.

The reference evaluation (RegionDrag run_eval.py) edits with the *region* file (its
`get_drag_data` reads meta_data_region.pkl: prompt, editable mask and dense pairs) and
measures Mean Distance with the *point* file (meta_data.pkl: the sparse handle/target
clicks and its prompt). It edits each photo at its own size (region_utils/cycle_sde.py
`get_img_latent` is called without `size`) and takes the pairs' latent cells as `// 8`.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
from PIL import Image

from ..image_io import LATENT_STRIDE, PathLike, load_image
from ..mapping import LatentSize, Mapping, drop_out_of_bounds, latent_size_of
from ..regions import RegionError
from .unpickle import MAX_PICKLE_BYTES, UnsafePickleError, restricted_load

SUBSETS = {"sr": "dragbench-sr", "dr": "dragbench-dr"}  # our short names -> the release's folder names
SUBSET_TITLES = {"sr": "DragBench-SR", "dr": "DragBench-DR"}
CATEGORY_LEVELS = {"sr": 0, "dr": 1}  # folders between the subset folder and a sample's folder
IMAGE_FILE = "original_image.png"
POINTS_FILE = "meta_data.pkl"
REGION_FILE = "meta_data_region.pkl"
# Inpaint4Drag's region file: the shared Google Drive archive was reported (RegionDrag issue #6)
# to have been replaced by Inpaint4Drag's copy of the data, which may carry this instead.
INPAINT4DRAG_FILE = "meta_data_i4p.pkl"



class DatasetError(ValueError):
    """A dataset folder that is not in the DragBench-SR/DR layout; the message says what is missing."""


@dataclass(frozen=True, eq=False)
class DragBenchMeta:
    prompt: str
    mask: np.ndarray    # (H, W) bool, True = editable
    handle: np.ndarray  # (N, 2) float64 (x, y) image pixels
    target: np.ndarray  # (N, 2)


def read_meta_data(path: PathLike) -> DragBenchMeta:
    """Read `meta_data.pkl` or `meta_data_region.pkl` safely and check its fields."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_PICKLE_BYTES:
            raise UnsafePickleError(f"{path.stat().st_size} bytes is more than a metadata file holds "
                                    f"(at most {MAX_PICKLE_BYTES} are read)")
        meta = restricted_load(path.read_bytes())
    except (OSError, pickle.UnpicklingError) as e:
        raise RegionError(f"cannot read DragBench metadata {path}: {getattr(e, 'strerror', None) or e}") from None
    if not isinstance(meta, dict) or not {"prompt", "points", "mask"} <= set(meta):
        found = sorted(map(str, meta)) if isinstance(meta, dict) else type(meta).__name__
        raise RegionError(f"{path}: expected a dict with keys 'prompt', 'points', 'mask'; found {found}")
    if not isinstance(meta["prompt"], str):
        raise RegionError(f"{path}: 'prompt' must be a string, got {type(meta['prompt']).__name__}")
    try:
        points = np.asarray(meta["points"], np.float64)  # (2N, 2)
        paired = points.ndim == 2 and points.shape[1] == 2 and len(points) % 2 == 0 and len(points) > 0
    except (TypeError, ValueError, OverflowError):
        paired = False
    if not paired:
        raise RegionError(f"{path}: 'points' must be a non-empty list of (x, y) points, handle and "
                          f"target alternating; got {meta['points']!r:.80}")
    if not np.isfinite(points).all():
        raise RegionError(f"{path}: 'points' must be finite pixel coordinates; point "
                          f"{int(np.argmin(np.isfinite(points).all(1)))} is not")
    try:
        mask = np.asarray(meta["mask"])
    except (TypeError, ValueError):
        mask = np.empty(0)
    if mask.ndim != 2 or mask.dtype.kind not in "biuf" or 0 in mask.shape:
        raise RegionError(f"{path}: 'mask' must be an (H, W) array of numbers, got "
                          f"{mask.dtype} of shape {mask.shape}")
    if not mask.any():
        raise RegionError(f"{path}: 'mask' is empty (no editable pixel); mark where the edit may change the photo")
    return DragBenchMeta(meta["prompt"], mask != 0, points[0::2], points[1::2])


def latent_mapping(meta: DragBenchMeta, latent_size: LatentSize) -> Mapping:
    """A region version's dense pairs as latent (handle_xy, target_xy): floor division by 8,
    as the reference's `source // 8`, dropping pairs off the latent grid."""
    return drop_out_of_bounds(meta.handle.astype(np.int64) // LATENT_STRIDE,
                              meta.target.astype(np.int64) // LATENT_STRIDE, latent_size)


@dataclass(frozen=True)
class Sample:
    subset: str   # "sr" or "dr"
    name: str     # path below the subset folder: "art_0", or "animals/JH_2023-09-14-1820-16" in DR
    folder: Path

    @property
    def key(self) -> str:
        """Unique across subsets, stable across runs: what results and saved edits are keyed by."""
        return f"{self.subset}/{self.name}"

    @property
    def image_path(self) -> Path:
        return self.folder / IMAGE_FILE

    def image(self) -> Image.Image:
        return load_image(self.image_path)

    def region_meta(self) -> DragBenchMeta:
        """What the edit uses: prompt, editable mask, dense pairs (image pixels)."""
        return read_meta_data(self.folder / REGION_FILE)

    def point_meta(self) -> DragBenchMeta:
        """What Mean Distance uses: prompt and the sparse handle/target points (image pixels)."""
        return read_meta_data(self.folder / POINTS_FILE)

    def pair_counts(self) -> tuple[int, int]:
        """(dense pairs in the region file: its "equivalent point pairs", sparse pairs in the point file)."""
        return len(self.region_meta().handle), len(self.point_meta().handle)


def subset_folder(root: PathLike, subset: str) -> Path:
    """`root/dragbench-sr` (or -dr); `root` may also be that subset folder itself."""
    if subset not in SUBSETS:
        raise DatasetError(f"unknown subset {subset!r}; choose one of {', '.join(SUBSETS)}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    folder = root if root.name == SUBSETS[subset] else root / SUBSETS[subset]
    if not folder.is_dir():
        raise DatasetError(f"no {SUBSETS[subset]}/ folder in {root}; unpack the RegionDrag data there "
                           f"or choose the subsets it has")
    return folder


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _missing_files(folder: Path) -> list[str]:
    return [f for f in (IMAGE_FILE, POINTS_FILE, REGION_FILE) if not (folder / f).is_file()]


def find_samples(root: PathLike, subsets: Iterable[str] = tuple(SUBSETS), limit: Optional[int] = None) -> list[Sample]:
    """Every sample of the given subsets, sorted by name; `limit`: the first N of each subset.

    All files are checked up front, so a long run does not stop at its 200th sample.
    """
    samples = []
    for subset in subsets:
        top = subset_folder(root, subset)
        folders = [top]
        for _ in range(CATEGORY_LEVELS[subset]):
            folders = [sub for f in folders for sub in _subfolders(f)]
        folders = [sub for f in folders for sub in _subfolders(f)][:limit]
        if not folders:
            raise DatasetError(f"{top} holds no sample folders (expected {SUBSETS[subset]}/"
                               f"{'<category>/' * CATEGORY_LEVELS[subset]}<sample>/{IMAGE_FILE})")
        for folder in folders:
            missing = _missing_files(folder)
            if missing:
                hint = (f"; it has {INPAINT4DRAG_FILE}, i.e. Inpaint4Drag's version of the data, not RegionDrag's"
                        if REGION_FILE in missing and (folder / INPAINT4DRAG_FILE).is_file() else "")
                raise DatasetError(f"{folder}: missing {', '.join(missing)}{hint}")
            samples.append(Sample(subset, folder.relative_to(top).as_posix(), folder))
    return samples


def region_mapping(meta: DragBenchMeta, photo_size: tuple[int, int], work_size: tuple[int, int]) -> Mapping:
    """A region file's dense pairs (photo pixels) as latent pairs of the working size.

    At the photo's own size this is the reference's `// 8`; otherwise the pairs are scaled first.
    """
    if meta.mask.shape != photo_size[::-1]:
        raise DatasetError(f"the region file's mask is {meta.mask.shape[1]}x{meta.mask.shape[0]} but the photo "
                           f"is {photo_size[0]}x{photo_size[1]}")
    if work_size != photo_size:
        scale = np.array(work_size) / np.array(photo_size)
        meta = DragBenchMeta(meta.prompt, meta.mask, meta.handle * scale, meta.target * scale)
    return latent_mapping(meta, latent_size_of(work_size))
