"""Region inputs: JSON parsing, validation messages, examples, DragBench metadata pickles."""
import copy
import dataclasses
import json
import math
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from regiondrag.dragbench.reader import latent_mapping, read_meta_data
from regiondrag.dragbench.unpickle import UnsafePickleError, restricted_load
from regiondrag.mapping import dense_mapping
from regiondrag.apps.region_file import regions_from_json, regions_to_json
from regiondrag.regions import KINDS, MaskPair, PointPairs, PolygonPair, RegionError, RegionPoints

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SIZE = (200, 150)  # (W, H) of most tests' image
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def tri():
    return [[20, 20], [80, 25], [40, 90]]


def quad():
    return [[20, 20], [90, 20], [90, 80], [20, 80]]


# --- valid files -------------------------------------------------------------------------

def test_every_kind_parses_into_its_dataclass(tmp_path):
    mask = np.zeros(SIZE[::-1], np.uint8)
    mask[30:60, 40:90] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    doc = {"pairs": [
        {"kind": "masks", "handle": "m.png", "target": {"polygon": quad()}},
        {"kind": "polygons", "handle": tri(), "target": [[30, 30], [90, 35], [50, 100]]},
        {"kind": "region_points", "region": "m.png", "handle": [[50, 40]], "target": [[60, 50]]},
        {"kind": "points", "handle": [[10, 10], [20, 20]], "target": [[30, 30], [40, 40]],
         "radius": 5, "shape": "square"},
    ]}
    (tmp_path / "r.json").write_text(json.dumps(doc))
    regions = regions_from_json(tmp_path / "r.json", SIZE)
    assert [type(r) for r in regions] == [MaskPair, PolygonPair, RegionPoints, PointPairs]
    assert regions[0].handle.shape == (150, 200) and regions[0].handle.sum() == 30 * 50
    assert regions[0].target[50, 50] and not regions[0].target[10, 10]
    np.testing.assert_array_equal(regions[1].handle, tri())
    assert regions[3].radius == 5 and regions[3].shape == "square"


def test_the_documented_example_parses(tmp_path):
    doc = region_file.__doc__
    doc = json.loads(doc[doc.index('{"pairs"'):doc.index("\n    ]}") + 7])
    for name in ("cup_handle.png", "cat_eye.png"):
        Image.fromarray(np.pad(np.full((412, 412), 255, np.uint8), 50)).save(tmp_path / name)
    parsed = regions_from_json(doc, (512, 512), base_dir=tmp_path)
    assert sorted({r.kind for r in parsed}) == sorted(KINDS)


def test_png_mask_alpha_channel_is_the_mask(tmp_path):
    rgba = np.zeros((*SIZE[::-1], 4), np.uint8)
    rgba[..., :3] = 255  # white everywhere: only the alpha says where the region is
    rgba[10:20, 30:50, 3] = 255
    (tmp_path / "sub").mkdir()
    Image.fromarray(rgba).save(tmp_path / "sub" / "a.png")
    doc = {"pairs": [{"kind": "masks", "handle": "sub/a.png", "target": "sub/a.png"}]}
    region, = regions_from_json(doc, SIZE, base_dir=tmp_path)
    assert region.handle.sum() == 10 * 20


def test_examples_parse_map_and_cover_every_kind():
    kinds = set()
    for spec in sorted(EXAMPLES.glob("*.json")):
        photo, = [p for p in EXAMPLES.glob(spec.stem + ".*") if p.suffix in (".png", ".jpg")]
        size = Image.open(photo).size
        regions = regions_from_json(spec, size)
        kinds |= {r.kind for r in regions}
        handle, target = dense_mapping(regions, size)
        assert len(target) > 0
    assert kinds == set(KINDS)
    assert "Attribution" in (EXAMPLES / "README.md").read_text()


# --- bad input: one clear line each ------------------------------------------------------

def pair_doc(**pair):
    return {"pairs": [pair]}


BAD = {
    "region out of bounds": (pair_doc(kind="points", handle=[[250, 10]], target=[[10, 10]]),
                             "outside the 200x150 image"),
    "negative coordinate": (pair_doc(kind="polygons", handle=tri(), target=[[-1, 5], [50, 5], [20, 40]]),
                            "outside"),
    "collinear triangle": (pair_doc(kind="polygons", handle=tri(), target=[[10, 10], [50, 50], [90, 90]]),
                           "collinear"),
    "self-intersecting quad": (pair_doc(kind="polygons", handle=quad(),
                                        target=[[20, 20], [90, 80], [90, 20], [20, 80]]),
                               "self-intersecting"),
    "mismatched vertex counts": (pair_doc(kind="polygons", handle=tri(), target=quad()),
                                 "handle has 3 vertices but target has 4"),
    "mismatched point counts": (pair_doc(kind="points", handle=[[1, 1], [2, 2]], target=[[3, 3]]),
                                "handle has 2 points but target has 1"),
    "bad vertex count": (pair_doc(kind="polygons", handle=quad() + [[5, 5]], target=quad() + [[5, 5]]),
                         "3 (triangle) or 4 (quadrilateral)"),
    "empty JSON object": ({}, "empty region file"),
    "no pairs": ({"pairs": []}, "non-empty list"),
    "unknown kind": (pair_doc(kind="blob", handle=tri(), target=tri()), "unknown kind 'blob'"),
    "missing kind": (pair_doc(handle=tri(), target=tri()), "unknown kind None"),
    "missing key": (pair_doc(kind="masks", handle={"polygon": quad()}), "missing key(s) target"),
    "unknown key": (pair_doc(kind="polygons", handle=tri(), target=tri(), radius=3), "unknown key(s) radius"),
    "unreadable mask file": (pair_doc(kind="masks", handle="nope.png", target="nope.png"),
                             "handle mask file not found"),
    "mask of wrong size": (pair_doc(kind="masks", handle="small.png", target="small.png"),
                           "masks must have the image's size"),
    "empty mask": (pair_doc(kind="masks", handle="empty.png", target={"polygon": quad()}),
                   "handle mask is empty"),
    "handle point outside region": (pair_doc(kind="region_points", region={"polygon": quad()},
                                             handle=[[150, 120]], target=[[10, 10]]),
                                    "lies outside the region"),
    "not a number": (pair_doc(kind="points", handle=[[1, "a"]], target=[[1, 1]]), "finite number"),
    "bad shape": (pair_doc(kind="points", handle=[[1, 1]], target=[[1, 1]], shape="circle"),
                  "shape 'circle'"),
    "negative radius": (pair_doc(kind="points", handle=[[1, 1]], target=[[1, 1]], radius=-2),
                        "non-negative"),
}


@pytest.fixture
def mask_dir(tmp_path):
    Image.fromarray(np.full((10, 10), 255, np.uint8)).save(tmp_path / "small.png")
    Image.fromarray(np.zeros(SIZE[::-1], np.uint8)).save(tmp_path / "empty.png")
    (tmp_path / "text.png").write_text("not an image")
    return tmp_path


@pytest.mark.parametrize("case", BAD)
def test_bad_input_gives_one_clear_line(case, mask_dir):
    doc, expected = BAD[case]
    with pytest.raises(RegionError) as info:
        regions_from_json(doc, SIZE, base_dir=mask_dir)
    message = str(info.value)
    assert expected in message and "\n" not in message


@pytest.mark.parametrize("text, expected", [("", "empty region file"), ("  \n", "empty region file"),
                                            ("{\"pairs\": [", "not valid JSON"), ("[1]", "single key")])
def test_bad_file_contents(tmp_path, text, expected):
    (tmp_path / "r.json").write_text(text)
    with pytest.raises(RegionError, match=expected):
        regions_from_json(tmp_path / "r.json", SIZE)


def test_missing_file_and_non_image_mask(mask_dir):
    with pytest.raises(RegionError, match="region file not found: .*missing.json"):
        regions_from_json(mask_dir / "missing.json", SIZE)
    with pytest.raises(RegionError, match="cannot read target mask file .*text.png"):
        regions_from_json(pair_doc(kind="masks", handle={"polygon": quad()}, target="text.png"), SIZE,
                          base_dir=mask_dir)


def test_error_names_the_pair():
    doc = {"pairs": [{"kind": "points", "handle": [[1, 1]], "target": [[1, 1]]},
                     {"kind": "polygons", "handle": tri(), "target": [[1, 1], [2, 2], [3, 3]]}]}
    with pytest.raises(RegionError, match=r"^pair 1 \(polygons\): target polygon is degenerate"):
        regions_from_json(doc, SIZE)


# --- property-based ----------------------------------------------------------------------

SIZES = st.sampled_from([(160, 128), (203, 150), (256, 256)])


@st.composite
def polygon(draw, size, n):
    """A convex, well-spread polygon of n vertices inside the image, as a JSON list."""
    w, h = size
    r = draw(st.floats(24, 48))
    cx, cy = draw(st.floats(r, w - r - 1)), draw(st.floats(r, h - r - 1))
    start = draw(st.floats(0, 2 * math.pi))
    jitter = draw(st.lists(st.floats(-0.3, 0.3), min_size=n, max_size=n))
    radii = draw(st.lists(st.floats(0.7, 1.0), min_size=n, max_size=n))
    angles = [start + 2 * math.pi * i / n + j for i, j in zip(range(n), jitter)]
    return [[cx + r * f * math.cos(a), cy + r * f * math.sin(a)] for a, f in zip(angles, radii)]


def point(size):
    w, h = size
    return st.tuples(st.floats(0, w - 1), st.floats(0, h - 1)).map(list)


@st.composite
def pair(draw, size):
    kind = draw(st.sampled_from(sorted(KINDS)))
    if kind == "masks":
        return {"kind": kind, "handle": {"polygon": draw(polygon(size, 4))},
                "target": {"polygon": draw(polygon(size, 5))}}
    if kind == "polygons":
        n = draw(st.sampled_from([3, 4]))
        return {"kind": kind, "handle": draw(polygon(size, n)), "target": draw(polygon(size, n))}
    if kind == "transform":  # a turn about the region's centre and a shift that keep it on the photo
        region = draw(polygon(size, 5))
        (cx, cy), a = np.mean(region, 0), math.radians(draw(st.floats(-30, 30)))
        dx, dy = draw(st.floats(-20, 20)), draw(st.floats(-20, 20))
        c, s = math.cos(a), math.sin(a)
        return {"kind": kind, "handle": {"polygon": region},
                "matrix": [[c, -s, cx - c * cx + s * cy + dx], [s, c, cy - s * cx - c * cy + dy]]}
    n = draw(st.integers(1, 3))
    if kind == "region_points":
        region = draw(polygon(size, 4))
        cx, cy = np.mean(region, 0)
        handle = [[cx + draw(st.floats(-3, 3)), cy + draw(st.floats(-3, 3))] for _ in range(n)]
        return {"kind": kind, "region": {"polygon": region}, "handle": handle,
                "target": draw(st.lists(point(size), min_size=n, max_size=n))}
    return {"kind": kind, "handle": draw(st.lists(point(size), min_size=n, max_size=n)),
            "target": draw(st.lists(point(size), min_size=n, max_size=n)),
            "radius": draw(st.floats(0, 30)), "shape": draw(st.sampled_from(["disk", "square"]))}


@st.composite
def valid_doc(draw):
    size = draw(SIZES)
    return size, {"pairs": draw(st.lists(pair(size), min_size=1, max_size=3))}


@SETTINGS
@given(valid_doc())
def test_random_valid_files_parse_and_map_in_bounds(case):
    size, doc = case
    regions = regions_from_json(json.loads(json.dumps(doc)), size)
    assert [r.kind for r in regions] == [p["kind"] for p in doc["pairs"]]
    handle, target = dense_mapping(regions, size)
    w, h = size[0] // 8, size[1] // 8
    for xy in (handle, target):
        assert xy.dtype == np.int64 and xy.shape == (len(target), 2) and len(xy) > 0
        assert (xy >= 0).all() and (xy[:, 0] < w).all() and (xy[:, 1] < h).all()


def _break(doc, size, how, data):
    """Make one valid doc invalid in one documented way."""
    doc = copy.deepcopy(doc)
    p = doc["pairs"][data.draw(st.integers(0, len(doc["pairs"]) - 1))]
    coords = p.get("handle") if isinstance(p.get("handle"), list) else p["handle"]["polygon"]
    if how == "out of bounds":
        coords[0][data.draw(st.integers(0, 1))] = data.draw(
            st.one_of(st.floats(-1e6, -1e-3), st.floats(float(max(size)), 1e6)))
    elif how == "unknown kind":
        p["kind"] = data.draw(st.text(max_size=8).filter(lambda k: k not in KINDS))
    elif how == "missing key":
        del p[data.draw(st.sampled_from(sorted(set(p) - {"kind", "radius", "shape"})))]
    elif how == "unknown key":
        p[data.draw(st.sampled_from(["colour", "note", "Handle"]))] = 1
    elif how == "not a number":
        coords[0][0] = data.draw(st.sampled_from([None, "1", True, [1], float("nan"), float("inf")]))
    elif how == "wrong counts":
        if p["kind"] == "masks":
            p["target"] = {"polygon": [[1, 1], [2, 1]]}  # a filled polygon needs 3 vertices
        elif p["kind"] == "transform":
            p["matrix"] = p["matrix"][:1]  # a matrix needs 2 or 3 rows
        else:
            p["target"] = p["target"] + [[1, 1]]
    elif how == "empty":
        doc = data.draw(st.sampled_from([{}, {"pairs": []}, {"pairs": None}, {"pairs": {}}]))
    return doc


@SETTINGS
@given(valid_doc(), st.sampled_from(["out of bounds", "unknown kind", "missing key", "unknown key",
                                     "not a number", "wrong counts", "empty"]), st.data())
def test_random_invalid_files_give_region_error(case, how, data):
    size, doc = case
    with pytest.raises(RegionError) as info:
        regions_from_json(_break(doc, size, how, data), size)
    assert "\n" not in str(info.value)


# --- DragBench metadata ------------------------------------------------------------------

def dragbench_meta(points):
    mask = np.zeros((64, 80), np.uint8)
    mask[10:40, 20:60] = 1
    return {"prompt": "a photo of a cat", "points": points, "mask": mask}


@pytest.mark.parametrize("protocol", [2, 4, pickle.HIGHEST_PROTOCOL])
def test_reads_dragbench_pickles(tmp_path, protocol):
    # meta_data.pkl: labeling_tool clicks (lists); meta_data_region.pkl: dense numpy pairs
    for points in ([[10, 12], [30, 14], [50, 20], [52, 40]],
                   [np.array([8, 16]), np.array([24, 16]), np.array([40, 40]), (48, 40)]):
        (tmp_path / "meta_data.pkl").write_bytes(pickle.dumps(dragbench_meta(points), protocol=protocol))
        meta = read_meta_data(tmp_path / "meta_data.pkl")
        assert meta.prompt == "a photo of a cat" and meta.mask.dtype == bool and meta.mask.sum() == 30 * 40
        np.testing.assert_array_equal(meta.handle, np.asarray(points, float)[0::2])
        np.testing.assert_array_equal(meta.target, np.asarray(points, float)[1::2])


def test_region_meta_to_latent_pairs(tmp_path):
    (tmp_path / "m.pkl").write_bytes(pickle.dumps(dragbench_meta([[8, 16], [24, 23], [79, 0], [200, 0]])))
    handle, target = latent_mapping(read_meta_data(tmp_path / "m.pkl"), (10, 8))
    np.testing.assert_array_equal(handle, [[1, 2]])  # the second pair's target is off the grid
    np.testing.assert_array_equal(target, [[3, 2]])


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _EvalExploit:
    def __reduce__(self):
        return eval, ("1 + 1",)


@pytest.mark.parametrize("payload", ["system", "eval", "class"])
def test_restricted_unpickler_refuses_other_globals(tmp_path, payload):
    marker = tmp_path / "pwned"
    evil = {"system": _Exploit(marker), "eval": _EvalExploit(), "class": Path("x")}[payload]
    data = pickle.dumps(dragbench_meta([[1, 2], [3, 4]]) | {"prompt": evil})
    with pytest.raises(UnsafePickleError, match="refusing to load"):
        restricted_load(data)
    (tmp_path / "meta_data.pkl").write_bytes(data)
    with pytest.raises(ValueError, match="refusing to load"):
        read_meta_data(tmp_path / "meta_data.pkl")
    assert not marker.exists()


@pytest.mark.parametrize("meta, expected", [({"prompt": "x"}, "expected a dict with keys"),
                                            (dragbench_meta([[1, 2], [3, 4], [5, 6]]), "alternating"),
                                            (dragbench_meta([[1, 2, 3], [4, 5, 6]]), "alternating"),
                                            (dragbench_meta([[1, 2], [3]]), "alternating"),
                                            (dragbench_meta([]), "alternating"),
                                            (dragbench_meta([[1, 2], [3, 4]]) | {"mask": np.zeros(3)}, "(H, W)")])
def test_bad_dragbench_fields(tmp_path, meta, expected):
    (tmp_path / "m.pkl").write_bytes(pickle.dumps(meta))
    with pytest.raises(ValueError, match=re.escape(expected)):
        read_meta_data(tmp_path / "m.pkl")


# --- hostile and oversized inputs ------------------------------------------------------

from regiondrag import regions as R  # noqa: E402
from regiondrag.apps import region_file  # noqa: E402
from regiondrag.apps.region_file import mask_files, read_region_file  # noqa: E402
from regiondrag.regions import check_edit_inputs  # noqa: E402


def points_doc(n=1, **extra):
    return {"pairs": [dict(kind="points", handle=[[10, 10]] * n, target=[[20, 20]] * n, **extra)]}


@pytest.mark.parametrize("doc, fragment", [
    (points_doc(radius=30000), "larger than the photo's diagonal"),
    (points_doc(radius=1e5), "larger than the photo's diagonal"),
    (points_doc(R.MAX_POINTS + 1), f"at most {R.MAX_POINTS} are read"),
    (points_doc(1000, radius=16), "cover the photo more than 16 times over"),
    ({"pairs": [dict(kind="masks", handle={"polygon": [[5, 5], [9, 9]] * 3000}, target={"polygon": quad()})]},
     f"at most {R.MAX_POLYGON_VERTICES} are read"),
    ({"pairs": [dict(kind="masks", handle={"polygon": [[5, 5], [50, 50], [100, 100]]}, target={"polygon": quad()})]},
     "encloses no area"),
    (points_doc(radius="NaN"), "radius must be a finite number, got 'NaN'"),
    (points_doc(radius=float("inf")), "radius must be a finite number, got inf"),
    (points_doc(radius=10**400), "radius must be a finite number"),
    (points_doc(radius=[1]), "radius must be a finite number"),
    (points_doc(shape=["disk"]), "shape ['disk'] is not one of"),
    ({"pairs": [dict(kind=["points"], handle=[[1, 1]], target=[[2, 2]])]}, "unknown kind ['points']"),
    ({"pairs": [dict(kind={"a": 1}, handle=[[1, 1]], target=[[2, 2]])]}, "unknown kind"),
    ({"pairs": [dict(kind="points", handle=[[10**30, 1]], target=[[2, 2]])]}, "lies outside the 200x150 image"),
    ({"pairs": [dict(kind="points", handle=[["1", 1]], target=[[2, 2]])]}, "coordinate must be a finite number"),
])
def test_caps_and_odd_values_are_refused_in_one_line(doc, fragment):
    with pytest.raises(RegionError) as e:
        regions_from_json(doc, SIZE)
    assert fragment in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_points_within_the_caps_parse():
    regions_from_json(points_doc(R.MAX_POINTS, radius=0), SIZE)
    regions_from_json(points_doc(radius=float(np.hypot(*SIZE))), SIZE)


@pytest.mark.parametrize("content, fragment", [
    (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\xff\xfe", "is not UTF-8 text"),
    (b"[" * 100_000, "nests JSON values too deeply"),
    (b'{"pairs": [' + b"1," * (region_file.MAX_REGION_FILE_BYTES // 2) + b"1]}", "more than a region file holds"),
])
def test_files_that_are_not_region_files(tmp_path, content, fragment):
    path = tmp_path / "r.json"
    path.write_bytes(content)
    with pytest.raises(RegionError, match=fragment):
        regions_from_json(path, SIZE)


def test_a_path_with_a_nul_byte_is_a_clear_error():
    with pytest.raises(RegionError, match="region file path .* has a NUL byte"):
        read_region_file("a\0b.json")


def test_mask_files_lists_every_referenced_png(tmp_path):
    doc = {"pairs": [{"kind": "masks", "handle": "a.png", "target": {"polygon": quad()}},
                     {"kind": "region_points", "region": "sub/b.png", "handle": [], "target": []},
                     {"kind": "masks", "handle": "c.png", "target": "a.png"}, "junk", {"kind": 3}]}
    assert mask_files(doc, tmp_path) == [tmp_path / "a.png", tmp_path / "sub/b.png", tmp_path / "c.png",
                                         tmp_path / "a.png"]
    assert mask_files(["not", "a", "doc"], tmp_path) == []


def test_an_rgba_mask_file_reads_its_alpha(tmp_path):
    """White paint on a transparent layer: the region is the painted part, not the whole image."""
    a = np.zeros((*SIZE[::-1], 4), np.uint8)
    a[..., :3] = 255
    a[30:60, 40:90, 3] = 255
    Image.fromarray(a).save(tmp_path / "m.png")
    region, = regions_from_json({"pairs": [{"kind": "masks", "handle": "m.png", "target": "m.png"}]}, SIZE,
                                base_dir=tmp_path)
    assert region.handle.sum() == 30 * 50


LATENT = (25, 18)


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(regions="photo.json"), "regions must be a list of region pairs"),
    (dict(regions=[{"kind": "points"}]), "pair 0 is a dict"),
    (dict(regions=None), "give either regions or a precomputed mapping"),
    (dict(mapping=(np.array([[-1, 0]]), np.array([[1, 1]]))), "mapping handle_xy[0] = (-1, 0) is outside"),
    (dict(mapping=(np.array([[0, 0]]), np.array([[25, 1]]))), "target_xy[0] = (25, 1) is outside the 25x18"),
    (dict(mapping=(np.array([[0.5, 0]]), np.array([[1, 1]]))), "integer array"),
    (dict(mapping=(np.zeros((2, 2), int), np.zeros((1, 2), int))), "as many handle as target cells"),
    (dict(mapping=np.zeros(3)), "a mapping is a pair"),
    (dict(mapping=(np.zeros((1, 2), int),) * 2, mask=np.zeros(SIZE[::-1])), "the editable mask is empty"),
    (dict(mapping=(np.zeros((1, 2), int),) * 2, mask=np.ones((10, 10))), "mask is 10x10 but the photo is 200x150"),
])
def test_edit_inputs_are_checked(kwargs, fragment):
    args = {"regions": None, "mapping": None, "mask": None, **kwargs}
    with pytest.raises(RegionError) as e:
        check_edit_inputs(args["regions"], args["mapping"], args["mask"], SIZE, LATENT)
    assert fragment in str(e.value), str(e.value)


def test_valid_edit_inputs_pass():
    check_edit_inputs(None, (np.zeros((1, 2), int), np.array([[24, 17]])), np.ones(SIZE[::-1]), SIZE, LATENT)
    check_edit_inputs(regions_from_json(points_doc(), SIZE), None, None, SIZE, LATENT)


def test_regions_to_json_is_the_inverse_of_regions_from_json(tmp_path):
    """Every kind written by regions_to_json (masks as PNGs beside the JSON) reads back field for field."""
    size = (64, 48)
    blob = np.zeros(size[::-1], bool)
    blob[10:30, 8:40] = True
    regions = [MaskPair(blob, np.roll(blob, 12, 1)),
               PolygonPair(np.array([[4.0, 4.0], [30.0, 6.0], [12.0, 30.0]]),
                           np.array([[20.0, 8.0], [50.0, 10.0], [30.0, 40.0]])),
               RegionPoints(blob, np.array([[20.0, 20.0]]), np.array([[30.0, 24.0]])),
               PointPairs(np.array([[10.0, 10.0]]), np.array([[40.0, 30.0]]), radius=6.0, shape="square")]
    doc = regions_to_json(regions, tmp_path)
    (tmp_path / "regions.json").write_text(json.dumps(doc))
    back = regions_from_json(tmp_path / "regions.json", size)
    assert [type(r) for r in back] == [type(r) for r in regions]
    for a, b in zip(regions, back):
        for f in dataclasses.fields(a):
            np.testing.assert_array_equal(np.asarray(getattr(b, f.name)), np.asarray(getattr(a, f.name)),
                                          err_msg=f.name)


# --- caps per file (each pair within its caps, the file not), and the fill rule -----------------------

def test_pairs_per_input_are_capped():
    pair = dict(kind="points", handle=[[10, 10]], target=[[20, 20]])
    assert len(regions_from_json({"pairs": [pair] * R.MAX_PAIRS}, SIZE)) == R.MAX_PAIRS
    with pytest.raises(RegionError, match=f"{R.MAX_PAIRS + 1} region pairs given; at most {R.MAX_PAIRS}"):
        regions_from_json({"pairs": [pair] * (R.MAX_PAIRS + 1)}, SIZE)
    with pytest.raises(RegionError, match=f"at most {R.MAX_PAIRS} are used"):  # the API: the same cap
        dense_mapping([PointPairs([[10, 10]], [[20, 20]])] * (R.MAX_PAIRS + 1), SIZE)


def test_a_mask_file_named_by_every_pair_is_decoded_once(tmp_path, monkeypatch):
    """Pairs naming the same two PNGs decoded them again for every pair (4096 pairs: a MemoryError)."""
    from regiondrag.image_io import load_mask

    blob = np.zeros(SIZE[::-1], np.uint8)
    blob[20:60, 30:90] = 255
    Image.fromarray(blob).save(tmp_path / "h.png")
    Image.fromarray(np.roll(blob, 40, 1)).save(tmp_path / "t.png")
    decoded = []

    def counting_load_mask(path, what):
        decoded.append(Path(path).name)
        return load_mask(path, what)

    monkeypatch.setattr(region_file, "load_mask", counting_load_mask)
    doc = {"pairs": [{"kind": "masks", "handle": "h.png", "target": "./t.png"}] * R.MAX_PAIRS}
    regions = regions_from_json(doc, SIZE, base_dir=tmp_path)
    assert sorted(decoded) == ["h.png", "t.png"]
    assert all(r.handle.sum() == 40 * 60 and r.target[20, 80] and not r.target[20, 60] for r in regions)


def test_the_masks_of_one_file_are_capped_together(tmp_path, monkeypatch):
    """Distinct mask files (and inline polygons), each the photo's size, add up to MAX_MASK_PIXELS at most."""
    blob = np.zeros(SIZE[::-1], np.uint8)
    blob[20:60, 30:90] = 255
    for i in range(4):
        Image.fromarray(np.roll(blob, 10 * i, 1)).save(tmp_path / f"m{i}.png")
    doc = {"pairs": [{"kind": "masks", "handle": "m0.png", "target": "m1.png"},
                     {"kind": "masks", "handle": "m2.png", "target": {"polygon": quad()}}]}
    monkeypatch.setattr(region_file, "MAX_MASK_PIXELS", 4 * SIZE[0] * SIZE[1])
    assert len(regions_from_json(doc, SIZE, base_dir=tmp_path)) == 2
    doc["pairs"].append({"kind": "region_points", "region": "m3.png", "handle": [[50, 30]], "target": [[60, 30]]})
    with pytest.raises(RegionError, match=r"pair 2 \(region_points\): region: the region file's masks add up to more "
                                          rf"than {4 * SIZE[0] * SIZE[1]} pixels"):
        regions_from_json(doc, SIZE, base_dir=tmp_path)


def test_complex_or_text_coordinates_are_refused_not_cast():
    """Complex polygon vertices lost their imaginary part; strings were parsed as numbers."""
    with pytest.raises(RegionError, match="handle must be an array of real numbers"):
        PolygonPair(np.array(tri()) + 1j, tri())
    with pytest.raises(RegionError, match="target must be an array of real numbers"):
        PointPairs([[1, 2]], [["3", "4"]])
    with pytest.raises(RegionError, match="region must be an array of real numbers"):
        RegionPoints(np.ones(SIZE[::-1], complex), [[1, 2]], [[3, 4]])


def test_a_self_intersecting_polygon_is_filled_even_odd():
    """A pentagram's five points are in the region, its centre is not (documented in region_file)."""
    angles = np.pi / 2 + np.arange(5) * 4 * np.pi / 5  # every second vertex of a pentagon: a star
    star = np.stack([100 + 60 * np.cos(angles), 75 - 60 * np.sin(angles)], 1)
    region, = regions_from_json(pair_doc(kind="masks", handle={"polygon": star.tolist()}, target={"polygon": quad()}),
                                SIZE)
    assert not region.handle[75, 100]  # the centre: inside the outline twice
    tips = np.stack([100 + 50 * np.cos(angles), 75 - 50 * np.sin(angles)], 1).round().astype(int)
    assert all(region.handle[y, x] for x, y in tips)
    assert "even-odd rule" in region_file.__doc__
