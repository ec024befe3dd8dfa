"""Fuzzing the command line: whatever the region file, the flags or the photo, a run
ends with exit code 0 and a valid output, or exit code 2, one line on stderr and no output —
never a traceback, never another exit code — and every input file's bytes are unchanged.

The default run tries a few hundred cases (seconds); `-m slow` runs a larger sweep, including
edits with a tiny random model. Hostile pickles are in test_hostile_pickles.py.
"""
import contextlib
import hashlib
import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from regiondrag.apps.cli import main

W, H = 64, 48  # the fuzzed photo: small, so that a valid preview takes milliseconds
FAST = settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
SWEEP = settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
NEVER_LOADED = ["--weights", "/nonexistent/never_loaded"]


def photo_bytes(fmt: str) -> bytes:
    y, x = np.mgrid[:H, :W]
    buf = io.BytesIO()
    Image.fromarray(np.stack([x * 4, y * 5, (x + y) * 2], -1).astype(np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


PNG, JPEG = photo_bytes("PNG"), photo_bytes("JPEG")


VALID_REGIONS = b'{"pairs": [{"kind": "points", "handle": [[10, 10]], "target": [[30, 20]]}]}'


@contextlib.contextmanager
def workspace(regions: bytes = VALID_REGIONS, photo: bytes = PNG):
    """A folder with photo.png, a mask, regions.json; yields (folder, run) where run(*argv) checks the property."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        mask = np.zeros((H, W), np.uint8)
        mask[10:30, 8:40] = 255
        Image.fromarray(mask).save(root / "mask.png")
        (root / "photo.png").write_bytes(photo)
        (root / "regions.json").write_bytes(regions)
        inputs = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.iterdir()}

        def run(*argv, output: Path = root / "out" / "result.png") -> int:
            existed = output.exists()  # an input named as the output
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main([str(a) for a in argv])
            err = err.getvalue()
            assert "Traceback" not in err, err
            if code == 0:
                assert out.getvalue() == f"wrote {output}\n"
                with Image.open(output) as result:
                    result.load()
                    assert result.mode == "RGB" and result.size == Image.open(root / "photo.png").size
            else:
                assert code == 2, (code, err)
                assert err.startswith("error: ") and err.count("\n") == 1, err
                assert output.exists() == existed
            assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in inputs} == inputs
            assert not list(root.rglob("*.tmp")), "a temporary file was left behind"
            return code

        yield root, run


def preview(run, root: Path, *flags) -> int:
    return run("preview", "--image", root / "photo.png", "--regions", root / "regions.json",
               "--out", root / "out" / "result.png", *flags)


# -- region files ----------------------------------------------------------------------------------

coordinate = st.one_of(st.integers(-5, 70), st.floats(-5, 70), st.floats(allow_nan=True, allow_infinity=True),
                       st.integers(-10**30, 10**30), st.text(max_size=3), st.none(), st.booleans())
good_coordinate = st.one_of(st.integers(0, 47), st.floats(0, 47.9))
point = st.one_of(st.lists(good_coordinate, min_size=2, max_size=2), st.lists(coordinate, max_size=3), coordinate)
points = st.one_of(st.lists(point, min_size=1, max_size=6), point, st.just([]))
mask_spec = st.one_of(st.sampled_from(["mask.png", "missing.png", "photo.png", "regions.json", "../x.png", "", "."]),
                      st.fixed_dictionaries({"polygon": points}), coordinate)
value = st.one_of(points, mask_spec, coordinate)
kind = st.one_of(st.sampled_from(["masks", "polygons", "region_points", "points"]), coordinate)
pair = st.one_of(
    st.fixed_dictionaries({"kind": kind}, optional={
        "handle": st.one_of(points, mask_spec), "target": st.one_of(points, mask_spec), "region": mask_spec,
        "radius": st.one_of(st.floats(0, 40), coordinate), "shape": st.one_of(st.sampled_from(["disk", "square"]),
                                                                              coordinate),
        "extra": value}),
    value)
document = st.one_of(st.fixed_dictionaries({"pairs": st.lists(pair, max_size=4)}),
                     st.dictionaries(st.text(max_size=5), value, max_size=2), value)


def dump(doc) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()


@FAST
@given(document)
def test_fuzz_region_files(doc):
    with workspace(dump(doc)) as (root, run):
        preview(run, root)


@FAST
@given(st.binary(max_size=200), st.sampled_from([b"", b'{"pairs": [', b'{"pairs": [{"kind": "points", "handle": ']))
def test_fuzz_region_file_bytes(tail, head):
    with workspace(head + tail) as (root, run):
        preview(run, root)


# -- flags -----------------------------------------------------------------------------------------

number_text = st.one_of(st.integers(-3, 2**65).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str),
                        st.sampled_from(["0", "1", "0.5", "1e3", "nan", "-inf", "", " 2", "0x10", "1_000"]),
                        st.text(max_size=4))
FLAG_VALUES = {
    "--steps": number_text, "--start-t": number_text, "--end-t": number_text, "--noise-scale": number_text,
    "--seed": number_text, "--ip-scale": number_text, "--point-fraction": number_text, "--max-side": number_text,
    "--method": st.sampled_from(["encode_then_cp", "cp_then_encode", "other"]),
    "--grid": st.sampled_from(["reference", "consistent", ""]),
    "--paste-schedule": st.sampled_from(["every_step", "until_end_t", "single_step", "x"]),
    "--device": st.sampled_from(["cpu", "cuda", "cuda:7", "cpu ", "meta", "", "tpu"]),
    "--dtype": st.sampled_from(["fp16", "bf16", "fp32", "fp64"]),
    "--prompt": st.text(max_size=10), "--mask": st.sampled_from(["mask.png", "missing.png", "regions.json"]),
    "--preview-out": st.sampled_from(["p.png", "p.xbm", "photo.png", "mask.png", "out/result.png"]),
    "--ip-adapter": st.sampled_from(["/nonexistent/adapter"]),
}
SWITCHES = ["--no-attention-swap", "--ip-plain-tokens", "--quiet"]
flags = st.tuples(st.dictionaries(st.sampled_from(sorted(FLAG_VALUES)), st.just(None), max_size=5),
                  st.lists(st.sampled_from(SWITCHES), max_size=2, unique=True), st.data())


def draw_flags(chosen, switches, data, root: Path) -> list[str]:
    argv = []
    for flag in chosen:
        text = data.draw(FLAG_VALUES[flag])
        argv += [flag, str(root / text) if flag in ("--mask", "--preview-out") else text]
    return argv + switches


@FAST
@given(flags)
def test_fuzz_edit_flags_are_checked_before_the_model(drawn):
    """With weights that do not exist, every run ends in exit 2: the flags' own error, or the weights' one."""
    chosen, switches, data = drawn
    with workspace() as (root, run):
        argv = draw_flags(chosen, switches, data, root)
        assert run("edit", "--image", root / "photo.png", "--regions", root / "regions.json",
                   "--out", root / "out" / "result.png", *argv, *NEVER_LOADED) == 2


@FAST
@given(number_text, st.sampled_from(["out/result.png", "result.xbm", "result.palm", "out", "photo.png",
                                     "regions.json", "result.PNG", "result.jpeg", "result.webp", "result.tif"]))
def test_fuzz_preview_flags_and_outputs(max_side, out_name):
    with workspace() as (root, run):
        out = root / out_name
        run("preview", "--image", root / "photo.png", "--regions", root / "regions.json", "--out", out,
            "--max-side", max_side, output=out)


# -- malformed images ------------------------------------------------------------------------------

def mutated(data: bytes, draw) -> bytes:
    blob = bytearray(data)
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.integers(0, len(blob)))
        op = draw(st.sampled_from(["flip", "insert", "cut", "truncate"]))
        if op == "flip" and i < len(blob):
            blob[i] = draw(st.integers(0, 255))
        elif op == "insert":
            blob[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "cut":
            del blob[i:i + draw(st.integers(1, 64))]
        else:
            del blob[i:]
    return bytes(blob)


@FAST
@given(st.sampled_from([PNG, JPEG]), st.data())
def test_fuzz_malformed_images(original, data):
    with workspace(photo=mutated(original, data.draw)) as (root, run):
        preview(run, root)


# -- the larger sweep (CI's slow run) --------------------------------------------------------------

@pytest.mark.slow
@SWEEP
@given(document)
def test_sweep_region_files(doc):
    with workspace(dump(doc)) as (root, run):
        preview(run, root)


@pytest.mark.slow
@SWEEP
@given(flags)
def test_sweep_edit_flags(drawn):
    chosen, switches, data = drawn
    with workspace() as (root, run):
        assert run("edit", "--image", root / "photo.png", "--regions", root / "regions.json",
                   "--out", root / "out" / "result.png", *draw_flags(chosen, switches, data, root), *NEVER_LOADED) == 2


@pytest.mark.slow
@SWEEP
@given(st.sampled_from([PNG, JPEG]), st.data())
def test_sweep_malformed_images(original, data):
    with workspace(photo=mutated(original, data.draw)) as (root, run):
        preview(run, root)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    from conftest import save_diffusers_folder

    return save_diffusers_folder(tmp_path_factory.mktemp("fuzz_sd"))


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(document, flags)
def test_sweep_edits_with_a_tiny_model(tiny_weights, doc, drawn):
    """Real edits: a valid region file and flags give a result, anything else one line."""
    chosen, switches, data = drawn
    chosen = {k: v for k, v in chosen.items() if k not in ("--device", "--dtype", "--ip-adapter")}
    with workspace(dump(doc) if data.draw(st.booleans()) else VALID_REGIONS) as (root, run):
        run("edit", "--image", root / "photo.png", "--regions", root / "regions.json", "--out",
            root / "out" / "result.png", *draw_flags(chosen, switches, data, root), "--weights", tiny_weights,
            "--device", "cpu", "--dtype", "fp32", "--quiet")


def test_the_property_holds_for_a_valid_preview():
    """The checker itself: a valid preview passes it as exit 0 (the fuzz cases are not all refusals)."""
    with workspace() as (root, run):
        assert preview(run, root) == 0
