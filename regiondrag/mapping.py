"""Dense mapping: every target latent cell gets the handle latent cell its content comes from.

RegionDrag copies latents at the resolution of the SD latent (image / 8), so regions given
in image pixels are first brought to the latent grid, then mapped per kind:

- masks: x is scaled globally so that the target's x-extent maps onto the handle's; then,
  per column, y is scaled so that the target column's y-extent maps onto the y-extent of
  the handle column reached by the x-mapping;
- polygons: the affine (triangle) or perspective (quadrilateral) map target -> handle, at
  every cell inside the target polygon;
- region + points: the region's contour moves by inverse-distance weighting (IDW) of the
  point displacements; the moved contour, filled, is the target region, and each of its
  cells finds its source by IDW of the inverse displacements;
- points (our extension): the disk or square around the handle point moves by translation;
- transform (our extension): each target cell is carried back by the inverse matrix (as polygons'
  maps, on cell indices) and kept where it lands on a cell of the handle region.

Every rule follows the reference implementation (Visual-AI/RegionDrag,
region_utils/ui_utils.py: `region_pair_to_pts`, `transform_polygon`, `region_to_points`),
including its choices of rounding, noted where they are made. Positions are (x, y) index
arrays of shape (N, 2); pairs whose handle or target falls outside the latent are dropped.
"""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .image_io import LATENT_STRIDE
from .regions import (MAX_POINTS, ImageSize, MaskPair, PolygonPair, Region, RegionError, RegionPoints, TransformPair,
                      pair_context, project, validate_regions)

EXTENT_EPS = 1e-4  # floor of a target extent before dividing by it (reference: `.clamp(min=1e-4)`)
IDW_NEIGHBOURS = 4  # control points weighted per position (reference: `indices[:, :min(4, ...)]`)
IDW_EPS = 1e-4  # weights are 1 / (distance + IDW_EPS) (reference: `interpolate_points`)
IDW_MAX_CONTROLS = 100  # more control points are thinned evenly to this many (reference: `max_num=100`)
# Exact maps (translations, 2x stretches) computed in floating point can land a hair below
# a whole cell; flooring after this nudge keeps them in the cell they mean. The reference
# truncates without it (float32 `.int()` / `astype(np.int32)`).
CELL_SNAP = 1e-6

# All pairs of one input together map at most this many times the grid's cells (and at least
# MAX_POINTS: radius-0 points on a tiny grid). One valid pair maps at most ~36 layers (point pairs
# covering the photo 16 times over); beyond that the pairs only pile up, while the mapping's
# memory grows with them (32 bytes a cell, 64x more on the pixel grid of CP then Encode's preview).
MAX_MAPPED_LAYERS = 64

LatentSize = tuple[int, int]  # (w, h) of the latent grid
Mapping = tuple[np.ndarray, np.ndarray]  # (handle_xy, target_xy), each (N, 2) int64


def latent_size_of(image_size: ImageSize) -> LatentSize:
    """The SD latent grid of an image: floor(size / 8), as the VAE's strided convolutions give."""
    return image_size[0] // LATENT_STRIDE, image_size[1] // LATENT_STRIDE


def region_to_latent(mask: np.ndarray, latent_size: LatentSize) -> np.ndarray:
    """(H, W) region mask -> (h, w) bool: bilinear resize, then any non-zero value.

    The reference's rule for region masks (cv2.resize with its default INTER_LINEAR, then
    `.bool()`), so a cell is in the region when the pixels at its centre are.
    """
    return cv2.resize((mask != 0).astype(np.uint8), latent_size, interpolation=cv2.INTER_LINEAR) > 0


def editable_mask_to_latent(mask: np.ndarray, latent_size: LatentSize) -> np.ndarray:
    """(H, W) editable-area mask -> (h, w) bool, by nearest sampling.

    The reference's rule for the editable mask (F.interpolate, default mode 'nearest'): a
    cell takes the pixel at its top-left corner. It differs from `region_to_latent`
    because the reference treats the two masks differently.
    """
    m = torch.from_numpy((mask != 0).astype(np.float32))[None, None]  # (1, 1, H, W)
    return F.interpolate(m, size=latent_size[::-1], mode="nearest")[0, 0].numpy() > 0


def dense_mapping(regions: list[Region], image_size: ImageSize,
                  latent_size: Optional[LatentSize] = None) -> Mapping:
    """All pairs' (handle_xy, target_xy) latent positions, concatenated in the pairs' order.

    Regions are in pixels of an image of image_size; latent_size is the latent grid they
    map onto (default: image_size / 8, floored; pass the working size's grid when the
    pipeline resizes the photo).
    """
    validate_regions(regions, image_size)
    latent_size = latent_size or latent_size_of(image_size)
    scale = np.array(latent_size, np.float64) / np.array(image_size, np.float64)  # (sx, sy)
    maps, mapped, limit = [], 0, max(MAX_MAPPED_LAYERS * latent_size[0] * latent_size[1], MAX_POINTS)
    for i, region in enumerate(regions):
        with pair_context(i, region.kind):
            handle_xy, target_xy = _map_region(region, scale, latent_size)
            if len(target_xy) == 0:
                raise RegionError("maps no latent cell: its regions are smaller than one latent cell "
                                  f"({LATENT_STRIDE} px) or leave the image; enlarge them")
        mapped += len(target_xy)
        if mapped > limit:  # checked as the pairs add up: the memory stays within the limit plus one pair
            raise RegionError(f"pairs 0 to {i} together map {mapped} cells, more than {MAX_MAPPED_LAYERS} times the "
                              f"{latent_size[0]}x{latent_size[1]} grid ({limit}); use fewer or smaller pairs")
        maps.append((handle_xy, target_xy))
    return _concatenate(maps)


def _map_region(region: Region, scale: np.ndarray, latent_size: LatentSize) -> Mapping:
    if isinstance(region, MaskPair):
        return map_masks(region_to_latent(region.handle, latent_size),
                         region_to_latent(region.target, latent_size))
    if isinstance(region, PolygonPair):
        return map_polygons(region.handle * scale, region.target * scale, latent_size)
    if isinstance(region, RegionPoints):
        # the reference truncates the scaled control points (`astype(np.int32)`)
        return map_region_points(region_to_latent(region.region, latent_size),
                                 (region.handle * scale).astype(np.int64),
                                 (region.target * scale).astype(np.int64))
    if isinstance(region, TransformPair):
        s = np.diag([*scale, 1.0])  # pixels -> latent cells
        return map_transform(region_to_latent(region.handle, latent_size),
                             s @ region.homography @ np.linalg.inv(s))
    return map_points(region.handle * scale, region.target * scale, region.radius * scale,
                      region.shape, latent_size)


def map_masks(handle: np.ndarray, target: np.ndarray) -> Mapping:
    """Two (h, w) bool latent masks -> mapping that stretches handle onto target, x then y."""
    _check_covers(handle, "handle mask")
    _check_covers(target, "target mask")
    ty, tx = np.nonzero(target)  # target cells, row-major like the reference's torch.where
    hx0, hx1 = _extent(handle.any(0))
    tx0, tx1 = _extent(target.any(0))
    x = (tx - tx0) * ((hx1 - hx0) / max(tx1 - tx0, EXTENT_EPS)) + hx0  # (N,) float
    # Reference: the handle column is the x-mapping truncated. A handle mask with gaps
    # between its columns has empty columns there (the reference then divides by inf);
    # we use the nearest non-empty column instead.
    column = _nearest_filled(handle.any(0))[_to_cell(x)]
    hy0, hy1 = _column_extents(handle)
    ty0, ty1 = _column_extents(target)
    y = (ty - ty0[tx]) * ((hy1 - hy0)[column] / np.maximum(ty1 - ty0, EXTENT_EPS)[tx]) + hy0[column]
    return np.stack([column, _to_cell(y)], 1), np.stack([tx, ty], 1)


def map_polygons(handle: np.ndarray, target: np.ndarray, latent_size: LatentSize) -> Mapping:
    """Latent vertices (K, 2), K = 3 (affine) or 4 (perspective) -> mapping of the target's cells."""
    src, dst = target.astype(np.float32), handle.astype(np.float32)
    if len(target) == 3:
        m = np.vstack([cv2.getAffineTransform(src, dst), [0, 0, 1]])  # (3, 3)
    else:
        m = cv2.getPerspectiveTransform(src, dst)  # (3, 3)
    inside = np.zeros(latent_size[::-1], np.uint8)
    # the reference rasterises the target with truncated vertices (`np.array(..., np.int32)`)
    cv2.fillPoly(inside, [target.astype(np.int32)], 1)
    ty, tx = np.nonzero(inside)
    p = m @ np.stack([tx, ty, np.ones_like(tx)]).astype(np.float64)  # (3, N) homogeneous
    with np.errstate(divide="ignore", invalid="ignore"):
        xy = (p[:2] / p[2]).T  # (N, 2)
    # a concave target quadrilateral can send cells through infinity: keep those near the grid
    near = (np.abs(xy) <= max(latent_size) + 1).all(1)
    return drop_out_of_bounds(_to_cell(xy[near]), np.stack([tx, ty], 1)[near], latent_size)


def map_transform(handle: np.ndarray, matrix: np.ndarray) -> Mapping:
    """(h, w) bool latent handle region, 3x3 latent-space matrix (handle -> target) -> mapping.

    Every cell of the grid is carried back by the inverse matrix; it is a target cell where it
    lands on a handle cell. Inverse mapping leaves no holes in a target that the matrix enlarges."""
    _check_covers(handle, "handle region")
    latent_size = handle.shape[::-1]
    ty, tx = np.indices(handle.shape).reshape(2, -1)  # every cell, row-major as np.nonzero
    target = np.stack([tx, ty], 1)
    xy = project(np.linalg.inv(matrix), target)
    near = (np.abs(xy) <= max(latent_size) + 1).all(1)  # finite, and not past the grid's far side
    source, target = drop_out_of_bounds(_to_cell(xy[near]), target[near], latent_size)
    inside = handle[source[:, 1], source[:, 0]]
    return source[inside], target[inside]


def map_region_points(region: np.ndarray, handle: np.ndarray, target: np.ndarray) -> Mapping:
    """(h, w) bool latent region, (N, 2) int latent handle/target points -> mapping.

    As the reference, each outer contour of the region is moved by the control points
    inside it; contours without one stay put and map nothing.
    """
    _check_covers(region, "region")
    latent_size = region.shape[::-1]
    contours = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
    on_grid = ((handle >= 0) & (handle < np.array(latent_size))).all(1)
    hx, hy = np.clip(handle, 0, np.array(latent_size) - 1).T
    maps = []
    for contour in contours:
        contour = contour[:, 0, :]  # (C, 2) (x, y) corner points of the outline
        filled = _fill_contour(contour, latent_size)
        controls = on_grid & filled[hy, hx]
        if not controls.any():
            continue
        ctrl_h, shift = handle[controls], target[controls] - handle[controls]
        source_cells = _cells(filled)
        moved_cells = idw_displace(source_cells, ctrl_h, shift)  # forward map of the region
        target_cells = _cells(_fill_contour(idw_displace(contour, ctrl_h, shift), latent_size))
        # invert the forward map: its images are the controls, pointing back to their sources
        sources = idw_displace(target_cells, moved_cells, source_cells - moved_cells)
        maps.append(drop_out_of_bounds(sources, target_cells, latent_size))
    if not maps:
        raise RegionError("no handle point lies inside the region at latent resolution "
                          f"(1/{LATENT_STRIDE}); move the handle points inward or enlarge the region")
    return _concatenate(maps)


def idw_displace(points: np.ndarray, controls: np.ndarray, displacements: np.ndarray) -> np.ndarray:
    """(P, 2) points moved by inverse-distance weighting of (R, 2) control displacements.

    The reference's `interpolate_points`: 4 nearest controls, weights 1 / (d + 1e-4),
    normalised; more than 100 controls are thinned evenly first; one control moves every
    point by its displacement. The reference computes in float16; we use float32.
    """
    if len(controls) < 2:
        return (points + displacements).astype(np.int64)  # the reference truncates here
    if len(controls) > IDW_MAX_CONTROLS:
        keep = np.linspace(0, len(controls) - 1, IDW_MAX_CONTROLS).astype(np.int64)
        controls, displacements = controls[keep], displacements[keep]
    p, c, d = (a.astype(np.float32) for a in (points, controls, displacements))
    distance = np.linalg.norm(p[:, None] - c[None], axis=-1)  # (P, R)
    k = min(IDW_NEIGHBOURS, len(c))
    nearest = _k_nearest(distance, k)
    weight = 1 / (np.take_along_axis(distance, nearest, 1) + IDW_EPS)
    weight /= weight.sum(1, keepdims=True)
    return np.rint(p + (weight[..., None] * d[nearest]).sum(1)).astype(np.int64)  # round half to even


def _k_nearest(distance: np.ndarray, k: int) -> np.ndarray:
    """(P, R) distances -> (P, k) indices of the k nearest, ties broken by the lower index, in index order.

    The reference sorts (unstably, in float16) so equidistant controls are chosen arbitrarily; ours is
    a stable, documented order. A partition finds each row's k-th distance; everything nearer is taken,
    and the remaining places go to the first controls at exactly that distance.
    """
    kth = np.take_along_axis(distance, np.argpartition(distance, k - 1, axis=1)[:, k - 1 : k], 1)  # (P, 1)
    nearer, tied = distance < kth, distance == kth
    chosen = nearer | (tied & (np.cumsum(tied, 1) <= k - nearer.sum(1, keepdims=True)))
    return np.nonzero(chosen)[1].reshape(len(distance), k)


def map_points(handle: np.ndarray, target: np.ndarray, radius: np.ndarray, shape: str,
               latent_size: LatentSize) -> Mapping:
    """Latent points (N, 2) and (rx, ry) radius -> the disk/square around each handle, translated."""
    rx, ry = radius
    dx, dy = np.meshgrid(np.arange(-int(rx), int(rx) + 1), np.arange(-int(ry), int(ry) + 1))
    if shape == "disk":  # (dx/rx)^2 + (dy/ry)^2 <= 1, multiplied out so that a zero radius works
        keep = (dx * ry) ** 2 + (dy * rx) ** 2 <= (rx * ry) ** 2
        dx, dy = dx[keep], dy[keep]
    offsets = np.stack([dx.ravel(), dy.ravel()], 1)  # (M, 2) cells of the shape around its centre
    h = (_to_cell(handle)[:, None] + offsets).reshape(-1, 2)
    t = (_to_cell(target)[:, None] + offsets).reshape(-1, 2)
    return drop_out_of_bounds(h, t, latent_size)


def subsample_pairs(mapping: Mapping, point_fraction: float, seed: int = 0) -> Mapping:
    """Keep a random fraction in (0, 1] of the pairs (EditConfig.point_fraction, checked there; an ablation:
    how many points RegionDrag needs)."""
    handle_xy, target_xy = mapping
    n = max(1, round(point_fraction * len(target_xy))) if len(target_xy) else 0
    keep = np.sort(np.random.default_rng(seed).choice(len(target_xy), n, replace=False))
    return handle_xy[keep], target_xy[keep]


# --- helpers -----------------------------------------------------------------------------

def _concatenate(maps: list[Mapping]) -> Mapping:
    return np.concatenate([m[0] for m in maps]), np.concatenate([m[1] for m in maps])


def _check_covers(mask: np.ndarray, what: str) -> None:
    if not mask.any():
        raise RegionError(f"{what} covers no latent cell (it is thinner than {LATENT_STRIDE} px, "
                          f"or its pixels miss the cell centres); enlarge it")


def _to_cell(xy: np.ndarray) -> np.ndarray:
    return np.floor(xy + CELL_SNAP).astype(np.int64)


def drop_out_of_bounds(handle: np.ndarray, target: np.ndarray, latent_size: LatentSize) -> Mapping:
    """Drop pairs whose handle or target lies outside the latent grid."""
    size = np.array(latent_size)
    ok = ((handle >= 0) & (handle < size)).all(1) & ((target >= 0) & (target < size)).all(1)
    return handle[ok], target[ok]


def _extent(filled: np.ndarray) -> tuple[int, int]:
    """First and last index where a 1-D bool array is True."""
    idx = np.flatnonzero(filled)
    return int(idx[0]), int(idx[-1])


def _column_extents(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column of a (h, w) mask: first and last filled row (arbitrary where empty)."""
    filled = mask.any(0)
    top = np.argmax(mask, 0)
    bottom = mask.shape[0] - 1 - np.argmax(mask[::-1], 0)
    return np.where(filled, top, 0), np.where(filled, bottom, 0)


def _nearest_filled(filled: np.ndarray) -> np.ndarray:
    """For each index of a 1-D bool array, the nearest True index (ties to the left)."""
    idx = np.flatnonzero(filled)
    i = np.arange(len(filled))
    pos = np.clip(np.searchsorted(idx, i), 1, max(len(idx) - 1, 1))
    left, right = idx[pos - 1], idx[np.minimum(pos, len(idx) - 1)]  # min: a single True index
    return np.where(i - left <= right - i, left, right)


def _fill_contour(contour: np.ndarray, latent_size: LatentSize) -> np.ndarray:
    """(C, 2) int outline -> (h, w) bool filled region, clipped to the grid."""
    mask = np.zeros(latent_size[::-1], np.uint8)
    cv2.drawContours(mask, [contour.astype(np.int32)[:, None]], -1, 1, thickness=cv2.FILLED)
    return mask.astype(bool)


def _cells(mask: np.ndarray) -> np.ndarray:
    """(h, w) bool -> (N, 2) (x, y) of its cells, row-major."""
    y, x = np.nonzero(mask)
    return np.stack([x, y], 1)
