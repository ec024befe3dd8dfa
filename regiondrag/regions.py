"""Region inputs: the kinds of handle -> target pairs, as the method takes them, and their checks.

    regions = [PolygonPair(handle=[[100, 100], [200, 100], [150, 180]], target=[[120, 60], [240, 70], [170, 170]]),
               PointPairs(handle=[[322, 140]], target=[[322, 100]], radius=24)]
    validate_regions(regions, photo.size)   # RegionError (one line) for anything unusable

All coordinates are image pixels (x, y): x to the right, y down, origin at the top-left pixel,
valid for 0 <= x < width and 0 <= y < height; fractional coordinates are allowed. Masks are
(H, W) bool arrays of the photo's size. The region file that holds pairs on disk (JSON, with
mask PNGs) is an application's: regiondrag.apps.region_file.

- `MaskPair` (brush masks): the target is filled from the handle, stretched to fit.
- `PolygonPair`: 3 (affine map) or 4 (perspective map) vertices each side, in corresponding order;
  not degenerate (no three vertices on a line, a quadrilateral's edges do not cross).
- `RegionPoints`: one region dragged by handle -> target point pairs inside it (inverse-distance weighting).
- `PointPairs` (our extension of the paper): a disk or square of `radius` pixels around each handle
  point moves, unchanged, to the same shape around its target point.
- `TransformPair` (our extension, what the browser editor's drag makes): one handle region and the
  pixel-space matrix (2x3 affine or 3x3 homography) that carries a handle point to its target point.

The caps below (MAX_PAIRS, MAX_POINTS, MAX_POLYGON_VERTICES, the radius and coverage limits of point
pairs) each bound the memory one input can ask for.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar, Iterator, Mapping, Optional, Sequence, Union

import cv2
import numpy as np

# Our extension's defaults: a point pair moves a disk this big (image pixels), two latent
# cells across, so that even a lone point pair moves a recognisable patch.
DEFAULT_POINT_RADIUS = 16.0
POINT_SHAPES = ("disk", "square")
# A polygon with less area than this (px^2) has (nearly) collinear vertices: it covers no
# pixel and its map is singular.
MIN_POLYGON_AREA = 0.5
# A transform matrix this ill-conditioned (or worse) is singular to float precision: it collapses the
# region onto a line or a point, and its inverse (which the mapping needs) is noise.
MAX_MATRIX_CONDITION = 1e12
# Caps, each bounding what one input may cost (memory and time grow with them):
# - pairs in one input (a region file, an edit, a browser tab): a drag by hand uses a handful, and
#   every pair holds up to two masks of the photo's size;
MAX_PAIRS = 64
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
            check_points(vertices, image_size, f"{name} vertex")
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
        check_points(self.handle, image_size, "handle point")
        check_points(self.target, image_size, "target point")
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
        check_points(self.handle, image_size, "handle point")
        check_points(self.target, image_size, "target point")
        _check_counts(self.handle, self.target, "points")
        if not (is_number(self.radius) and 0 <= self.radius < np.inf):
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


@dataclass(frozen=True, eq=False)
class TransformPair:
    """Our extension: one handle region carried by a matrix, (x, y) -> matrix @ (x, y, 1) in pixels.

    A 2x3 matrix is affine (translate, rotate, scale, shear); a 3x3 one a homography (perspective,
    divided by its last coordinate). The target is where the matrix puts the handle region."""
    kind: ClassVar[str] = "transform"
    handle: np.ndarray  # (H, W) bool
    matrix: np.ndarray  # (2, 3) or (3, 3) float

    def __post_init__(self):
        _store_arrays(self, bool, "handle")
        _store_arrays(self, np.float64, "matrix")

    @property
    def homography(self) -> np.ndarray:
        """The matrix as 3x3 (an affine one gets the row [0, 0, 1])."""
        return np.vstack([self.matrix, [0, 0, 1]]) if self.matrix.shape == (2, 3) else self.matrix

    def validate(self, image_size: ImageSize) -> None:
        _check_mask(self.handle, image_size, "handle")
        m = self.matrix
        if m.shape not in ((2, 3), (3, 3)):
            raise RegionError(f"matrix is {'x'.join(map(str, m.shape))}; give [[a, b, c], [d, e, f]] (affine) "
                              f"or a 3x3 homography")
        if not np.isfinite(m).all():
            raise RegionError("matrix has a non-finite entry (inf or nan); give finite numbers")
        if np.linalg.cond(self.homography) > MAX_MATRIX_CONDITION:
            raise RegionError("matrix is singular: it collapses the handle region onto a line or a point; "
                              "give an invertible transform")
        ys, xs = np.nonzero(self.handle)
        w = self.homography[2] @ np.stack([xs, ys, np.ones_like(xs)])
        if not ((w > 0).all() or (w < 0).all()):
            raise RegionError("matrix sends part of the handle region through infinity (its horizon crosses "
                              "the region); give a milder perspective")
        x, y = project(self.homography, np.stack([xs, ys], 1)).T
        width, height = image_size
        if not ((x >= 0) & (x < width) & (y >= 0) & (y < height)).any():
            raise RegionError(f"matrix moves the handle region entirely off the {width}x{height} photo; "
                              f"keep some of the target on the photo")


def project(homography: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """(N, 2) points through a 3x3 homography: (x, y, 1) -> its image, divided by the last coordinate."""
    p = homography @ np.vstack([np.asarray(xy, np.float64).T, np.ones(len(xy))])
    with np.errstate(divide="ignore", invalid="ignore"):
        return (p[:2] / p[2]).T


def _store_arrays(pair, dtype, *names: str) -> None:
    """Fields given as array-likes of real numbers (lists, uint8 masks) are stored as numpy arrays of
    dtype; anything else (complex numbers, whose imaginary part a cast would drop; strings) is refused."""
    for name in names:
        value = getattr(pair, name)
        try:
            a = np.asarray(value)
        except (TypeError, ValueError):  # ragged nested lists
            a = np.empty(0, object)
        if a.dtype.kind not in "biuf":
            raise RegionError(f"{name} must be an array of real numbers, got {value!r:.60}")
        object.__setattr__(pair, name, a.astype(dtype, copy=False))


Region = Union[MaskPair, PolygonPair, RegionPoints, PointPairs, TransformPair]
KINDS: dict[str, type] = {k.kind: k for k in (MaskPair, PolygonPair, RegionPoints, PointPairs, TransformPair)}


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
                          f"{type(regions).__name__}; read a region file with regiondrag.apps.region_file.regions_from_json(path, image.size)")
    if not regions:
        raise RegionError("no region pairs given; give at least one handle -> target pair")
    if len(regions) > MAX_PAIRS:
        raise RegionError(f"{len(regions)} region pairs given; at most {MAX_PAIRS} are used together: "
                          f"merge pairs that move the same way, or edit in several passes")
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
    """Filled polygon (K, 2) (x, y) -> (H, W) bool mask, vertices rounded to whole pixels.

    A self-intersecting outline is filled by the even-odd rule (OpenCV's fillPoly): a pixel is
    inside when a ray from it crosses the outline an odd number of times, so a pentagram's five
    points are in the region and its centre is not."""
    mask = np.zeros(image_size[::-1], np.uint8)
    cv2.fillPoly(mask, [np.round(vertices).astype(np.int32)], 1)
    return mask.astype(bool)


def is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


# --- checks ------------------------------------------------------------------------------

def _check_mask(mask: np.ndarray, image_size: ImageSize, what: str) -> None:
    width, height = image_size
    if mask.ndim != 2 or mask.shape != (height, width):
        raise RegionError(f"{what} mask is {mask.shape[1::-1]} (width, height) but the image is "
                          f"{(width, height)}; masks must have the image's size")
    if not mask.any():
        raise RegionError(f"{what} mask is empty (no non-zero pixel); draw the region")


def check_points(points: np.ndarray, image_size: ImageSize, what: str) -> None:
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
