"""The `transform` region kind: a handle region and the pixel matrix that carries it to its target.

Expected mappings are built forward, handle cell -> target cell, from the transform's own
definition (translation: + d/8; rotation: R (h - c) + c); the library maps backward, target -> handle.
"""
import cv2
import numpy as np
import pytest

from regiondrag.apps.preview import draw_preview
from regiondrag.apps.region_file import regions_from_json, regions_to_json
from regiondrag.mapping import dense_mapping, latent_size_of, region_to_latent
from regiondrag.pipeline import RegionDragPipeline
from regiondrag.regions import PolygonPair, RegionError, TransformPair, rasterise_polygon

SIZE = (256, 192)  # (W, H): latent 32 x 24
LATENT = latent_size_of(SIZE)


def rect_mask(x0, y0, x1, y1):
    m = np.zeros(SIZE[::-1], bool)
    m[y0:y1, x0:x1] = True
    return m


def pairs(mapping):
    return {(tuple(t), tuple(h)) for h, t in zip(*(a.tolist() for a in mapping))}


def handle_cells(mask):
    y, x = np.nonzero(region_to_latent(mask, LATENT))
    return np.stack([x, y], 1)


def forward(cells, fn):
    """{(target, handle)} for handle cells carried forward by fn, targets inside the grid."""
    out = set()
    for h in cells:
        t = fn(h)
        if 0 <= t[0] < LATENT[0] and 0 <= t[1] < LATENT[1]:
            out.add((tuple(int(v) for v in t), tuple(h.tolist())))
    return out


@pytest.mark.parametrize("dx, dy", [(40, 16), (-24, 8), (0, -32), (160, 0)])  # the last leaves the grid in part
def test_translation_maps_every_target_cell_to_cell_minus_d_over_8(dx, dy):
    mask = rect_mask(64, 48, 136, 120)
    mapping = dense_mapping([TransformPair(mask, [[1, 0, dx], [0, 1, dy]])], SIZE)
    handle, target = mapping
    assert len(target) > 0
    assert (handle == target - np.array([dx, dy]) // 8).all()
    assert pairs(mapping) == forward(handle_cells(mask), lambda h: h + np.array([dx, dy]) // 8)


def test_90_degree_rotation_about_the_region_centre_maps_cells_as_the_rotation_says():
    mask = rect_mask(64, 48, 160, 112)  # latent cells x 8..19, y 6..13
    c = np.array([112.0, 80.0])  # its centre in pixels, (14, 10) in cells
    r = np.array([[0.0, -1.0], [1.0, 0.0]])  # 90 degrees (x right, y down: clockwise on screen)
    matrix = np.hstack([r, (c - r @ c)[:, None]])
    mapping = dense_mapping([TransformPair(mask, matrix)], SIZE)
    expected = forward(handle_cells(mask), lambda h: np.rint(r @ (h - c / 8) + c / 8))
    assert pairs(mapping) == expected
    assert len(expected) == len(handle_cells(mask))  # no cell left the grid: the whole region turned


def test_the_identity_maps_each_cell_to_itself_and_equals_a_3x3_identity():
    mask = rasterise_polygon(np.array([[30, 20], [200, 40], [120, 170]]), SIZE)
    for matrix in ([[1, 0, 0], [0, 1, 0]], np.eye(3) * 2.5):  # a homography's scale does not matter
        handle, target = dense_mapping([TransformPair(mask, matrix)], SIZE)
        assert (handle == target).all()
        assert {tuple(c) for c in target.tolist()} == {tuple(c) for c in handle_cells(mask).tolist()}


def test_a_perspective_matrix_equal_to_a_quad_pairs_gives_that_quad_pairs_mapping():
    handle_q = np.array([[40.0, 30.0], [150.0, 35.0], [160.0, 140.0], [30.0, 120.0]])
    target_q = np.array([[70.0, 40.0], [200.0, 30.0], [190.0, 170.0], [80.0, 150.0]])
    quad = dense_mapping([PolygonPair(handle_q, target_q)], SIZE)
    matrix = cv2.getPerspectiveTransform(handle_q.astype(np.float32), target_q.astype(np.float32))
    moved = dense_mapping([TransformPair(rasterise_polygon(handle_q, SIZE), matrix)], SIZE)
    quad_of, moved_of = ({tuple(t): tuple(h) for h, t in zip(*(a.tolist() for a in m))} for m in (quad, moved))
    common = quad_of.keys() & moved_of.keys()
    # the two kinds outline the target differently (the quad: rasterised vertices; the transform: the
    # handle mask's cells carried over), so they agree inside and may differ on the outline's cells
    assert len(common) >= 0.85 * len(quad_of)
    assert all(quad_of[t] == moved_of[t] for t in common)


def test_a_scaled_target_has_no_holes():
    mask = rect_mask(64, 64, 96, 96)  # 4 x 4 cells, doubled to 8 x 8
    handle, target = dense_mapping([TransformPair(mask, [[2, 0, -64], [0, 2, -64]])], SIZE)
    assert len(target) == 64 and len({tuple(t) for t in target.tolist()}) == 64
    assert (handle == (target - 8) // 2 + 8).all()


@pytest.mark.parametrize("matrix, fragment", [
    ([[0, 0, 5], [0, 0, 5]], "singular"),
    ([[1, 2, 0], [2, 4, 0]], "singular"),
    ([[1, 0, np.nan], [0, 1, 0]], "non-finite"),
    ([[1, 0, np.inf], [0, 1, 0]], "non-finite"),
    ([[1, 0, 0]], "is 1x3"),
    ([[1, 0], [0, 1]], "is 2x2"),
    ([[1, 0, 0], [0, 1, 0], [0.01, 0, -1]], "through infinity"),
    ([[1, 0, 500], [0, 1, 0]], "entirely off the 256x192 photo"),
    ([[1, 0, 0], [0, 1, -300]], "entirely off"),
])
def test_bad_matrices_are_refused_in_one_line(matrix, fragment):
    with pytest.raises(RegionError, match=fragment) as e:
        dense_mapping([TransformPair(rect_mask(64, 48, 136, 120), matrix)], SIZE)
    assert "\n" not in str(e.value) and str(e.value).startswith("pair 0 (transform): ")


def test_a_matrix_of_non_numbers_is_refused_on_construction():
    with pytest.raises(RegionError, match="matrix must be an array of real numbers"):
        TransformPair(rect_mask(64, 48, 136, 120), [[1, 0, "x"], [0, 1, 0]])


@pytest.mark.parametrize("pair, fragment", [
    ({"matrix": [[1, 0, 0]]}, "matrix must be"),
    ({"matrix": [[1, 0, 0], [0, 1, "a"]]}, "matrix must be|matrix entry"),
    ({"matrix": [[1, 0, 0], [0, 1, 1e400]]}, "finite"),
    ({"matrix": [[1, 0, 0], [0, 1, 0]], "target": [[1, 2]]}, "unknown key"),
    ({}, "missing key"),
])
def test_bad_transform_pairs_in_a_file_are_refused_in_one_line(pair, fragment):
    doc = {"pairs": [{"kind": "transform", "handle": {"polygon": [[10, 10], [60, 10], [60, 60]]}, **pair}]}
    with pytest.raises(RegionError, match=fragment):
        regions_from_json(doc, SIZE)


def test_the_region_file_reads_and_writes_a_transform(tmp_path):
    doc = {"pairs": [{"kind": "transform", "handle": {"polygon": [[40, 40], [120, 40], [120, 100], [40, 100]]},
                      "matrix": [[0.966, -0.259, 48.0], [0.259, 0.966, -20.0]]}]}
    (pair,) = regions_from_json(doc, SIZE)
    assert isinstance(pair, TransformPair) and pair.matrix.shape == (2, 3)
    assert pair.handle.sum() == 81 * 61  # fillPoly includes both edges
    (again,) = regions_from_json(regions_to_json([pair], tmp_path), SIZE, tmp_path)
    assert (again.handle == pair.handle).all() and (again.matrix == pair.matrix).all()


def test_pixel_copy_paste_preview_moves_the_handle_pixels_by_the_translation():
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (*SIZE[::-1], 3), np.uint8)
    from PIL import Image
    pair = TransformPair(rect_mask(40, 30, 100, 90), [[1, 0, 37], [0, 1, 11]])  # not a multiple of 8
    out = np.asarray(RegionDragPipeline.preview(Image.fromarray(photo), [pair], SIZE, None))
    expected = photo.copy()
    expected[41:101, 77:137] = photo[30:90, 40:100]
    assert (out == expected).all()


def test_preview_draws_the_moved_outline_and_the_arrow():
    photo = np.full((*SIZE[::-1], 3), 128, np.uint8)
    pair = TransformPair(rect_mask(40, 40, 100, 100), [[1, 0, 120], [0, 1, 40]])
    drawn = np.asarray(draw_preview(photo, [pair], dense_mapping([pair], SIZE)))
    blue = (drawn[..., 2] > 160) & (drawn[..., 0] < 120)
    ys, xs = np.nonzero(blue)
    assert xs.min() >= 155 and ys.min() >= 75  # the target outline and tint around (160..220, 80..140)
    corner = drawn[44:58, 44:58]  # inside the handle, off the arrow (from its centre (70, 70) down-right)
    assert (corner[..., 0] > corner[..., 2]).all()  # the handle tinted red
