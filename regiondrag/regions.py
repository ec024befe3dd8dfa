"""Region inputs: the four kinds of handle -> target pairs, and the JSON file that holds them.

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
       "radius": 24, "shape": "disk"}
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

A mask is either a string, the path of a PNG file relative to the JSON file (the same size
as the photo; a pixel is in the region when non-zero, or when its alpha is non-zero if
the PNG has an alpha channel), or ``{"polygon": [[x, y], ...]}``, a filled polygon of 3 or
more vertices drawn inline.

Anything else is an error: `regions_from_json` raises `RegionError`, whose one-line
message names the pair and the key, says what was wrong and how to fix it. So are inputs
above the caps below (MAX_POINTS, MAX_POLYGON_VERTICES, the radius and coverage limits of
point pairs, MAX_REGION_FILE_BYTES): each bounds the memory one input can ask for.
"""
from __future__ import annotations

import dataclasses
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Iterator, Mapping, Optional, Sequence, Union

import cv2
import numpy as np
from PIL import Image

from .image_io import ImageError, load_mask, save_image_atomic

# Our extension's defaults: a point pair moves a disk this big (image pixels), two latent
# cells across, so that even a lone point pair moves a recognisable patch.
DEFAULT_POINT_RADIUS = 16.0
POINT_SHAPES = ("disk", "square")
# A polygon with less area than this (px^2) has (nearly) collinear vertices: it covers no
# pixel and its map is singular.
MIN_POLYGON_AREA = 0.5
# Caps, each bounding what one input may cost (memory and time grow with them):
# - points per list: clicks by hand, or a dense drag of every latent cell of a 512 px photo
#   (64 x 64); inverse-distance weighting and drawing cost grow with the count;
MAX_POINTS = 4096
# - vertices of an inline polygon mask: an outline traced by hand;
MAX_POLYGON_VERTICES = 4096
# - point pairs' shapes together may cover the photo this many times over: the mapping holds
#   one pair per covered pixel (CP then Encode maps at pixel resolution), and beyond a few
#   layers the shapes only overlap. (A radius is also capped at the photo's diagonal: a disk
#   that big around any point already covers the whole photo.)
MAX_POINT_COVERAGE = 16
# - a region file: a hand-made one is kilobytes (4096 points are ~100 KB).
MAX_REGION_FILE_BYTES = 4 * 2**20

ImageSize = tuple[int, int]  # (width, height) in pixels, as PIL's Image.size


class RegionError(ValueError):
    """A region input that cannot be used; the message is one line: what, and how to fix it."""


@dataclass(frozen=True, eq=False)
class MaskPair:
    """Brush masks: the handle region's content is stretched onto the target region."""
    kind: ClassVar[str] = "masks"
    handle: np.ndarray  # (H, W) bool
    target: np.ndarray  # (H, W) bool

    def __post_init__(self):
        _store_arrays(self, bool, "handle", "target")

    def validate(self, image_size: ImageSize) -> None:
        _check_mask(self.handle, image_size, "handle")
        _check_mask(self.target, image_size, "target")


@dataclass(frozen=True, eq=False)
class PolygonPair:
    """Triangles (affine map) or quadrilaterals (perspective map), vertices in corresponding order."""
    kind: ClassVar[str] = "polygons"
    handle: np.ndarray  # (K, 2) float (x, y), K in (3, 4)
    target: np.ndarray  # (K, 2)

    def __post_init__(self):
        _store_arrays(self, np.float64, "handle", "target")

    def validate(self, image_size: ImageSize) -> None:
        for name, vertices in (("handle", self.handle), ("target", self.target)):
            _check_points(vertices, image_size, f"{name} vertex")
            if len(vertices) not in (3, 4):
                raise RegionError(f"{name} has {len(vertices)} vertices; a polygon pair needs 3 "
                                  f"(triangle) or 4 (quadrilateral) on each side")
        _check_counts(self.handle, self.target, "vertices")
        for name, vertices in (("handle", self.handle), ("target", self.target)):
            _check_polygon(vertices, name)


@dataclass(frozen=True, eq=False)
class RegionPoints:
    """One region dragged by handle -> target point pairs inside it."""
    kind: ClassVar[str] = "region_points"
    region: np.ndarray  # (H, W) bool
    handle: np.ndarray  # (N, 2) float (x, y)
    target: np.ndarray  # (N, 2)

    def __post_init__(self):
        _store_arrays(self, bool, "region")
        _store_arrays(self, np.float64, "handle", "target")

    def validate(self, image_size: ImageSize) -> None:
        _check_mask(self.region, image_size, "region")
        _check_points(self.handle, image_size, "handle point")
        _check_points(self.target, image_size, "target point")
        _check_counts(self.handle, self.target, "points")
        for i, (x, y) in enumerate(self.handle):
            if not self.region[int(y), int(x)]:
                raise RegionError(f"handle point {i} ({x:g}, {y:g}) lies outside the region; "
                                  f"put every handle point inside the region mask")


@dataclass(frozen=True, eq=False)
class PointPairs:
    """Our extension: a disk or square around each handle point moves to its target point."""
    kind: ClassVar[str] = "points"
    handle: np.ndarray  # (N, 2) float (x, y)
    target: np.ndarray  # (N, 2)
    radius: float = DEFAULT_POINT_RADIUS  # image pixels; 0 moves a single latent cell
    shape: str = "disk"

    def __post_init__(self):
        _store_arrays(self, np.float64, "handle", "target")

    def validate(self, image_size: ImageSize) -> None:
        _check_points(self.handle, image_size, "handle point")
        _check_points(self.target, image_size, "target point")
        _check_counts(self.handle, self.target, "points")
        if not (_is_number(self.radius) and 0 <= self.radius < np.inf):
            raise RegionError(f"radius {self.radius!r:.40} must be a non-negative number of pixels")
        diagonal = float(np.hypot(*image_size))
        if self.radius > diagonal:
            raise RegionError(f"radius {self.radius:g} is larger than the photo's diagonal ({diagonal:.0f} px), "
                              f"where a disk already covers the whole photo; use a smaller radius")
        covered = len(self.handle) * (2 * self.radius + 1) ** 2
        if covered > MAX_POINT_COVERAGE * image_size[0] * image_size[1]:
            raise RegionError(f"{len(self.handle)} points of radius {self.radius:g} cover the photo more than "
                              f"{MAX_POINT_COVERAGE} times over; use fewer points or a smaller radius")
        if not isinstance(self.shape, str) or self.shape not in POINT_SHAPES:
            raise RegionError(f"shape {self.shape!r:.40} is not one of {', '.join(POINT_SHAPES)}")


def _store_arrays(pair, dtype, *names: str) -> None:
    """Fields given as array-likes (lists, uint8 masks) are stored as numpy arrays of dtype."""
    for name in names:
        try:
            object.__setattr__(pair, name, np.asarray(getattr(pair, name), dtype))
        except (TypeError, ValueError):
            raise RegionError(f"{name} must be an array of numbers, got {getattr(pair, name)!r:.60}") from None


Region = Union[MaskPair, PolygonPair, RegionPoints, PointPairs]
KINDS: dict[str, type] = {k.kind: k for k in (MaskPair, PolygonPair, RegionPoints, PointPairs)}


@contextmanager
def pair_context(index: int, kind: str) -> Iterator[None]:
    """Prefix any RegionError raised inside with the pair it concerns."""
    try:
        yield
    except RegionError as e:
        raise RegionError(f"pair {index} ({kind}): {e}") from None


def validate_regions(regions: Sequence[Region], image_size: ImageSize) -> None:
    if isinstance(regions, (str, os.PathLike, Mapping)) or not isinstance(regions, Sequence):
        raise RegionError(f"regions must be a list of region pairs (regiondrag.regions), got "
                          f"{type(regions).__name__}; read a region file with regions_from_json(path, image.size)")
    if not regions:
        raise RegionError("no region pairs given; give at least one handle -> target pair")
    for i, region in enumerate(regions):
        if not isinstance(region, tuple(KINDS.values())):
            raise RegionError(f"pair {i} is a {type(region).__name__}; use one of "
                              f"{', '.join(k.__name__ for k in KINDS.values())}")
        with pair_context(i, region.kind):
            region.validate(image_size)


def check_edit_inputs(regions: Optional[Sequence[Region]], mapping, mask, image_size: ImageSize,
                      latent_size: tuple[int, int]) -> None:
    """What `RegionDragPipeline.edit` checks first: regions or a mapping (one of the two),
    a mapping's latent indices on the grid, an editable mask of the photo's size that is not empty."""
    if (regions is None) == (mapping is None):
        raise RegionError("give either regions or a precomputed mapping, not both or neither")
    if regions is not None:
        validate_regions(regions, image_size)
    else:
        _check_mapping(mapping, latent_size)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.ndim != 2 or mask.dtype.kind not in "biuf":
            raise RegionError(f"the editable mask must be an (H, W) array of numbers, got {mask.dtype} "
                              f"of shape {mask.shape}")
        if mask.shape != image_size[::-1]:
            raise RegionError(f"the editable mask is {mask.shape[1]}x{mask.shape[0]} but the photo is "
                              f"{image_size[0]}x{image_size[1]}; give a mask of the photo's size")
        if not mask.any():
            raise RegionError("the editable mask is empty (no non-zero pixel): nothing could change; "
                              "mark the area the edit may change")


def _check_mapping(mapping, latent_size: tuple[int, int]) -> None:
    """(handle_xy, target_xy) integer (N, 2) arrays of equal length, inside the latent grid
    (a negative index would silently wrap around to the other side)."""
    try:
        handle, target = (np.asarray(a) for a in mapping)
    except (TypeError, ValueError):
        raise RegionError("a mapping is a pair (handle_xy, target_xy) of (N, 2) integer arrays") from None
    for name, xy in (("handle", handle), ("target", target)):
        if xy.ndim != 2 or xy.shape[1] != 2 or xy.dtype.kind not in "iu":
            raise RegionError(f"mapping {name}_xy must be an (N, 2) integer array, got {xy.dtype} of shape {xy.shape}")
        outside = ~((xy >= 0) & (xy < np.array(latent_size))).all(1)
        if outside.any():
            i = int(np.argmax(outside))
            raise RegionError(f"mapping {name}_xy[{i}] = {tuple(xy[i].tolist())} is outside the {latent_size[0]}x"
                              f"{latent_size[1]} latent grid; indices are 0 <= x < {latent_size[0]}, "
                              f"0 <= y < {latent_size[1]}")
    if len(handle) != len(target):
        raise RegionError(f"a mapping needs as many handle as target cells; got {len(handle)} and {len(target)}")


def rasterise_polygon(vertices: np.ndarray, image_size: ImageSize) -> np.ndarray:
    """Filled polygon (K, 2) (x, y) -> (H, W) bool mask, vertices rounded to whole pixels."""
    mask = np.zeros(image_size[::-1], np.uint8)
    cv2.fillPoly(mask, [np.round(vertices).astype(np.int32)], 1)
    return mask.astype(bool)


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
    regions = [_parse_pair(i, pair, image_size, base) for i, pair in enumerate(_pairs(doc))]
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
    try:
        if path.stat().st_size > MAX_REGION_FILE_BYTES:
            raise RegionError(f"region file {path} is {path.stat().st_size} bytes, more than a region file holds "
                              f"(at most {MAX_REGION_FILE_BYTES}); is it the right file?")
        text = path.read_bytes().decode("utf-8")
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        if isinstance(e, RegionError):
            raise
        if isinstance(e, UnicodeDecodeError):
            raise RegionError(f"region file {path} is not UTF-8 text; give a JSON region file (see the "
                              f"regiondrag.regions docs or --help)") from None
        raise RegionError(f"cannot read region file {path}: {getattr(e, 'strerror', None) or e}") from None
    if not text.strip():
        raise RegionError(f'empty region file {path}: expected {{"pairs": [...]}} with at least one pair')
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RegionError(f"{path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise RegionError(f"{path} nests JSON values too deeply to be a region file") from None


def _parse_pair(index: int, pair, image_size: ImageSize, base: Path) -> Region:
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
            return MaskPair(_mask(pair["handle"], image_size, base, "handle"),
                            _mask(pair["target"], image_size, base, "target"))
        if kind == "polygons":
            return PolygonPair(_points(pair["handle"], "handle"), _points(pair["target"], "target"))
        if kind == "region_points":
            return RegionPoints(_mask(pair["region"], image_size, base, "region"),
                                _points(pair["handle"], "handle"), _points(pair["target"], "target"))
        return PointPairs(_points(pair["handle"], "handle"), _points(pair["target"], "target"),
                          _number(pair.get("radius", DEFAULT_POINT_RADIUS), "radius"),
                          pair.get("shape", PointPairs.shape))


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _number(value, what: str) -> float:
    finite = False
    if _is_number(value):
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


def _mask(value, image_size: ImageSize, base: Path, what: str) -> np.ndarray:
    """A mask spec (PNG path, or {"polygon": [...]}) -> (H, W) bool."""
    if isinstance(value, str):
        return _read_mask_png(base / value, what)
    if isinstance(value, Mapping) and set(value) == {"polygon"}:
        vertices = _points(value["polygon"], f"{what} polygon", MAX_POLYGON_VERTICES)
        _check_points(vertices, image_size, f"{what} polygon vertex")
        if len(vertices) < 3:
            raise RegionError(f"{what} polygon has {len(vertices)} vertices; a filled polygon needs 3 or more")
        x, y = vertices.T
        if abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) < 2 * MIN_POLYGON_AREA:  # shoelace
            raise RegionError(f"{what} polygon encloses no area (its vertices lie on one line); spread them out")
        return rasterise_polygon(vertices, image_size)
    raise RegionError(f'{what} must be a PNG path (a string) or {{"polygon": [[x, y], ...]}}, '
                      f"got {value!r:.60}")


def _read_mask_png(path: Path, what: str) -> np.ndarray:
    try:
        return load_mask(path, f"{what} mask")
    except ImageError as e:
        raise RegionError(str(e)) from None


# --- checks ------------------------------------------------------------------------------

def _check_mask(mask: np.ndarray, image_size: ImageSize, what: str) -> None:
    width, height = image_size
    if mask.ndim != 2 or mask.shape != (height, width):
        raise RegionError(f"{what} mask is {mask.shape[1::-1]} (width, height) but the image is "
                          f"{(width, height)}; masks must have the image's size")
    if not mask.any():
        raise RegionError(f"{what} mask is empty (no non-zero pixel); draw the region")


def _check_points(points: np.ndarray, image_size: ImageSize, what: str) -> None:
    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
        raise RegionError(f"{what}s must be a non-empty (N, 2) array of (x, y), got shape {points.shape}")
    if len(points) > MAX_POINTS:
        raise RegionError(f"{len(points)} {what}s given; at most {MAX_POINTS} are used")
    width, height = image_size
    outside = ~(np.isfinite(points).all(1) & (points[:, 0] >= 0) & (points[:, 0] < width)
                & (points[:, 1] >= 0) & (points[:, 1] < height))
    if outside.any():
        i = int(np.argmax(outside))
        raise RegionError(f"{what} {i} ({points[i, 0]:g}, {points[i, 1]:g}) lies outside the "
                          f"{width}x{height} image; use pixel coordinates 0 <= x < {width}, 0 <= y < {height}")


def _check_counts(handle: np.ndarray, target: np.ndarray, what: str) -> None:
    if len(handle) != len(target):
        raise RegionError(f"handle has {len(handle)} {what} but target has {len(target)}; "
                          f"give one target for each handle, in the same order")


def _twice_area(a, b, c) -> float:
    """Signed cross product (b - a) x (c - a): twice the triangle's area, + if counter-clockwise."""
    return float((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]))


def _check_polygon(v: np.ndarray, what: str) -> None:
    """No three vertices (nearly) collinear; a quadrilateral's opposite edges do not cross."""
    n = len(v)
    for i in range(n if n == 4 else 1):
        a, b, c = v[i], v[(i + 1) % n], v[(i + 2) % n]
        if abs(_twice_area(a, b, c)) < 2 * MIN_POLYGON_AREA:
            raise RegionError(f"{what} polygon is degenerate: vertices {[tuple(p) for p in (a, b, c)]} "
                              f"are (nearly) collinear; spread them out")
    if n == 4 and (_segments_cross(v[0], v[1], v[2], v[3]) or _segments_cross(v[1], v[2], v[3], v[0])):
        raise RegionError(f"{what} quadrilateral is self-intersecting; list its vertices in order "
                          f"around its outline")


def _segments_cross(p, q, r, s) -> bool:
    """Whether segments pq and rs cross at a point inside both."""
    return (_twice_area(p, q, r) * _twice_area(p, q, s) < 0
            and _twice_area(r, s, p) * _twice_area(r, s, q) < 0)
