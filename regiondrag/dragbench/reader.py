"""DragBench-SR / DragBench-DR on disk: find the samples, read each one's photo and annotations.

The data lies as::

    drag_data/
        dragbench-sr/<sample>/               100 samples, from SDE-Drag's DragBench-S
        dragbench-dr/<category>/<sample>/    205 samples, from DragDiffusion's DragBench(-D)

and every sample folder holds `original_image.png`, `meta_data.pkl` and one or more of the
drag annotations below (plus drawings of them, `user_drag*.png`, unused). The pickles hold
dicts (RegionDrag README; DragDiffusion drag_bench_evaluation/labeling_tool.py `save_all`;
RegionDrag region_utils/drag.py `get_meta_data`; Inpaint4Drag evaluation.py)::

    meta_data.pkl         {'prompt': str, 'points': [(x1, y1), (x2, y2), ...], 'mask': (H, W) uint8}
    meta_data_region.pkl  the same keys
    meta_data_i4p.pkl     {'points': [...], 'mask': (H, W) uint8}

Points are image pixels, handle, target, handle, target, ...; they may be tuples, lists or
numpy arrays. In `meta_data.pkl` they are the benchmark's sparse clicks and `mask` is the
editable area; in `meta_data_region.pkl` (the paper's release) they are the region version's
dense pairs, already mapped, at image scale (the reference divides them by 8 to index the
latent), and `mask` is the editable area; in `meta_data_i4p.pkl` (Inpaint4Drag's annotation,
what the data as published today holds instead) `mask` is one region and the points drag it.
All are read through `unpickle.restricted_load`.

The annotations, as `ANNOTATIONS` names them, become these edits:
- `region`: the region file's dense pairs, prompt and editable mask: the paper's evaluation
  (RegionDrag run_eval.py `get_drag_data`);
- `i4p`: a region + points input (`RegionPoints`: that region dragged by those pairs), with
  `meta_data.pkl`'s prompt and editable mask;
- `points`: `meta_data.pkl`'s own clicks as plain point pairs (`PointPairs`, a disk per point),
  prompt and editable mask.
Mean Distance always uses `meta_data.pkl`'s clicks, as the paper does. The reference edits
each photo at its own size (region_utils/cycle_sde.py `get_img_latent` is called without
`size`) and takes the dense pairs' latent cells as `// 8`.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
from PIL import Image

from ..config import ConfigError, check_prompt
from ..files import read_bounded
from ..image_io import LATENT_STRIDE, MAX_IMAGE_PIXELS, PathLike, load_image, working_size
from ..mapping import LatentSize, Mapping, dense_mapping, drop_out_of_bounds, latent_size_of
from ..regions import DEFAULT_POINT_RADIUS, PointPairs, Region, RegionError, RegionPoints
from .unpickle import MAX_PICKLE_BYTES, UnsafePickleError, restricted_load

SUBSETS = {"sr": "dragbench-sr", "dr": "dragbench-dr"}  # our short names -> the release's folder names
SUBSET_TITLES = {"sr": "DragBench-SR", "dr": "DragBench-DR"}
CATEGORY_LEVELS = {"sr": 0, "dr": 1}  # folders between the subset folder and a sample's folder
RELEASE_SAMPLES = {"sr": 100, "dr": 205}  # samples per subset in the release (RegionDrag paper, README)
IMAGE_FILE = "original_image.png"
POINTS_FILE = "meta_data.pkl"
REGION_FILE = "meta_data_region.pkl"
INPAINT4DRAG_FILE = "meta_data_i4p.pkl"  # what the data as published today holds (RegionDrag issue #6)
# annotation kind -> its file, in the order auto-detection prefers them
ANNOTATIONS = {"region": REGION_FILE, "i4p": INPAINT4DRAG_FILE, "points": POINTS_FILE}
AUTO = "auto"
ANNOTATION_CHOICES = (AUTO, *ANNOTATIONS)


class DatasetError(ValueError):
    """A dataset folder that is not in the DragBench-SR/DR layout; the message says what is missing."""


@dataclass(frozen=True, eq=False)
class DragBenchMeta:
    prompt: str
    mask: np.ndarray    # (H, W) bool, True = editable
    handle: np.ndarray  # (N, 2) float64 (x, y) image pixels
    target: np.ndarray  # (N, 2)


def load_pickle(path: Path) -> Any:
    """A DragBench pickle's contents, through the restricted unpickler; a RegionError if unreadable."""
    data = read_bounded(path, MAX_PICKLE_BYTES, "DragBench metadata", RegionError, "a metadata file holds")
    try:
        return restricted_load(data)
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise RegionError(f"cannot read DragBench metadata {path}: {e}") from None


def read_meta_data(path: PathLike) -> DragBenchMeta:
    """Read `meta_data.pkl` or `meta_data_region.pkl` safely and check its fields."""
    path = Path(path)
    meta = load_pickle(path)
    if not isinstance(meta, dict) or not {"prompt", "points", "mask"} <= set(meta):
        found = sorted(map(str, meta)) if isinstance(meta, dict) else type(meta).__name__
        raise RegionError(f"{path}: expected a dict with keys 'prompt', 'points', 'mask'; found {found}")
    if not isinstance(meta["prompt"], str):
        raise RegionError(f"{path}: 'prompt' must be a string, got {type(meta['prompt']).__name__}")
    try:
        check_prompt(meta["prompt"])
    except ConfigError as e:
        raise RegionError(f"{path}: {e}") from None
    try:
        points = np.asarray(meta["points"], np.float64)  # (2N, 2)
        paired = points.ndim == 2 and points.shape[1] == 2 and len(points) % 2 == 0 and len(points) > 0
    except (TypeError, ValueError, OverflowError):
        paired = False
    if not paired:
        raise RegionError(f"{path}: 'points' must be a non-empty list of (x, y) points, handle and "
                          f"target alternating; got {meta['points']!r:.80}")
    # Pairs off the latent grid are dropped (as the reference does); a point farther out than any photo's
    # side (MAX_IMAGE_PIXELS: a photo one pixel tall) is a broken file, not a pair to drop.
    bad = ~(np.isfinite(points) & (np.abs(points) <= MAX_IMAGE_PIXELS)).all(1)
    if bad.any():
        i = int(np.argmax(bad))
        raise RegionError(f"{path}: 'points' must be pixel coordinates; point {i} ({points[i, 0]:g}, "
                          f"{points[i, 1]:g}) is not (beyond {MAX_IMAGE_PIXELS} pixels, or not finite)")
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


def read_i4p(path: PathLike) -> RegionPoints:
    """Read `meta_data_i4p.pkl` safely: its region and the point pairs that drag it (checked when mapped)."""
    path = Path(path)
    meta = load_pickle(path)
    if not isinstance(meta, dict) or not {"points", "mask"} <= set(meta):
        found = sorted(meta) if isinstance(meta, dict) else type(meta).__name__
        raise RegionError(f"{path}: expected Inpaint4Drag's dict with keys 'points', 'mask'; found {found}")
    try:
        points = np.asarray(meta["points"], np.float64)  # (2N, 2)
    except (TypeError, ValueError):
        points = np.empty(0)
    if points.ndim != 2 or points.shape[1:] != (2,) or len(points) % 2 or not len(points):
        raise RegionError(f"{path}: 'points' must be a non-empty list of (x, y) points, handle and target "
                          f"alternating; got {meta['points']!r:.80}")
    if np.ndim(meta["mask"]) != 2:
        raise RegionError(f"{path}: 'mask' must be an (H, W) region mask, got shape {np.shape(meta['mask'])}")
    return RegionPoints(meta["mask"], points[0::2], points[1::2])


@dataclass(frozen=True, eq=False)
class DragInput:
    """What one annotation of a sample gives the edit (see the module's docstring)."""
    annotation: str                         # a key of ANNOTATIONS
    prompt: str
    mask: np.ndarray                        # (H, W) bool editable area
    regions: Optional[list[Region]] = None  # i4p, points: region inputs in photo pixels
    dense: Optional[DragBenchMeta] = None   # region: the release's precomputed dense pairs

    def edit_arguments(self, photo_size: tuple[int, int], work_size: tuple[int, int]) -> dict:
        """`regions=` or `mapping=` of RegionDragPipeline.edit for a photo edited at work_size."""
        if self.dense is not None:
            return {"mapping": region_mapping(self.dense, photo_size, work_size)}
        return {"regions": self.regions}

    def mapping(self, photo_size: tuple[int, int], work_size: tuple[int, int]) -> Mapping:
        """The latent pairs the edit moves: its "equivalent point pairs"."""
        if self.dense is not None:
            return region_mapping(self.dense, photo_size, work_size)
        return dense_mapping(self.regions, photo_size, latent_size_of(work_size))


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
        """The paper's region file: prompt, editable mask, dense pairs (image pixels)."""
        return read_meta_data(self.folder / REGION_FILE)

    def point_meta(self) -> DragBenchMeta:
        """What Mean Distance uses: prompt and the sparse handle/target points (image pixels)."""
        return read_meta_data(self.folder / POINTS_FILE)

    def annotations(self) -> list[str]:
        """The annotation kinds this sample has files for, in auto-detection's order."""
        return [kind for kind, file in ANNOTATIONS.items() if (self.folder / file).is_file()]

    def annotation(self, requested: str = AUTO) -> str:
        """`requested`, or with "auto" the first kind the sample has: region, else i4p, else points."""
        if requested == AUTO:
            return self.annotations()[0]  # meta_data.pkl is always there: find_samples checked
        if requested not in ANNOTATIONS:
            raise DatasetError(f"unknown annotation {requested!r}; choose one of {', '.join(ANNOTATION_CHOICES)}")
        if requested not in self.annotations():
            raise DatasetError(f"{self.folder}: no {ANNOTATIONS[requested]} for --annotation {requested}; "
                               f"it has {', '.join(self.annotations())} (or choose --annotation auto)")
        return requested

    def drag_input(self, annotation: str, point_radius: float = DEFAULT_POINT_RADIUS) -> DragInput:
        """The edit's inputs from one annotation kind (not "auto": resolve it with `annotation` first)."""
        if annotation == "region":
            meta = self.region_meta()
            return DragInput(annotation, meta.prompt, meta.mask, dense=meta)
        points = self.point_meta()
        if annotation == "i4p":
            regions = [read_i4p(self.folder / INPAINT4DRAG_FILE)]
        else:
            regions = [PointPairs(points.handle, points.target, radius=point_radius)]
        return DragInput(annotation, points.prompt, points.mask, regions=regions)

    def pair_counts(self, annotation: str = AUTO) -> tuple[int, int]:
        """(latent pairs the annotation moves at the photo's size: its "equivalent point pairs",
        sparse pairs in the point file)."""
        photo = self.image()
        work = working_size(*photo.size, max(photo.size))
        moved = self.drag_input(self.annotation(annotation)).mapping(photo.size, work)
        return len(moved[0]), len(self.point_meta().handle)


def subset_folder(root: PathLike, subset: str) -> Path:
    """`root/dragbench-sr` (or -dr); `root` may also be that subset folder itself."""
    if subset not in SUBSETS:
        raise DatasetError(f"unknown subset {subset!r}; choose one of {', '.join(SUBSETS)}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    folder = root if root.name == SUBSETS[subset] else root / SUBSETS[subset]
    if not folder.is_dir():
        raise DatasetError(f"no {SUBSETS[subset]}/ folder in {root}; fetch the data there "
                           f"(python -m regiondrag.dragbench.fetch) or choose the subsets it has")
    return folder


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def sample_folders(root: PathLike, subset: str) -> list[Path]:
    """The folders at sample depth under root's subset folder, sorted by name (unchecked)."""
    folders = [subset_folder(root, subset)]
    for _ in range(CATEGORY_LEVELS[subset] + 1):
        folders = [sub for f in folders for sub in _subfolders(f)]
    return folders


def find_samples(root: PathLike, subsets: Iterable[str] = tuple(SUBSETS), limit: Optional[int] = None,
                 annotations: Iterable[str] = ()) -> list[Sample]:
    """Every sample of the given subsets, sorted by name; `limit`: the first N of each subset.

    All files are checked up front (the photo, the point file, the file of each of
    `annotations` but "auto"), so a long run does not stop at its 200th sample.
    """
    samples = []
    for subset in subsets:
        top = subset_folder(root, subset)
        folders = sample_folders(root, subset)[:limit]
        if not folders:
            raise DatasetError(f"{top} holds no sample folders (expected {SUBSETS[subset]}/"
                               f"{'<category>/' * CATEGORY_LEVELS[subset]}<sample>/{IMAGE_FILE})")
        for folder in folders:
            missing = [f for f in (IMAGE_FILE, POINTS_FILE) if not (folder / f).is_file()]
            if missing:
                raise DatasetError(f"{folder}: missing {', '.join(missing)}")
            sample = Sample(subset, folder.relative_to(top).as_posix(), folder)
            for annotation in set(annotations):
                sample.annotation(annotation)  # present, or a DatasetError naming the sample
            samples.append(sample)
    return samples


def find_release(folder: PathLike, depth: int = 2) -> Optional[Path]:
    """`folder`, or the first folder at most `depth` levels below it, that holds both subset folders."""
    folder = Path(folder)
    if all((folder / name).is_dir() for name in SUBSETS.values()):
        return folder
    if depth == 0 or not folder.is_dir():
        return None
    return next(filter(None, (find_release(sub, depth - 1) for sub in _subfolders(folder))), None)


def check_release(root: PathLike) -> list[Sample]:
    """Every sample of a complete release (RELEASE_SAMPLES per subset, all files there), or a DatasetError."""
    samples = find_samples(root)
    for subset, expected in RELEASE_SAMPLES.items():
        found = sum(s.subset == subset for s in samples)
        if found != expected:
            raise DatasetError(f"{Path(root) / SUBSETS[subset]} holds {found} samples, the release has {expected}: "
                               "an incomplete or different copy; fetch it again into an empty folder")
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
