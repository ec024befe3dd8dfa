"""Preview: the regions and the dense mapping drawn over the photo, to check an edit at a glance.

Colours follow the reference UI: red where content comes from (handle), blue where it goes
(target). Drawn, bottom to top:
- handle regions, red tint with a red outline;
- the target cells of the mapping (what will be pasted, in 8 px latent blocks), blue tint,
  and the target shapes as given, blue outline;
- evenly spread mapping arrows, yellow, from a handle cell to the target cell it fills;
- the user's own controls: polygon vertices numbered in order (red handle, blue target),
  handle -> target point arrows, and a transform's arrow from the handle's centre to where
  the matrix puts it, white.
"""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np
from PIL import Image

from ..mapping import LatentSize, Mapping, latent_size_of
from ..regions import MaskPair, PointPairs, PolygonPair, Region, RegionPoints, TransformPair, project, rasterise_polygon

HANDLE_RGB = (235, 45, 45)
TARGET_RGB = (40, 110, 255)
ARROW_RGB = (255, 215, 0)
CONTROL_RGB = (255, 255, 255)
OUTLINE_RGB = (0, 0, 0)  # dark halo under arrows and labels, so they read on any photo
TINT = 0.35  # opacity of the region tints
MAX_ARROWS = 40  # mapping arrows drawn at most; more hide the photo
ARROW_SPACING = 24  # image pixels at least between the starts of neighbouring mapping arrows


def draw_preview(image: Image.Image | np.ndarray, regions: list[Region], mapping: Mapping,
                 latent_size: Optional[LatentSize] = None) -> Image.Image:
    """The photo with regions and a subsample of the (latent) mapping drawn over it, as RGB."""
    image = image if isinstance(image, Image.Image) else Image.fromarray(image)
    canvas = np.array(image.convert("RGB"))  # (H, W, 3) uint8, a copy to draw on
    height, width = canvas.shape[:2]
    latent_size = latent_size or latent_size_of((width, height))
    cell = np.array([width, height]) / np.array(latent_size)  # image pixels per latent cell (x, y)
    line = max(1, round(min(width, height) / 256))

    handles = np.zeros((height, width), bool)
    target_outlines = []
    for region in regions:
        handle, target = _shapes(region, (width, height))
        handles |= handle
        if target is not None:
            target_outlines.append(target)
    handle_xy, target_xy = mapping
    pasted = np.zeros(latent_size[::-1], np.uint8)
    pasted[target_xy[:, 1], target_xy[:, 0]] = 1
    pasted = cv2.resize(pasted, (width, height), interpolation=cv2.INTER_NEAREST) > 0

    _tint(canvas, handles, HANDLE_RGB)
    _tint(canvas, pasted, TARGET_RGB)
    _outline(canvas, handles, HANDLE_RGB, line)
    for target in target_outlines:
        _outline(canvas, target, TARGET_RGB, line)
    for h, t in zip(*_spread(handle_xy, target_xy, int(np.ceil(ARROW_SPACING / cell.min())))):
        _arrow(canvas, (h + 0.5) * cell, (t + 0.5) * cell, ARROW_RGB, 1)
    for region in regions:
        _controls(canvas, region, line)
    return Image.fromarray(canvas)


def _shapes(region: Region, image_size) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """(H, W) bool handle shape and target shape (None where the mapping defines it)."""
    if isinstance(region, MaskPair):
        return region.handle != 0, region.target != 0
    if isinstance(region, PolygonPair):
        return rasterise_polygon(region.handle, image_size), rasterise_polygon(region.target, image_size)
    if isinstance(region, RegionPoints):
        return region.region != 0, None
    if isinstance(region, TransformPair):  # the target: the handle region where the matrix puts it
        moved = cv2.warpPerspective(region.handle.astype(np.uint8), region.homography, image_size,
                                    flags=cv2.INTER_NEAREST)
        return region.handle, moved > 0
    return _point_shapes(region, region.handle, image_size), _point_shapes(region, region.target, image_size)


def _point_shapes(region: PointPairs, points: np.ndarray, image_size) -> np.ndarray:
    mask = np.zeros(image_size[::-1], np.uint8)
    r = max(1, round(region.radius))
    for x, y in np.round(points).astype(int):
        if region.shape == "disk":
            cv2.circle(mask, (x, y), r, 1, cv2.FILLED)
        else:
            cv2.rectangle(mask, (x - r, y - r), (x + r, y + r), 1, cv2.FILLED)
    return mask > 0


def _spread(handle_xy: np.ndarray, target_xy: np.ndarray, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """At most MAX_ARROWS pairs, evenly spread: targets on a lattice of at least `stride` cells.

    One arrow per target cell (pairs may share one); the lattice widens until few enough
    remain, which ends at the latest once only cell (0, 0) lies on it.
    """
    if len(target_xy) == 0:
        return handle_xy, target_xy
    _, first = np.unique(target_xy, axis=0, return_index=True)
    handle_xy, target_xy = handle_xy[np.sort(first)], target_xy[np.sort(first)]
    stride = max(stride, 1)
    while True:
        on_lattice = (target_xy % stride == 0).all(1)
        if on_lattice.sum() <= MAX_ARROWS or stride > target_xy.max():
            return handle_xy[on_lattice], target_xy[on_lattice]
        stride += 1


def _controls(canvas: np.ndarray, region: Region, line: int) -> None:
    """The user's vertices (numbered) or point pairs (arrows), on top of everything."""
    if isinstance(region, PolygonPair):
        radius = 5 * line + 2
        for vertices, colour in ((region.handle, HANDLE_RGB), (region.target, TARGET_RGB)):
            for i, (x, y) in enumerate(np.round(vertices).astype(int), start=1):
                cv2.circle(canvas, (x, y), radius, colour, cv2.FILLED, cv2.LINE_AA)
                cv2.circle(canvas, (x, y), radius, OUTLINE_RGB, 1, cv2.LINE_AA)
                _label(canvas, str(i), (x, y), line)
    elif isinstance(region, TransformPair):
        centre = np.argwhere(region.handle)[:, ::-1].mean(0, keepdims=True)  # (1, 2) (x, y)
        _arrow(canvas, centre[0], project(region.homography, centre)[0], CONTROL_RGB, 2 * line)
    elif isinstance(region, (RegionPoints, PointPairs)):
        for h, t in zip(region.handle, region.target):
            _arrow(canvas, h, t, CONTROL_RGB, 2 * line)
            cv2.circle(canvas, tuple(np.round(h).astype(int)), 3 * line, HANDLE_RGB, cv2.FILLED, cv2.LINE_AA)
            cv2.circle(canvas, tuple(np.round(t).astype(int)), 3 * line, TARGET_RGB, cv2.FILLED, cv2.LINE_AA)


def _tint(canvas: np.ndarray, mask: np.ndarray, rgb) -> None:
    canvas[mask] = ((1 - TINT) * canvas[mask] + TINT * np.array(rgb)).astype(np.uint8)


def _outline(canvas: np.ndarray, mask: np.ndarray, rgb, line: int) -> None:
    contours = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0]
    cv2.drawContours(canvas, contours, -1, rgb, line, cv2.LINE_AA)


def _arrow(canvas: np.ndarray, start, end, rgb, line: int) -> None:
    """Arrow with a dark halo and a head of fixed size (cv2 sizes heads by length)."""
    start, end = np.round(start).astype(int), np.round(end).astype(int)
    length = float(np.hypot(*(end - start)))
    if length < 1:
        return
    tip = min(0.5, (4 + 3 * line) / length)
    for colour, width in ((OUTLINE_RGB, line + 2), (rgb, line)):
        cv2.arrowedLine(canvas, tuple(start), tuple(end), colour, width, cv2.LINE_AA, tipLength=tip)


def _label(canvas: np.ndarray, text: str, centre, line: int) -> None:
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.35 * line + 0.1
    (w, h), _ = cv2.getTextSize(text, font, scale, line)
    origin = (int(centre[0] - w / 2), int(centre[1] + h / 2))
    cv2.putText(canvas, text, origin, font, scale, CONTROL_RGB, line, cv2.LINE_AA)
