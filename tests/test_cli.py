"""The command line, end to end: `python -m regiondrag edit|preview`.

Runs `regiondrag.cli.main` in-process (fast, capsys) on the example photos, with a tiny
random-weight model saved as a diffusers folder (conftest's `tiny_sd_folder`); one
subprocess checks that `python -m regiondrag` starts at all.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from regiondrag.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
CHELSEA = EXAMPLES / "chelsea.png"        # 451 x 300: at --max-side 64 the models see 64 x 40 (latent 8 x 5)
CHELSEA_REGIONS = EXAMPLES / "chelsea.json"
FAST = ["--max-side", "64", "--quiet", "--device", "cpu", "--dtype", "fp32", "--steps", "10"]


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def photo_array(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def assert_one_line_error(code: int, out: str, err: str, *fragments: str) -> None:
    assert code == 2, (code, out, err)
    assert "Traceback" not in err and err.startswith("error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, err


# -- edit -------------------------------------------------------------------------------------------

def test_edit_end_to_end(capsys, tmp_path, tiny_sd_folder):
    out = tmp_path / "result" / "chelsea_edited.png"
    code, stdout, err = run(capsys, "edit", "--image", CHELSEA, "--regions", CHELSEA_REGIONS, "--out", out,
                            "--weights", tiny_sd_folder, *FAST)
    assert code == 0, err
    assert stdout.strip() == f"wrote {out}"
    assert os.listdir(out.parent) == [out.name]  # no temporary file left beside it
    result = Image.open(out)
    assert result.format == "PNG" and result.mode == "RGB" and result.size == Image.open(CHELSEA).size
    assert np.abs(photo_array(out).astype(int) - photo_array(CHELSEA)).mean() > 1  # the model did something


def test_edit_cp_then_encode_writes_the_preview(capsys, tmp_path, tiny_sd_folder):
    out, preview = tmp_path / "out.jpg", tmp_path / "preview.png"
    code, _, err = run(capsys, "edit", "--image", CHELSEA, "--regions", CHELSEA_REGIONS, "--out", out,
                       "--method", "cp_then_encode", "--preview-out", preview, "--no-attention-swap",
                       "--weights", tiny_sd_folder, *FAST)
    assert code == 0, err
    assert Image.open(out).format == "JPEG" and Image.open(out).size == (451, 300)
    assert Image.open(preview).size == (64, 40)  # the working size: what the model inverts
    small = np.asarray(Image.open(CHELSEA).resize((64, 40), Image.BICUBIC))
    assert not np.array_equal(photo_array(preview), small)


def test_edit_missing_weights(capsys, tmp_path):
    code, out, err = run(capsys, "edit", "--image", CHELSEA, "--regions", CHELSEA_REGIONS, "--out",
                         tmp_path / "out.png", "--weights", tmp_path / "no_such_model", *FAST)
    assert_one_line_error(code, out, err, "no checkpoint file or folder at", "no_such_model")
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("command, which", [("edit", "out"), ("edit", "preview-out"), ("preview", "out")])
def test_refuses_to_overwrite_the_input(capsys, tmp_path, command, which):
    image, regions = tmp_path / "photo.png", tmp_path / "photo.json"
    shutil.copy(CHELSEA, image)
    shutil.copy(CHELSEA_REGIONS, regions)
    before = image.read_bytes()
    # the same file, spelt another way
    same = tmp_path / "sub" / ".." / "photo.png"
    (tmp_path / "sub").mkdir()
    outputs = (["--out", same] if which == "out" else
               ["--out", tmp_path / "o.png", "--preview-out", same, "--method", "cp_then_encode"])
    code, out, err = run(capsys, command, "--image", image, "--regions", regions, *outputs,
                         *(["--weights", tmp_path / "unused"] if command == "edit" else []), "--max-side", "64")
    assert_one_line_error(code, out, err, "refusing to overwrite the input", "choose another output path")
    assert image.read_bytes() == before


def test_refuses_to_overwrite_the_region_file(capsys, tmp_path):
    regions = tmp_path / "r.json"
    shutil.copy(CHELSEA_REGIONS, regions)
    code, out, err = run(capsys, "preview", "--image", CHELSEA, "--regions", regions, "--out", regions)
    assert_one_line_error(code, out, err, "refusing to overwrite the input")
    assert regions.read_text() == CHELSEA_REGIONS.read_text()


# -- clear errors ------------------------------------------------------------------------------------

def write_regions(tmp_path, doc) -> Path:
    path = tmp_path / "regions.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


POINTS = dict(kind="points", handle=[[100, 100]], target=[[120, 100]])
BAD_REGIONS = {
    "out_of_bounds": ({"pairs": [dict(POINTS, target=[[460, 100]])]},
                      ["pair 0 (points)", "target point 0 (460, 100) lies outside the 451x300 image"]),
    "degenerate_polygon": ({"pairs": [dict(kind="polygons", handle=[[10, 10], [50, 50], [90, 90]],
                                           target=[[10, 10], [60, 10], [30, 60]])]},
                           ["pair 0 (polygons)", "handle polygon is degenerate", "collinear"]),
    "mismatched_counts": ({"pairs": [dict(POINTS, handle=[[100, 100], [150, 150]])]},
                          ["pair 0 (points)", "handle has 2 points but target has 1"]),
    "mismatched_polygon": ({"pairs": [dict(kind="polygons", handle=[[10, 10], [60, 10], [30, 60]],
                                           target=[[10, 10], [60, 10], [60, 60], [10, 60]])]},
                           ["handle has 3 vertices but target has 4"]),
    "empty_file": ("", ["empty region file", "regions.json"]),
    "empty_object": ({}, ["empty region file"]),
    "no_pairs": ({"pairs": []}, ['"pairs" must be a non-empty list']),
    "unknown_kind": ({"pairs": [dict(POINTS, kind="blob")]},
                     ["pair 0: unknown kind 'blob'", "masks, polygons, region_points, points"]),
    "not_json": ("{pairs: oops", ["regions.json is not valid JSON", "line 1"]),
}


@pytest.mark.parametrize("command", ["edit", "preview"])
@pytest.mark.parametrize("case", list(BAD_REGIONS))
def test_bad_region_file_is_a_one_line_error(capsys, tmp_path, command, case):
    doc, fragments = BAD_REGIONS[case]
    code, out, err = run(capsys, command, "--image", CHELSEA, "--regions", write_regions(tmp_path, doc),
                         "--out", tmp_path / "out.png", "--max-side", "64",
                         *(["--weights", tmp_path / "never_loaded"] if command == "edit" else []))
    assert_one_line_error(code, out, err, *fragments)
    assert not (tmp_path / "out.png").exists()


def test_missing_region_file(capsys, tmp_path):
    code, out, err = run(capsys, "preview", "--image", CHELSEA, "--regions", tmp_path / "nope.json",
                         "--out", tmp_path / "out.png")
    assert_one_line_error(code, out, err, "cannot read region file", "nope.json")


@pytest.mark.parametrize("command", ["edit", "preview"])
def test_unreadable_image(capsys, tmp_path, command):
    bad = tmp_path / "photo.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    code, out, err = run(capsys, command, "--image", bad, "--regions", CHELSEA_REGIONS, "--out",
                         tmp_path / "out.png", *(["--weights", tmp_path / "never_loaded"] if command == "edit" else []))
    assert_one_line_error(code, out, err, "cannot read", "photo.png", "as an image")


def test_missing_image(capsys, tmp_path):
    code, out, err = run(capsys, "preview", "--image", tmp_path / "nope.png", "--regions", CHELSEA_REGIONS,
                         "--out", tmp_path / "out.png")
    assert_one_line_error(code, out, err, "image file not found", "nope.png")


def test_unreadable_editable_mask(capsys, tmp_path):
    bad = tmp_path / "mask.png"
    bad.write_bytes(b"not a png")
    code, out, err = run(capsys, "edit", "--image", CHELSEA, "--regions", CHELSEA_REGIONS, "--mask", bad,
                         "--out", tmp_path / "out.png", "--weights", tmp_path / "never_loaded", *FAST)
    assert_one_line_error(code, out, err, "cannot read", "mask.png")


# -- preview ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("max_side", ["64", "512"])
def test_preview_draws_the_regions_where_they_are(capsys, tmp_path, max_side):
    """A PNG of the photo's size that differs from it around the regions, and nowhere far
    from them: the mapping's target cells are drawn on the working size's latent grid."""
    out = tmp_path / "preview.png"
    code, stdout, err = run(capsys, "preview", "--image", CHELSEA, "--regions", CHELSEA_REGIONS, "--out", out,
                            "--max-side", max_side)
    assert code == 0, err
    assert stdout.strip() == f"wrote {out}" and os.listdir(tmp_path) == ["preview.png"]
    image = Image.open(out)
    assert image.format == "PNG" and image.mode == "RGB" and image.size == (451, 300)
    changed = (photo_array(out) != photo_array(CHELSEA)).any(-1)
    assert changed[258, 262] and changed[137, 320]  # the target of the points pair, the dragged region
    # the regions and their targets lie in x 242 ... 352, y 105 ... 278; at --max-side 64 a
    # latent cell is 56 x 60 photo pixels, so nothing is drawn more than one cell beyond them
    ys, xs = np.nonzero(changed)
    assert xs.min() >= 242 - 60 and xs.max() <= 352 + 60 and ys.min() >= 105 - 60, (xs.min(), xs.max(), ys.min())


# -- the module entry point ------------------------------------------------------------------------

def test_python_m_regiondrag_help():
    proc = subprocess.run([sys.executable, "-m", "regiondrag", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "edit" in proc.stdout and "preview" in proc.stdout and proc.stdout.startswith("usage: python -m regiondrag")


def test_unknown_output_extension_fails_before_any_model_loads(capsys, tmp_path):
    # the weights do not exist: reaching them would give a different error
    code, out, err = run(capsys, "edit", "--image", CHELSEA, "--regions", CHELSEA_REGIONS,
                         "--out", tmp_path / "out.xyz", "--weights", tmp_path / "no_weights", *FAST)
    assert_one_line_error(code, out, err, "unknown image extension '.xyz'", ".png")


def test_max_side_below_one_latent_cell_is_a_clear_error(capsys, tmp_path):
    code, out, err = run(capsys, "preview", "--image", CHELSEA, "--regions", CHELSEA_REGIONS,
                         "--out", tmp_path / "p.png", "--max-side", "0")
    assert_one_line_error(code, out, err, "--max-side: max_side=0 must be a whole number of pixels in 8 ... 4096")


def test_edit_reads_a_dragbench_region_pickle(capsys, tmp_path, tiny_sd_folder):
    import pickle

    w, h = Image.open(CHELSEA).size
    points = [np.array([x, 100]) for x in (200, 240, 208, 248)]  # handle, target, handle, target (pixels)
    meta = {"prompt": "a cat", "points": points, "mask": np.ones((h, w), np.uint8)}
    pkl = tmp_path / "meta_data_region.pkl"
    pkl.write_bytes(pickle.dumps(meta))
    out = tmp_path / "out.png"
    code, _, err = run(capsys, "edit", "--image", CHELSEA, "--regions", pkl, "--out", out,
                       "--weights", tiny_sd_folder, *FAST)
    assert code == 0, err
    assert Image.open(out).size == (w, h)


def test_a_pickle_that_runs_code_is_refused_in_one_line(capsys, tmp_path):
    import pickle

    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    pkl = tmp_path / "meta_data_region.pkl"
    pkl.write_bytes(pickle.dumps({"prompt": "", "points": Exploit(), "mask": None}))
    code, out, err = run(capsys, "edit", "--image", CHELSEA, "--regions", pkl, "--out", tmp_path / "p.png",
                         "--weights", tmp_path / "never_loaded")
    assert_one_line_error(code, out, err, "refusing to load", "system")
