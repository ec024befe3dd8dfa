"""The region file: the JSON (and mask PNGs) that holds region pairs on disk, read and written.

A region file says where content is dragged from (the *handle*) and to (the *target*).
All coordinates are image pixels (x, y): x to the right, y down, origin at the top-left
pixel, valid for 0 <= x < width and 0 <= y < height of the photo the file belongs to.
Fractional coordinates are allowed.

JSON format
-----------
One object with one key, ``"pairs"``: a non-empty list of pairs, applied together (kinds
may be mixed). Each pair has a ``"kind"`` and the keys of that kind, nothing else::

    {"pairs": [
      {"kind": "masks",
       "handle": "cup_handle.png",
       "target": {"polygon": [[300, 80], [420, 80], [420, 200], [300, 200]]}},

      {"kind": "polygons",
       "handle": [[100, 100], [200, 100], [150, 180]],
       "target": [[120, 60], [240, 70], [170, 170]]},

      {"kind": "polygons",
       "handle": [[10, 10], [90, 10], [90, 90], [10, 90]],
       "target": [[20, 10], [120, 20], [110, 90], [20, 80]]},

      {"kind": "region_points",
       "region": "cat_eye.png",
       "handle": [[318, 137]],
       "target": [[318, 110]]},

      {"kind": "points",
       "handle": [[322, 140], [450, 130]],
       "target": [[322, 100], [450, 100]],
       "radius": 24, "shape": "disk"},

      {"kind": "transform",
       "handle": {"polygon": [[200, 60], [260, 60], [260, 110], [200, 110]]},
       "matrix": [[0.966, -0.259, 48.0], [0.259, 0.966, -52.0]]}
    ]}

- ``masks`` (brush masks): ``handle`` and ``target`` are masks (below). The target is
  filled from the handle, stretched to fit.
- ``polygons``: ``handle`` and ``target`` are lists of 3 (triangle: affine map) or 4
  (quadrilateral: perspective map) vertices ``[x, y]``, the same count on both sides, in
  corresponding order (handle vertex i goes to target vertex i). Polygons must not be
  degenerate: no three vertices on one line, and a quadrilateral's edges must not cross.
- ``region_points`` (a region plus point pairs): ``region`` is a mask; ``handle`` and
  ``target`` are equally long lists of points ``[x, y]``; every handle point lies inside
  the region, and the points drag the region (inverse-distance weighting).
- ``points`` (plain point pairs, our extension of the paper): ``handle`` and ``target`` are
  equally long lists of points; a disk (``"shape": "disk"``, the default) or square
  (``"square"``, side 2 * radius) of ``radius`` pixels (default 16) around each handle
  point moves, unchanged, to the same shape around its target point.
- ``transform`` (a region and its transform, our extension; what the browser editor exports
  when a region is dragged): ``handle`` is a mask; ``matrix`` is ``[[a, b, c], [d, e, f]]``
  (affine) or a 3x3 homography, in pixels, carrying a handle point (x, y) to its target
  point (a x + b y + c, d x + e y + f) (a homography's result divided by its third row's). It
  must be invertible, finite, keep the region on one side of its horizon, and leave some of
  the target on the photo.

A mask is either a string, the path of a PNG file relative to the JSON file (the same size
as the photo; a pixel is in the region when non-zero, or when its alpha is non-zero if
the PNG has an alpha channel), or ``{"polygon": [[x, y], ...]}``, a filled polygon of 3 or
more vertices drawn inline.

Anything else is an error: `regions_from_json` raises `RegionError`, whose one-line
message names the pair and the key, says what was wrong and how to fix it. So are inputs
above the caps (MAX_PAIRS, MAX_POINTS, MAX_POLYGON_VERTICES, the radius and coverage limits of
point pairs, MAX_REGION_FILE_BYTES, MAX_MASK_PIXELS; the mapping's MAX_MAPPED_LAYERS): each bounds
the memory one input can ask for. A mask file named by several pairs is decoded once.
An inline polygon that crosses itself is filled by the even-odd rule (a pentagram's centre is
outside the region).
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Mapping, Sequence, Union

import numpy as np
from PIL import Image

from ..files import read_bounded
from ..image_io import ImageError, load_mask
from ..regions import (DEFAULT_POINT_RADIUS, KINDS, MAX_POINTS, MAX_POLYGON_VERTICES, MIN_POLYGON_AREA, ImageSize,
                       MaskPair, PointPairs, PolygonPair, Region, RegionError, RegionPoints, TransformPair, check_points,
                       is_number, pair_context, rasterise_polygon, validate_regions)
from .outputs import save_image_atomic

# A region file: a hand-made one is kilobytes (4096 points are ~100 KB).
MAX_REGION_FILE_BYTES = 4 * 2**20
# The masks of one region file together (its distinct PNGs, decoded once each, and its inline
# polygons), in pixels: at a byte a pixel, 256 MiB; 64 masks of a 2048 x 2048 photo.
MAX_MASK_PIXELS = 2**28


# --- JSON ---------------------------------------------------------------------------------

def _keys(cls: type) -> tuple[set[str], set[str]]:
    """(required, optional) JSON keys of a kind: its dataclass fields, optional where they have a default."""
    fields = dataclasses.fields(cls)
    return ({f.name for f in fields if f.default is dataclasses.MISSING},
            {f.name for f in fields if f.default is not dataclasses.MISSING})


def regions_from_json(path_or_dict: Union[str, os.PathLike, Mapping, object], image_size: ImageSize,
                      base_dir: Union[str, os.PathLike, None] = None) -> list[Region]:
    """Parse and validate a region file (or its already-loaded dict) for an image of image_size.

    Mask paths resolve against the JSON file's folder, or base_dir (default: the current
    folder) for a dict.
    """
    if isinstance(path_or_dict, (str, os.PathLike)):
        doc, base = read_region_file(path_or_dict), Path(base_dir or Path(path_or_dict).parent)
    else:  # an already-loaded JSON document (checked as a file's would be)
        doc, base = path_or_dict, Path(base_dir or ".")
    masks = _Masks(base, image_size)
    regions = [_parse_pair(i, pair, masks) for i, pair in enumerate(_pairs(doc))]
    validate_regions(regions, image_size)
    return regions


def regions_to_json(regions: Sequence[Region], folder: Union[str, os.PathLike]) -> dict:
    """The region file's document for `regions` (regions_from_json's inverse): masks are written as
    PNGs into `folder`, where the JSON is to be saved beside them, and named by their file names."""
    pairs = []
    for index, pair in enumerate(regions):
        doc = {"kind": pair.kind}
        for f in dataclasses.fields(pair):
            value = getattr(pair, f.name)
            if isinstance(value, np.ndarray) and value.dtype == bool:
                doc[f.name] = f"pair{index}_{f.name}.png"
                save_image_atomic(Image.fromarray(value.astype(np.uint8) * 255), Path(folder) / doc[f.name])
            else:
                doc[f.name] = value.tolist() if isinstance(value, np.ndarray) else value
        pairs.append(doc)
    return {"pairs": pairs}


def _pairs(doc) -> list:
    if not doc:
        raise RegionError('empty region file: expected {"pairs": [...]} with at least one pair')
    if not isinstance(doc, Mapping) or set(doc) != {"pairs"}:
        found = sorted(map(str, doc)) if isinstance(doc, Mapping) else type(doc).__name__
        raise RegionError(f'a region file is one object with the single key "pairs"; found {found}')
    pairs = doc["pairs"]
    if not isinstance(pairs, list) or not pairs:
        raise RegionError('"pairs" must be a non-empty list of handle -> target pairs')
    return pairs


def mask_files(doc, base_dir: Union[str, os.PathLike]) -> list[Path]:
    """The mask PNGs a region file's dict refers to (what the file makes a command read)."""
    pairs = doc.get("pairs") if isinstance(doc, Mapping) else None
    return [Path(base_dir) / pair[key] for pair in (pairs if isinstance(pairs, list) else [])
            if isinstance(pair, Mapping) for key in ("handle", "target", "region") if isinstance(pair.get(key), str)]


def read_region_file(path: Union[str, os.PathLike]):
    """A region file's JSON document (not yet checked against a photo)."""
    path = Path(path)
    data = read_bounded(path, MAX_REGION_FILE_BYTES, "region file", RegionError, "a region file holds")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise RegionError(f"region file {path} is not UTF-8 text; give a JSON region file (see the "
                          f"regiondrag.apps.region_file docs or --help)") from None
    if not text.strip():
        raise RegionError(f'empty region file {path}: expected {{"pairs": [...]}} with at least one pair')
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RegionError(f"{path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise RegionError(f"{path} nests JSON values too deeply to be a region file") from None


def _parse_pair(index: int, pair, masks: "_Masks") -> Region:
    if not isinstance(pair, Mapping):
        raise RegionError(f"pair {index}: expected an object with a \"kind\", got {type(pair).__name__}")
    kind = pair.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        raise RegionError(f"pair {index}: unknown kind {kind!r}; use one of {', '.join(KINDS)}")
    with pair_context(index, kind):
        required, optional = _keys(KINDS[kind])
        keys = set(pair) - {"kind"}
        if required - keys:
            raise RegionError(f"missing key(s) {', '.join(sorted(required - keys))}")
        if keys - required - optional:
            raise RegionError(f"unknown key(s) {', '.join(sorted(keys - required - optional))}; "
                              f"a {kind} pair has {', '.join(sorted(required | optional))}")
        if kind == "masks":
            return MaskPair(masks.read(pair["handle"], "handle"), masks.read(pair["target"], "target"))
        if kind == "polygons":
            return PolygonPair(_points(pair["handle"], "handle"), _points(pair["target"], "target"))
        if kind == "region_points":
            return RegionPoints(masks.read(pair["region"], "region"),
                                _points(pair["handle"], "handle"), _points(pair["target"], "target"))
        if kind == "transform":
            return TransformPair(masks.read(pair["handle"], "handle"), _matrix(pair["matrix"]))
        return PointPairs(_points(pair["handle"], "handle"), _points(pair["target"], "target"),
                          _number(pair.get("radius", DEFAULT_POINT_RADIUS), "radius"),
                          pair.get("shape", PointPairs.shape))


def is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _number(value, what: str) -> float:
    finite = False
    if is_number(value):
        try:
            finite = bool(np.isfinite(float(value)))
        except OverflowError:  # an integer beyond float range
            pass
    if not finite:
        raise RegionError(f"{what} must be a finite number, got {value!r:.40}")
    return float(value)


def _points(value, what: str, cap: int = MAX_POINTS) -> np.ndarray:
    """A JSON list of [x, y] -> (N, 2) float64."""
    if not isinstance(value, list) or not value:
        raise RegionError(f"{what} must be a non-empty list of [x, y] points, got {value!r:.60}")
    if len(value) > cap:
        raise RegionError(f"{what} has {len(value)} points; at most {cap} are read")
    for p in value:
        if not isinstance(p, list) or len(p) != 2:
            raise RegionError(f"{what}: each point must be a list [x, y], got {p!r:.60}")
    return np.array([[_number(c, f"{what} coordinate") for c in p] for p in value], np.float64)


def _matrix(value) -> np.ndarray:
    """A JSON matrix: 2 or 3 rows of 3 numbers -> (2, 3) or (3, 3) float64."""
    if not (isinstance(value, list) and len(value) in (2, 3)
            and all(isinstance(row, list) and len(row) == 3 for row in value)):
        raise RegionError(f"matrix must be [[a, b, c], [d, e, f]] (affine) or 3 such rows (a homography), "
                          f"got {value!r:.60}")
    return np.array([[_number(c, "matrix entry") for c in row] for row in value], np.float64)


class _Masks:
    """The masks of one region file: each distinct PNG decoded once (pairs may name the same file),
    all of them together within MAX_MASK_PIXELS."""

    def __init__(self, base: Path, image_size: ImageSize):
        self.base, self.image_size, self.decoded, self.pixels = base, image_size, {}, 0

    def read(self, value, what: str) -> np.ndarray:
        """A mask spec (PNG path, or {"polygon": [...]}) -> (H, W) bool."""
        if isinstance(value, str):
            key = os.path.normpath(self.base / value)
            if key not in self.decoded:
                self.decoded[key] = self._counted(_read_mask_png(Path(key), what), what)
            return self.decoded[key]
        if isinstance(value, Mapping) and set(value) == {"polygon"}:
            vertices = _points(value["polygon"], f"{what} polygon", MAX_POLYGON_VERTICES)
            check_points(vertices, self.image_size, f"{what} polygon vertex")
            if len(vertices) < 3:
                raise RegionError(f"{what} polygon has {len(vertices)} vertices; a filled polygon needs 3 or more")
            x, y = vertices.T
            if abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) < 2 * MIN_POLYGON_AREA:  # shoelace
                raise RegionError(f"{what} polygon encloses no area (its vertices lie on one line); spread them out")
            return self._counted(rasterise_polygon(vertices, self.image_size), what)
        raise RegionError(f'{what} must be a PNG path (a string) or {{"polygon": [[x, y], ...]}}, '
                          f"got {value!r:.60}")

    def _counted(self, mask: np.ndarray, what: str) -> np.ndarray:
        self.pixels += mask.size
        if self.pixels > MAX_MASK_PIXELS:
            raise RegionError(f"{what}: the region file's masks add up to more than {MAX_MASK_PIXELS} pixels "
                              f"(distinct mask files and inline polygons); use fewer masks, or a smaller photo")
        return mask


def _read_mask_png(path: Path, what: str) -> np.ndarray:
    try:
        return load_mask(path, f"{what} mask")
    except ImageError as e:
        raise RegionError(str(e)) from None
