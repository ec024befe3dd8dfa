"""DragBench metadata: `meta_data.pkl` (points) and `meta_data_region.pkl` (regions).

Both files of a DragBench-SR/DR sample folder are pickles of one dict (RegionDrag README;
DragDiffusion drag_bench_evaluation/labeling_tool.py `save_all`; RegionDrag
region_utils/drag.py `get_meta_data`)::

    {'prompt': str,
     'points': [(x1, y1), (x2, y2), ...],  # image pixels: handle, target, handle, target, ...
     'mask':   (H, W) uint8 array}         # the editable area, non-zero = editable

In `meta_data.pkl` the points are the benchmark's sparse handle/target clicks; in
`meta_data_region.pkl` they are the region version's dense pairs, already mapped, at image
scale (the reference divides them by 8 to index the latent). Points may be tuples, lists
or numpy arrays.

Pickles can run code when loaded, so they are read by an unpickler that only builds plain
Python values and numpy arrays, and refuses anything else by name.
"""
from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

from .image_io import LATENT_STRIDE
from .mapping import LatentSize, Mapping, drop_out_of_bounds
from .regions import RegionError

# The globals a pickle of dicts, lists, strings, numbers and numpy arrays refers to, by the
# numpy >= 2 names (numpy 1 wrote `numpy.core`, read as `numpy._core`): arrays are rebuilt
# by `_reconstruct` (protocols <= 4) or `_frombuffer` (5); protocol 2 spells bytes as
# `_codecs.encode`.
ALLOWED_GLOBALS = frozenset({
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"), ("builtins", "set"), ("builtins", "frozenset"),
})


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle that refers to something other than plain values and numpy arrays."""


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        canonical = module.replace("numpy.core", "numpy._core", 1) if module.startswith("numpy.core") else module
        if (canonical, name) not in ALLOWED_GLOBALS:
            raise UnsafePickleError(f"refusing to load {module}.{name}: only plain values and numpy "
                                    f"arrays are allowed in DragBench metadata")
        try:
            return super().find_class(canonical, name)
        except ModuleNotFoundError:  # numpy 1 has no numpy._core
            return super().find_class(module, name)


def restricted_load(data: bytes):
    """pickle.loads that builds only plain values and numpy arrays."""
    return _RestrictedUnpickler(io.BytesIO(data)).load()


@dataclass(frozen=True, eq=False)
class DragBenchMeta:
    prompt: str
    mask: np.ndarray    # (H, W) bool, True = editable
    handle: np.ndarray  # (N, 2) float64 (x, y) image pixels
    target: np.ndarray  # (N, 2)


def read_meta_data(path: Union[str, os.PathLike]) -> DragBenchMeta:
    """Read `meta_data.pkl` or `meta_data_region.pkl` safely and check its fields."""
    path = Path(path)
    try:
        meta = restricted_load(path.read_bytes())
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise RegionError(f"cannot read DragBench metadata {path}: {e}") from None
    if not isinstance(meta, dict) or not {"prompt", "points", "mask"} <= set(meta):
        found = sorted(meta) if isinstance(meta, dict) else type(meta).__name__
        raise RegionError(f"{path}: expected a dict with keys 'prompt', 'points', 'mask'; found {found}")
    try:
        points = np.asarray(meta["points"], np.float64)  # (2N, 2)
        paired = points.ndim == 2 and points.shape[1] == 2 and len(points) % 2 == 0 and len(points) > 0
    except (TypeError, ValueError):
        paired = False
    if not paired:
        raise RegionError(f"{path}: 'points' must be a non-empty list of (x, y) points, handle and "
                         f"target alternating; got {meta['points']!r:.80}")
    mask = np.asarray(meta["mask"])
    if mask.ndim != 2:
        raise RegionError(f"{path}: 'mask' must be an (H, W) array, got shape {mask.shape}")
    return DragBenchMeta(str(meta["prompt"]), mask != 0, points[0::2], points[1::2])


def latent_mapping(meta: DragBenchMeta, latent_size: LatentSize) -> Mapping:
    """A region version's dense pairs as latent (handle_xy, target_xy): floor division by 8,
    as the reference's `source // 8`, dropping pairs off the latent grid."""
    return drop_out_of_bounds(meta.handle.astype(np.int64) // LATENT_STRIDE,
                              meta.target.astype(np.int64) // LATENT_STRIDE, latent_size)
