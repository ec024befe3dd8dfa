"""A tiny DragBench-SR/DR in the RegionDrag release's layout, for tests.

    samples = write_synthetic_dragbench(tmp_path)    # {key: SyntheticSample}, key "sr/art_0" etc.

Two SR samples and two DR samples in two categories, 64x64 photos. The pickles are written
as the benchmark's are: `meta_data.pkl` with the sparse clicks as a list of (x, y) tuples,
`meta_data_region.pkl` with the dense pairs as a list of numpy int arrays at image scale
(latent cells times 8, as RegionDrag's UI returns them), both interleaved handle, target,
handle, ..., with an (H, W) uint8 editable mask, at pickle's highest protocol.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 64  # photo side (pixels): an 8x8 latent
CELL = 8  # pixels per latent cell


@dataclass(frozen=True)
class SyntheticSample:
    subset: str
    name: str
    prompt: str
    mask: np.ndarray          # (H, W) bool
    handle: np.ndarray        # (N, 2) sparse handle points, pixels
    target: np.ndarray        # (N, 2)
    dense_handle: np.ndarray  # (M, 2) dense pairs, pixels (multiples of CELL)
    dense_target: np.ndarray  # (M, 2)

    @property
    def key(self) -> str:
        return f"{self.subset}/{self.name}"


# (subset, name, prompt, handle cell box (x0, y0, x1, y1) inclusive, shift in cells, sparse pairs, editable rows)
SPECS = [
    ("sr", "art_0", "a painting", (1, 2, 2, 4), (3, 0), [((12, 28), (36, 28))], None),
    ("sr", "cat_1", "a cat", (4, 4, 5, 5), (-3, -2), [((36, 36), (12, 20)), ((44, 44), (20, 28))], (8, 64)),
    ("dr", "animals/JH_2023-09-14-1820-16", "a dog", (2, 1, 4, 2), (0, 4), [((20, 12), (20, 44))], None),
    ("dr", "art_work/JH_2023-09-15-0901-02", "", (5, 5, 6, 6), (-4, 0), [((44, 44), (12, 44))], (0, 56)),
]


def _interleave(handle, target) -> list:
    return [p for pair in zip(handle, target) for p in pair]


def _dump(path: Path, prompt: str, points: list, mask: np.ndarray) -> None:
    with open(path, "wb") as f:
        pickle.dump({"prompt": prompt, "points": points, "mask": mask}, f, protocol=pickle.HIGHEST_PROTOCOL)


def write_synthetic_dragbench(root: Path, size: int = SIZE) -> dict[str, SyntheticSample]:
    """Write the four samples under root/dragbench-sr and root/dragbench-dr; return what was written."""
    rng = np.random.default_rng(0)
    written = {}
    for i, (subset, name, prompt, (x0, y0, x1, y1), (dx, dy), sparse, rows) in enumerate(SPECS):
        folder = Path(root) / {"sr": "dragbench-sr", "dr": "dragbench-dr"}[subset] / name
        folder.mkdir(parents=True)
        photo = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        photo[y0 * CELL:(y1 + 1) * CELL, x0 * CELL:(x1 + 1) * CELL] = (255, 64 * i, 0)  # the dragged block
        Image.fromarray(photo).save(folder / "original_image.png")
        Image.fromarray(photo).save(folder / "user_drag.png")  # in the release; readers ignore it
        mask = np.ones((size, size), np.uint8)
        if rows is not None:
            mask[:] = 0
            mask[rows[0]:rows[1]] = 1
        ys, xs = np.mgrid[y0:y1 + 1, x0:x1 + 1]
        cells = np.stack([xs.ravel(), ys.ravel()], 1)
        dense_handle, dense_target = cells * CELL, (cells + (dx, dy)) * CELL
        handle = np.array([h for h, _ in sparse], np.float64)
        target = np.array([t for _, t in sparse], np.float64)
        _dump(folder / "meta_data.pkl", prompt, _interleave([h for h, _ in sparse], [t for _, t in sparse]), mask)
        _dump(folder / "meta_data_region.pkl", prompt, _interleave(list(dense_handle), list(dense_target)), mask)
        sample = SyntheticSample(subset, name, prompt, mask != 0, handle, target, dense_handle, dense_target)
        written[sample.key] = sample
    return written
