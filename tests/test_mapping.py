"""Dense mapping: known maps reproduced, translation equivariance, bounds, degenerate inputs."""
import math
import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from regiondrag.config import ConfigError, EditConfig
from regiondrag.mapping import (dense_mapping, editable_mask_to_latent, idw_displace, map_masks,
                                region_to_latent, subsample_pairs)
from regiondrag.regions import MaskPair, PointPairs, PolygonPair, RegionError, RegionPoints

SIZE = (256, 192)  # (W, H): latent 32 x 24
LATENT = (32, 24)
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def rect_mask(x0, y0, x1, y1, size=SIZE):
    m = np.zeros(size[::-1], bool)
    m[y0:y1, x0:x1] = True
    return m


def latent_polygon_cells(vertices_px):
    """Latent cells inside a polygon given in pixels, rasterised as the reference does."""
    m = np.zeros(LATENT[::-1], np.uint8)
    cv2.fillPoly(m, [(np.asarray(vertices_px) / 8).astype(np.int32)], 1)
    y, x = np.nonzero(m)
    return set(zip(x.tolist(), y.tolist()))


def apply_h(h, xy):
    p = h @ np.vstack([xy.T, np.ones(len(xy))])
    return (p[:2] / p[2]).T


def check_known_map(handle_px, target_px, target_to_handle_latent):
    """Every cell inside the target polygon maps to floor(map(cell)), within one cell."""
    handle, target = dense_mapping([PolygonPair(np.array(handle_px, float), np.array(target_px, float))], SIZE)
    expected = np.floor(apply_h(target_to_handle_latent, target.astype(float)))
    assert np.abs(handle - expected).max() <= 1
    assert set(map(tuple, target.tolist())) == latent_polygon_cells(target_px)


def test_triangle_reproduces_a_known_affine_map():
    a = np.array([[1.3, 0.4, 12.0], [-0.2, 0.9, 30.0], [0, 0, 1]])  # handle -> target, pixels
    handle_px = np.array([[30.0, 20.0], [120.0, 30.0], [60.0, 110.0]])
    target_px = apply_h(a, handle_px)
    s = np.diag([1 / 8, 1 / 8, 1])  # pixels -> latent
    check_known_map(handle_px, target_px, s @ np.linalg.inv(a) @ np.linalg.inv(s))


def test_quadrilateral_reproduces_a_known_homography():
    g = np.array([[1.1, 0.15, 20.0], [0.05, 0.95, 10.0], [2e-3, 1.5e-3, 1]])  # handle -> target, pixels
    handle_px = np.array([[40.0, 30.0], [150.0, 35.0], [160.0, 140.0], [30.0, 120.0]])
    target_px = apply_h(g, handle_px)
    s = np.diag([1 / 8, 1 / 8, 1])
    check_known_map(handle_px, target_px, s @ np.linalg.inv(g) @ np.linalg.inv(s))


def test_masks_rectangle_onto_one_twice_as_wide_maps_columns_linearly():
    # handle columns 3..7 (5 cells), target columns 12..21 (10 cells), same rows 4..9
    handle, target = dense_mapping([MaskPair(rect_mask(24, 32, 64, 80), rect_mask(96, 32, 176, 80))], SIZE)
    assert len(target) == 10 * 6
    # the reference maps extents (last - first), so 0..9 stretches onto 0..4 by 4/9
    np.testing.assert_array_equal(handle[:, 0], 3 + np.floor((target[:, 0] - 12) * 4 / 9 + 1e-9))
    np.testing.assert_array_equal(handle[:, 1], target[:, 1])
    per_column = {x: set(handle[target[:, 0] == x, 0]) for x in range(12, 22)}
    assert all(len(v) == 1 for v in per_column.values())  # a column maps to one column


def test_masks_follow_the_per_column_rule_on_a_curved_handle():
    """An ellipse onto a rectangle, checked against the rule written out cell by cell."""
    handle_px = np.zeros(SIZE[::-1], np.uint8)
    cv2.ellipse(handle_px, (80, 96), (60, 40), 0, 0, 360, 1, cv2.FILLED)
    target_px = rect_mask(160, 40, 240, 170)
    handle, target = dense_mapping([MaskPair(handle_px > 0, target_px)], SIZE)
    hm, tm = region_to_latent(handle_px, LATENT), region_to_latent(target_px, LATENT)
    hx = np.flatnonzero(hm.any(0))
    tx = np.flatnonzero(tm.any(0))
    for (x, y), (sx, sy) in zip(target.tolist(), handle.tolist()):
        mx = (x - tx[0]) * (hx[-1] - hx[0]) / (tx[-1] - tx[0]) + hx[0]
        col = int(mx + 1e-6)
        hy, ty = np.flatnonzero(hm[:, col]), np.flatnonzero(tm[:, x])
        my = (y - ty[0]) * (hy[-1] - hy[0]) / (ty[-1] - ty[0]) + hy[0]
        assert (sx, sy) == (col, int(my + 1e-6))
        assert hm[sy, sx]  # a convex handle: every source lies in it


def test_masks_with_a_gap_use_the_nearest_filled_column():
    two_blocks = rect_mask(16, 16, 40, 64) | rect_mask(120, 16, 144, 64)  # columns 2..4 and 15..17
    handle, target = map_masks(region_to_latent(two_blocks, LATENT),
                               region_to_latent(rect_mask(16, 100, 160, 148), LATENT))
    hm, tm = region_to_latent(two_blocks, LATENT), region_to_latent(rect_mask(16, 100, 160, 148), LATENT)
    filled, tx = np.flatnonzero(hm.any(0)), np.flatnonzero(tm.any(0))
    assert filled.tolist() == [2, 3, 4, 15, 16, 17]
    assert len(target) == tm.sum()
    for (x, y), (sx, sy) in zip(target.tolist(), handle.tolist()):
        reached = int((x - tx[0]) * (filled[-1] - filled[0]) / (tx[-1] - tx[0]) + filled[0] + 1e-6)
        col = min(filled, key=lambda f: (abs(f - reached), f))  # the nearest filled column, ties to the left
        hy, ty = np.flatnonzero(hm[:, col]), np.flatnonzero(tm[:, x])
        assert (sx, sy) == (col, int((y - ty[0]) * (hy[-1] - hy[0]) / (ty[-1] - ty[0]) + hy[0] + 1e-6))
    assert {2, 4, 15, 17} <= set(handle[:, 0].tolist())  # both blocks are used, edge to edge


# --- translation ---------------------------------------------------------------------------

def translated(kind, offset):
    """A region of `kind` whose target is its handle moved by `offset` pixels."""
    o = np.array(offset, float)
    blob = np.zeros(SIZE[::-1], np.uint8)
    cv2.ellipse(blob, (90, 80), (40, 28), 30, 0, 360, 1, cv2.FILLED)
    tri = np.array([[60.0, 40.0], [130.0, 60.0], [80.0, 120.0]])
    quad = np.array([[50.0, 40.0], [130.0, 50.0], [120.0, 120.0], [60.0, 110.0]])
    pts = np.array([[80.0, 70.0], [100.0, 90.0], [70.0, 85.0]])
    if kind == "masks":
        return MaskPair(blob > 0, np.roll(blob > 0, (offset[1], offset[0]), (0, 1)))
    if kind == "triangle":
        return PolygonPair(tri, tri + o)
    if kind == "quadrilateral":
        return PolygonPair(quad, quad + o)
    if kind == "region_points":
        return RegionPoints(blob > 0, pts, pts + o)
    return PointPairs(pts, pts + o, radius=20.0, shape=kind.split("_")[1])


@pytest.mark.parametrize("kind", ["masks", "triangle", "quadrilateral", "region_points",
                                  "points_disk", "points_square"])
@pytest.mark.parametrize("offset", [(40, 16), (-24, 32), (0, -8)])
def test_translation_maps_every_position_by_the_same_offset(kind, offset):
    handle, target = dense_mapping([translated(kind, offset)], SIZE)
    assert len(target) > 0
    np.testing.assert_array_equal(target - handle, np.broadcast_to(np.array(offset) // 8, target.shape))


def test_region_points_with_one_pair_is_a_translation_of_the_region():
    region = np.zeros(SIZE[::-1], np.uint8)
    cv2.fillPoly(region, [np.array([[40, 30], [140, 50], [120, 130], [50, 100]])], 1)
    handle, target = dense_mapping([RegionPoints(region > 0, np.array([[90.0, 80.0]]),
                                                 np.array([[133.0, 61.0]]))], SIZE)
    shift = np.array([133 // 8 - 90 // 8, 61 // 8 - 80 // 8])  # control points are truncated to cells
    np.testing.assert_array_equal(target - handle, np.broadcast_to(shift, target.shape))
    cells = set(map(tuple, np.argwhere(region_to_latent(region, LATENT))[:, ::-1].tolist()))
    assert set(map(tuple, handle.tolist())) == cells  # the whole region moves (it has no holes)


def test_pairs_leaving_the_image_are_dropped():
    def disk_to(x):
        return dense_mapping([PointPairs(np.array([[100.0, 100.0]]), np.array([[x, 100.0]]), radius=40.0)], SIZE)

    inside, half_out = disk_to(100.0), disk_to(250.0)
    assert len(half_out[1]) < len(inside[1]) and half_out[1][:, 0].max() == LATENT[0] - 1
    np.testing.assert_array_equal(half_out[1] - half_out[0], np.broadcast_to([19, 0], half_out[0].shape))
    corner = RegionPoints(rect_mask(8, 8, 72, 72), np.array([[40.0, 40.0]]), np.array([[250.0, 185.0]]))
    for xy in dense_mapping([corner], SIZE):
        assert (xy >= 0).all() and (xy < LATENT).all()


def test_point_pairs_move_a_disk_or_a_square():
    def cells(shape, radius):
        pair = PointPairs(np.array([[100.0, 100.0]]), np.array([[140.0, 60.0]]), radius, shape)
        return dense_mapping([pair], SIZE)[1] - [140 // 8, 60 // 8]

    disk, square = cells("disk", 16.0), cells("square", 16.0)  # radius 2 cells
    assert sorted(map(tuple, disk.tolist())) == [(x, y) for x in range(-2, 3) for y in range(-2, 3)
                                                   if x * x + y * y <= 4]
    assert len(square) == 25 and np.abs(square).max() == 2
    assert cells("disk", 0.0).tolist() == [[0, 0]]


def test_several_pairs_concatenate_in_order():
    a, b = translated("triangle", (8, 8)), translated("points_disk", (16, 0))
    ha, ta = dense_mapping([a], SIZE)
    hb, tb = dense_mapping([b], SIZE)
    handle, target = dense_mapping([a, b], SIZE)
    np.testing.assert_array_equal(handle, np.concatenate([ha, hb]))
    np.testing.assert_array_equal(target, np.concatenate([ta, tb]))


def test_regions_built_in_code_accept_lists_and_uint8_masks():
    mask = np.zeros(SIZE[::-1], np.uint8)
    mask[40:80, 40:80] = 255
    a = dense_mapping([RegionPoints(mask, [[60, 60]], [[100, 60]]), PointPairs([[60, 60]], [[100, 60]])], SIZE)
    b = dense_mapping([RegionPoints(mask > 0, np.array([[60.0, 60.0]]), np.array([[100.0, 60.0]])),
                       PointPairs(np.array([[60.0, 60.0]]), np.array([[100.0, 60.0]]))], SIZE)
    np.testing.assert_array_equal(a[0], b[0])
    with pytest.raises(RegionError, match="handle must be an array of real numbers"):
        PointPairs([[1, 2], [3]], [[1, 2]])


def test_working_size_latent_scales_coordinates():
    # regions drawn on a 512 x 384 photo, edited at the 256 x 192 working size
    region = PointPairs(np.array([[160.0, 160.0]]), np.array([[320.0, 160.0]]), radius=0.0)
    handle, target = dense_mapping([region], (512, 384), latent_size=LATENT)
    np.testing.assert_array_equal(handle, [[10, 10]])
    np.testing.assert_array_equal(target, [[20, 10]])


# --- inverse-distance weighting ------------------------------------------------------------

def test_idw_weights():
    controls = np.array([[0, 0], [10, 0]])
    shifts = np.array([[4, 0], [0, 8]])
    np.testing.assert_array_equal(idw_displace(np.array([[5, 0]]), controls, shifts), [[7, 4]])  # equal weights
    np.testing.assert_array_equal(idw_displace(np.array([[0, 0]]), controls, shifts), [[4, 0]])  # on a control
    np.testing.assert_array_equal(idw_displace(np.array([[3, 3]]), controls[:1], shifts[:1]), [[7, 3]])
    ring = np.array([[100, 0], [0, 100], [-100, 0], [0, -100], [80, 80]])  # the fifth is farther
    shift = idw_displace(np.array([[0, 0]]), ring, np.array([[4, 0]] * 4 + [[999, 999]]))
    np.testing.assert_array_equal(shift, [[4, 0]])  # only the 4 nearest count


def test_idw_thins_more_than_100_controls_evenly_like_the_reference():
    controls = np.stack([np.arange(101) * 10, np.zeros(101, int)], 1)
    shifts = np.zeros_like(controls)
    shifts[99] = [0, 40]  # linspace(0, 100, 100) truncated skips index 99
    np.testing.assert_array_equal(idw_displace(controls[99:100], controls, shifts), [[990, 0]])
    np.testing.assert_array_equal(idw_displace(controls[99:100], controls[:100], shifts[:100]), [[990, 40]])


# --- masks at latent resolution ------------------------------------------------------------

def test_mask_to_latent_rules():
    m = np.zeros((32, 32), np.uint8)
    m[8, 8] = 1  # the top-left pixel of cell (1, 1)
    assert np.argwhere(editable_mask_to_latent(m, (4, 4))).tolist() == [[1, 1]]
    assert not region_to_latent(m, (4, 4)).any()  # a region cell needs pixels at its centre
    m[8:16, 16:24] = 1
    assert np.argwhere(region_to_latent(m, (4, 4))).tolist() == [[1, 2]]


# --- point fraction ------------------------------------------------------------------------

def test_subsample_pairs_keeps_a_seeded_subset_in_order():
    handle, target = dense_mapping([translated("masks", (40, 16))], SIZE)
    h1, t1 = subsample_pairs((handle, target), 0.25, seed=1)
    h2, t2 = subsample_pairs((handle, target), 0.25, seed=1)
    h3, _ = subsample_pairs((handle, target), 0.25, seed=2)
    assert len(t1) == round(0.25 * len(target))
    np.testing.assert_array_equal(h1, h2)
    assert not np.array_equal(h1, h3)
    rows = [np.flatnonzero((target == t).all(1) & (handle == h).all(1))[0] for h, t in zip(h1, t1)]
    assert rows == sorted(rows)
    np.testing.assert_array_equal(subsample_pairs((handle, target), 1.0)[1], target)
    for bad in (0.0, -0.5, 1.5):  # the range is EditConfig's to check, once
        with pytest.raises(ConfigError, match="point_fraction"):
            EditConfig(point_fraction=bad)


# --- degenerate at latent resolution ---------------------------------------------------------

def test_region_smaller_than_a_latent_cell():
    speck = rect_mask(8, 8, 11, 11)  # misses the centre pixels (11, 12) of cell (1, 1)
    with pytest.raises(RegionError, match=r"^pair 0 \(masks\): handle mask covers no latent cell"):
        dense_mapping([MaskPair(speck, rect_mask(40, 40, 80, 80))], SIZE)


def test_region_points_at_latent_resolution():
    thin = rect_mask(40, 45, 140, 50)  # rows 45..49 miss the centre rows of cells 5 and 6
    with pytest.raises(RegionError, match=r"^pair 0 \(region_points\): region covers no latent cell"):
        dense_mapping([RegionPoints(thin, np.array([[60.0, 47.0]]), np.array([[60.0, 90.0]]))], SIZE)
    wide = rect_mask(40, 40, 139, 100)  # column 17's centre pixels (139, 140) are outside
    with pytest.raises(RegionError, match="no handle point lies inside the region at latent resolution"):
        dense_mapping([RegionPoints(wide, np.array([[137.0, 60.0]]), np.array([[100.0, 60.0]]))], SIZE)


# --- property-based ------------------------------------------------------------------------

LATENT_SIZES = st.sampled_from([(128, 96), (203, 150), (256, 192)])


@st.composite
def convex(draw, size, n):
    w, h = size
    r = draw(st.floats(20, 45))
    c = np.array([draw(st.floats(r, w - r - 1)), draw(st.floats(r, h - r - 1))])
    a = draw(st.floats(0, 6.3)) + 2 * np.pi * np.arange(n) / n + np.array(
        draw(st.lists(st.floats(-0.3, 0.3), min_size=n, max_size=n)))
    return c + r * np.stack([np.cos(a), np.sin(a)], 1)


@st.composite
def region(draw, size):
    w, h = size
    kind = draw(st.sampled_from(["masks", "polygons", "region_points", "points"]))
    pts = st.lists(st.tuples(st.floats(0, w - 1), st.floats(0, h - 1)), min_size=1, max_size=3)
    if kind == "masks":
        masks = [np.zeros((h, w), np.uint8) for _ in range(2)]
        for m in masks:
            cv2.fillPoly(m, [np.round(draw(convex(size, 5))).astype(np.int32)], 1)
        return MaskPair(masks[0] > 0, masks[1] > 0)
    if kind == "polygons":
        n = draw(st.sampled_from([3, 4]))
        return PolygonPair(draw(convex(size, n)), draw(convex(size, n)))
    handle = np.array(draw(pts))
    target = np.array(draw(st.lists(st.tuples(st.floats(0, w - 1), st.floats(0, h - 1)),
                                    min_size=len(handle), max_size=len(handle))))
    if kind == "points":
        return PointPairs(handle, target, draw(st.floats(0, 40)), draw(st.sampled_from(["disk", "square"])))
    mask = np.zeros((h, w), np.uint8)
    for x, y in handle:  # a region around the handle points, so that they lie inside it
        cv2.circle(mask, (int(x), int(y)), draw(st.integers(12, 40)), 1, cv2.FILLED)
    return RegionPoints(mask > 0, handle, target)


@st.composite
def regions_and_size(draw):
    size = draw(LATENT_SIZES)
    return draw(st.lists(region(size), min_size=1, max_size=3)), size


@SETTINGS
@given(regions_and_size())
def test_random_valid_regions_map_in_bounds(case):
    regions, size = case
    handle, target = dense_mapping(regions, size)
    w, h = size[0] // 8, size[1] // 8
    assert handle.shape == target.shape and handle.shape[1] == 2 and len(target) > 0
    for xy in (handle, target):
        assert xy.dtype == np.int64 and (xy >= 0).all() and (xy[:, 0] < w).all() and (xy[:, 1] < h).all()


@SETTINGS
@given(regions_and_size(), st.sampled_from(["empty", "counts", "outside", "vertices", "wrong size"]), st.data())
def test_random_invalid_regions_give_region_error(case, how, data):
    regions, size = case
    r = regions[data.draw(st.integers(0, len(regions) - 1))]
    w, h = size
    if how == "empty":
        bad = MaskPair(np.zeros((h, w), bool), np.ones((h, w), bool))
    elif how == "wrong size":
        bad = RegionPoints(np.ones((h + 8, w), bool), np.array([[1.0, 1.0]]), np.array([[2.0, 2.0]]))
    elif how == "counts":
        bad = PointPairs(np.array([[1.0, 1.0], [2.0, 2.0]]), np.array([[1.0, 1.0]]))
    elif how == "vertices":
        bad = PolygonPair(np.array([[1.0, 1.0], [20.0, 1.0]]), np.array([[1.0, 1.0], [20.0, 1.0]]))
    else:
        coords = r.handle if not isinstance(r, MaskPair) else np.array([[0.0, 0.0]])
        far = coords.copy()
        far[0, data.draw(st.integers(0, 1))] = data.draw(st.sampled_from([-1.0, float(max(size)), np.nan]))
        bad = PointPairs(far, far)
    with pytest.raises(RegionError) as info:
        dense_mapping(regions + [bad], size)
    assert str(info.value).startswith(f"pair {len(regions)} ") and "\n" not in str(info.value)


def test_the_pairs_of_one_input_map_at_most_64_layers_of_the_grid():
    """Pairs each within their caps added up without bound (4096 point pairs: 144 million latent pairs)."""
    from regiondrag.mapping import MAX_MAPPED_LAYERS

    size, latent = (512, 512), (64, 64)
    centre = [[256.0, 256.0]] * 16
    pair = PointPairs(centre, centre, radius=255)  # 16 disks: 16 x 511^2 pixels, within 16 photos' worth
    one = len(dense_mapping([pair], size, latent)[0])
    count = math.floor(MAX_MAPPED_LAYERS * latent[0] * latent[1] / one)  # counted here, not by the code
    assert count == 5  # each pair maps 16 disks of radius ~32 cells: ~12.5 layers of the grid
    assert len(dense_mapping([pair] * count, size, latent)[0]) == count * one
    with pytest.raises(RegionError, match=f"pairs 0 to {count} together map {(count + 1) * one} cells, more than "
                                          f"{MAX_MAPPED_LAYERS} times the 64x64 grid"):
        dense_mapping([pair] * (count + 1), size, latent)
