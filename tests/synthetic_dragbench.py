"""A tiny DragBench-SR/DR on disk, with every annotation file the releases have, for tests.

    samples = write_synthetic_dragbench(tmp_path)    # {key: SyntheticSample}, key "sr/art_0" etc.

Two SR samples and two DR samples in two categories, 64x64 photos (`counts` writes more, the
specs repeated under new names; `specs` writes others). The pickles are written as the benchmark's are:
- `meta_data.pkl`: the sparse clicks as a list of (x, y) tuples, prompt, editable mask;
- `meta_data_region.pkl` (the paper's release): the dense pairs as a list of numpy int arrays
  at image scale (latent cells times 8, as RegionDrag's UI returns them), prompt, editable mask;
- `meta_data_i4p.pkl` (the data as published today): the dragged block as one region mask and
  the sparse clicks as numpy arrays, no prompt (Inpaint4Drag's evaluation.py reads `points`, `mask`);
all interleaved handle, target, handle, ..., masks (H, W) uint8, at pickle's highest protocol.
`annotations` chooses which of the region and i4p files are written (the point file always is).
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
from PIL import Image

SIZE = 64  # photo side (pixels): an 8x8 latent
CELL = 8  # pixels per latent cell
FOLDERS = {"sr": "dragbench-sr", "dr": "dragbench-dr"}
PUBLISHED = ("i4p",)  # the annotation files of the data as published today
ALL = ("region", "i4p")


@dataclass(frozen=True)
class SyntheticSample:
    subset: str
    name: str
    prompt: str
    mask: np.ndarray          # (H, W) bool editable area
    region: np.ndarray        # (H, W) bool: the dragged block (the i4p file's region)
    handle: np.ndarray        # (N, 2) sparse handle points, pixels
    target: np.ndarray        # (N, 2)
    dense_handle: np.ndarray  # (M, 2) dense pairs, pixels (multiples of CELL)
    dense_target: np.ndarray  # (M, 2)

    @property
    def key(self) -> str:
        return f"{self.subset}/{self.name}"


# (subset, name, prompt, handle cell box (x0, y0, x1, y1) inclusive, shift in cells, sparse pairs, editable rows);
# every sparse handle lies in its box
SPECS = [
    ("sr", "art_0", "a painting", (1, 2, 2, 4), (3, 0), [((12, 28), (36, 28))], None),
    ("sr", "cat_1", "a cat", (4, 4, 5, 5), (-3, -2), [((36, 36), (12, 20)), ((44, 44), (20, 28))], (8, 64)),
    ("dr", "animals/JH_2023-09-14-1820-16", "a dog", (2, 1, 4, 2), (0, 4), [((20, 12), (20, 44))], None),
    ("dr", "art_work/JH_2023-09-15-0901-02", "", (5, 5, 6, 6), (-4, 0), [((44, 44), (12, 44))], (0, 56)),
]


def _interleave(handle, target) -> list:
    return [p for pair in zip(handle, target) for p in pair]


def dump_pickle(path: Path, data) -> None:
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)


def _specs(specs: list, counts: Optional[dict[str, int]]):
    """`specs`, or per subset `counts[subset]` of them, repeated under new names."""
    if counts is None:
        return specs
    out = []
    for subset, n in counts.items():
        mine = [s for s in specs if s[0] == subset]
        out += [(subset, name if i < len(mine) else f"{name}_{i}", *rest)
                for i, (_, name, *rest) in ((i, mine[i % len(mine)]) for i in range(n))]
    return out


def write_synthetic_dragbench(root: Path, size: int = SIZE, annotations: Iterable[str] = ALL,
                              counts: Optional[dict[str, int]] = None,
                              specs: Optional[list] = None) -> dict[str, SyntheticSample]:
    """Write the samples (`specs`, in SPECS' format; default SPECS) under root/dragbench-sr and
    root/dragbench-dr; return what was written."""
    rng = np.random.default_rng(0)
    written = {}
    for i, (subset, name, prompt, (x0, y0, x1, y1), (dx, dy), sparse, rows) in enumerate(_specs(specs or SPECS,
                                                                                                 counts)):
        folder = Path(root) / FOLDERS[subset] / name
        folder.mkdir(parents=True)
        photo = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        block = np.s_[y0 * CELL:(y1 + 1) * CELL, x0 * CELL:(x1 + 1) * CELL]
        photo[block] = (255, 64 * (i % 4), 0)  # the dragged block
        Image.fromarray(photo).save(folder / "original_image.png")
        mask = np.ones((size, size), np.uint8)
        if rows is not None:
            mask[:] = 0
            mask[rows[0]:rows[1]] = 1
        region = np.zeros((size, size), np.uint8)
        region[block] = 1
        ys, xs = np.mgrid[y0:y1 + 1, x0:x1 + 1]
        cells = np.stack([xs.ravel(), ys.ravel()], 1)
        dense_handle, dense_target = cells * CELL, (cells + (dx, dy)) * CELL
        handle = np.array([h for h, _ in sparse], np.float64)
        target = np.array([t for _, t in sparse], np.float64)
        dump_pickle(folder / "meta_data.pkl", {"prompt": prompt, "mask": mask, "points": _interleave(
            [h for h, _ in sparse], [t for _, t in sparse])})
        Image.fromarray(photo).save(folder / "user_drag.png")  # drawings of the drag; readers ignore them
        if "region" in annotations:
            dense = _interleave(list(dense_handle), list(dense_target))
            dump_pickle(folder / "meta_data_region.pkl", {"prompt": prompt, "mask": mask, "points": dense})
        if "i4p" in annotations:
            dump_pickle(folder / "meta_data_i4p.pkl", {"mask": region, "points": _interleave(
                list(handle.astype(np.int64)), list(target.astype(np.int64)))})
            Image.fromarray(photo).save(folder / "user_drag_i4p.png")
        sample = SyntheticSample(subset, name, prompt, mask != 0, region != 0, handle, target, dense_handle,
                                 dense_target)
        written[sample.key] = sample
    return written
