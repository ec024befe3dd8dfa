"""The command line, end to end: `python -m regiondrag edit|preview`.

Runs `regiondrag.apps.cli.main` in-process (fast, capsys) on the example photos, with a tiny
random-weight model saved as a diffusers folder (conftest's `tiny_sd_folder`); one
subprocess checks that `python -m regiondrag` starts at all.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from regiondrag import precision
from regiondrag.apps.cli import main
from regiondrag.pipeline import RegionDragPipeline
from conftest import ALLOCATION_FAILURES

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


@pytest.mark.parametrize("flags, dtype, why", [
    (frozenset(), "float32", "has no native bfloat16 arithmetic"),
    (frozenset({"avx512_bf16"}), "bfloat16", "this CPU computes bfloat16 natively (avx512_bf16)"),
])
def test_the_default_dtype_and_why_are_one_line(capsys, tmp_path, tiny_sd_folder, monkeypatch, flags, dtype, why):
    """Without --dtype, a CPU edit runs in bfloat16 only where the CPU has bfloat16 arithmetic, and says so."""
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    loaded = []
    monkeypatch.setattr(RegionDragPipeline, "edit", lambda pipe, *a, **kw: loaded.append(pipe.dtype) or
                        SimpleNamespace(image=Image.new("RGB", (451, 300)), preview=None))
    code, _, err = run(capsys, "edit", "--image", CHELSEA, "--regions", CHELSEA_REGIONS, "--out", tmp_path / "o.png",
                       "--weights", tiny_sd_folder, "--device", "cpu")
    assert code == 0, err
    assert [str(d) for d in loaded] == [f"torch.{dtype}"]
    said = [line for line in err.splitlines() if line.startswith("running on")]  # (transformers' bars aside)
    assert len(said) == 1 and said[0].startswith(f"running on cpu in {dtype} (") and why in said[0], err


@pytest.mark.parametrize("flags, advice", [(frozenset(), "use fp32"), (frozenset({"amx_bf16"}), "use bf16 (native here) or fp32")])
def test_emulated_fp16_on_cpu_is_refused_in_one_line(capsys, tmp_path, monkeypatch, flags, advice):
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    code, out, err = run(capsys, "edit", "--image", CHELSEA, "--regions", CHELSEA_REGIONS, "--out", tmp_path / "o.png",
                         "--device", "cpu", "--dtype", "fp16", *NEVER_LOADED)
    assert_one_line_error(code, out, err, "--dtype fp16: float16 on this CPU is emulated", advice)
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags | {"avx512_fp16"})  # native: let through to the load
    code, out, err = run(capsys, "edit", "--image", CHELSEA, "--regions", CHELSEA_REGIONS, "--out", tmp_path / "o.png",
                         "--device", "cpu", "--dtype", "fp16", *NEVER_LOADED)
    assert_one_line_error(code, out, err, "no checkpoint file or folder at")


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
    assert_one_line_error(code, out, err, "region file not found", "nope.json")


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


# -- no input is overwritten, flags are checked before the model, one line for everything ------------

import hashlib  # noqa: E402
import signal  # noqa: E402
import textwrap  # noqa: E402

NEVER_LOADED = ["--weights", "/nonexistent/never_loaded"]  # reaching the model would say "no checkpoint"


def digest(*paths) -> list[str]:
    return [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]


def mask_regions(tmp_path) -> tuple[Path, Path, Path]:
    """A photo, a region JSON that references two mask PNGs (one in a subfolder), and that JSON's path."""
    image = tmp_path / "photo.png"
    shutil.copy(CHELSEA, image)
    w, h = Image.open(CHELSEA).size
    m = np.zeros((h, w), np.uint8)
    m[100:160, 200:260] = 255
    (tmp_path / "masks").mkdir()
    Image.fromarray(m).save(tmp_path / "masks" / "handle.png")
    Image.fromarray(np.roll(m, 40, 1)).save(tmp_path / "target.png")
    regions = write_regions(tmp_path, {"pairs": [{"kind": "masks", "handle": "masks/handle.png",
                                                  "target": "target.png"}]})
    return image, regions, tmp_path / "masks" / "handle.png"


OUT_ONTO_INPUT = ["handle_mask", "target_mask", "json", "hard_link_of_image", "symlink_to_mask"]


@pytest.mark.parametrize("command, target", [(c, t) for c in ("edit", "preview") for t in OUT_ONTO_INPUT]
                         + [("edit", "editable_mask")])  # preview reads no editable mask
def test_out_may_not_name_any_input(capsys, tmp_path, command, target):
    image, regions, handle_mask = mask_regions(tmp_path)
    editable = tmp_path / "editable.png"
    Image.fromarray(np.full(Image.open(image).size[::-1], 255, np.uint8)).save(editable)
    inputs = [image, regions, handle_mask, tmp_path / "target.png", editable]
    before = digest(*inputs)
    out = {"handle_mask": handle_mask, "target_mask": tmp_path / "sub" / ".." / "target.png", "json": regions,
           "hard_link_of_image": tmp_path / "linked.png", "symlink_to_mask": tmp_path / "link.png",
           "editable_mask": editable}[target]
    if target == "hard_link_of_image":
        os.link(image, out)
    if target == "symlink_to_mask":
        os.symlink(handle_mask, out)
    (tmp_path / "sub").mkdir()
    extra = ["--mask", editable, *NEVER_LOADED] if command == "edit" else []
    code, stdout, err = run(capsys, command, "--image", image, "--regions", regions, "--out", out, *extra)
    assert_one_line_error(code, stdout, err, "refusing to overwrite the input", "choose another output path")
    assert digest(*inputs) == before


def test_out_may_not_name_the_dragbench_pickle(capsys, tmp_path):
    import pickle

    w, h = Image.open(CHELSEA).size
    pkl = tmp_path / "meta_data_region.pkl"
    pkl.write_bytes(pickle.dumps({"prompt": "", "points": [(200, 100), (240, 100)], "mask": np.ones((h, w), np.uint8)}))
    before = digest(pkl)
    os.link(pkl, tmp_path / "same.png")
    code, out, err = run(capsys, "edit", "--image", CHELSEA, "--regions", pkl, "--out", tmp_path / "same.png",
                         *NEVER_LOADED)
    assert_one_line_error(code, out, err, "refusing to overwrite the input")
    assert digest(pkl) == before


def test_out_and_preview_out_must_differ(capsys, tmp_path):
    code, out, err = run(capsys, "edit", "--image", CHELSEA, "--regions", CHELSEA_REGIONS, "--out", tmp_path / "a.png",
                         "--preview-out", tmp_path / "a.png", "--method", "cp_then_encode", *NEVER_LOADED)
    assert_one_line_error(code, out, err, "--out and --preview-out are both")


BAD_FLAGS = {
    "steps_0": (["--steps", "0"], "--steps: steps=0 must be a whole number in 2 ... 1000"),
    "steps_1": (["--steps", "1"], "--steps: steps=1"),
    "steps_2": (["--steps", "2"], "--steps: steps=2 with start_t=0.5 steps past the last training timestep (999)"),
    "steps_word": (["--steps", "ten"], "argument --steps: invalid int value: 'ten'"),
    "start_t_0": (["--start-t", "0"], "--start-t: start_t=0 with steps=20 inverts int(start_t * steps) = 0 steps"),
    "start_t_1": (["--start-t", "1.0"], "--start-t: start_t=1 with steps=20 inverts"),
    "start_t_1.5": (["--start-t", "1.5"], "--start-t: start_t=1.5"),
    "start_t_nan": (["--start-t", "nan"], "--start-t: start_t=nan"),
    "start_t_inf": (["--start-t", "inf"], "--start-t: start_t=inf"),
    "start_t_no_step": (["--start-t", "0.01"], "inverts int(start_t * steps) = 0 steps; that must be 1 ... 19"),
    "end_t_nan": (["--end-t", "nan", "--paste-schedule", "until_end_t"], "--end-t: end_t=nan"),
    "end_t_ignored": (["--end-t", "0.3"], "--end-t has no effect without --paste-schedule until_end_t"),
    "noise_negative": (["--noise-scale", "-0.5"], "--noise-scale: noise_scale=-0.5"),
    "seed_2_64": (["--seed", str(2**64)], "--seed: seed=18446744073709551616 must be a whole number in 0 ... 2**64 - 1"),
    "seed_negative": (["--seed", "-1"], "--seed: seed=-1"),
    "point_fraction": (["--point-fraction", "1.5"], "--point-fraction: point_fraction=1.5 must be"),
    "max_side_huge": (["--max-side", "100000"], "--max-side: max_side=100000"),
    "preview_out_ignored": (["--preview-out", "p.png"], "--preview-out has no effect without --method cp_then_encode"),
    "ip_scale_ignored": (["--ip-scale", "0.7"], "--ip-scale has no effect without --ip-adapter"),
    "ip_plain_ignored": (["--ip-plain-tokens"], "--ip-plain-tokens has no effect without --ip-adapter"),
    "device_space": (["--device", "cpu "], "--device 'cpu ' is not a device"),
    "device_tpu": (["--device", "meta"], "--device 'meta': use cpu, cuda or cuda:N"),
    "unknown_flag": (["--stepz", "3"], "unrecognized arguments: --stepz 3"),
    "bad_choice": (["--method", "magic"], "argument --method: invalid choice: 'magic'"),
    "out_xbm": (["--out", "x.xbm"], "cannot write an RGB image as XBM"),
    "out_palm": (["--out", "x.palm"], "cannot write an RGB image as PALM"),
    "out_msp": (["--out", "x.msp"], "cannot write an RGB image as MSP"),
    "out_folder": (["--out", "."], "is a folder"),
    "nul_in_path": (["--mask", "a\0b.png"], "has a NUL byte"),
}


@pytest.mark.parametrize("case", list(BAD_FLAGS))
def test_bad_flags_are_refused_before_any_model_loads(capsys, tmp_path, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    flags, fragment = BAD_FLAGS[case]
    out = [] if "--out" in flags else ["--out", tmp_path / "out.png"]
    code, stdout, err = run(capsys, "edit", "--image", CHELSEA, "--regions", CHELSEA_REGIONS, *out, *flags,
                            *NEVER_LOADED)
    assert_one_line_error(code, stdout, err, fragment)
    assert os.listdir(tmp_path) == []


def test_valid_flags_reach_the_model(capsys, tmp_path):
    """The same checks let a valid command through: it fails only where the weights are loaded."""
    code, out, err = run(capsys, "edit", "--image", CHELSEA, "--regions", CHELSEA_REGIONS, "--out", tmp_path / "o.png",
                         "--steps", "3", "--start-t", "0.5", "--seed", str(2**64 - 1), "--end-t", "0.3",
                         "--paste-schedule", "until_end_t", "--device", "cpu", *NEVER_LOADED)
    assert_one_line_error(code, out, err, "no checkpoint file or folder at")


def test_edit_with_the_fewest_steps_runs(capsys, tmp_path, tiny_sd_folder):
    code, _, err = run(capsys, "edit", "--image", CHELSEA, "--regions", CHELSEA_REGIONS, "--out", tmp_path / "o.png",
                       "--weights", tiny_sd_folder, *FAST[:-2], "--steps", "3")
    assert code == 0, err


def test_help_describes_the_region_format_and_every_default():
    import argparse

    from regiondrag.apps.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        text = command.format_help()
        if name != "ui":  # the browser editor reads no region file
            assert '{"pairs": [PAIR, ...]}' in text and '"kind": "polygons"' in text and "alpha > 0" in text
        for action in command._actions:
            if action.option_strings and not action.required and not isinstance(
                    action, (argparse._HelpAction, argparse._StoreTrueAction)):
                assert "default" in (action.help or ""), (name, action.option_strings)
        flat = " ".join(text.split())  # help wraps lines
        assert "(default: 20)" in flat or name in ("preview", "ui")
        assert "SD1.5 512, SD2.1 768, SDXL 1024" in flat


def test_version():
    proc = subprocess.run([sys.executable, "-m", "regiondrag", "--version"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "python -m regiondrag 0.1.0"


@pytest.mark.parametrize("name, content, fragment", [
    ("png_as_regions.json", CHELSEA.read_bytes(), "is not UTF-8 text"),
    ("deep.json", b"[" * 50_000, "nests JSON values too deeply"),
    ("nan.json", b'{"pairs": [{"kind": "points", "handle": [["NaN", 1]], "target": [[1, 1]]}]}',
     "coordinate must be a finite number, got 'NaN'"),
    ("unhashable.json", b'{"pairs": [{"kind": {"a": 1}, "handle": [[1, 1]], "target": [[1, 1]]}]}', "unknown kind"),
    ("huge_int.json", b'{"pairs": [{"kind": "points", "handle": [[1' + b"0" * 400 + b', 1]], "target": [[1, 1]]}]}',
     "must be a finite number"),
    ("radius.json", b'{"pairs": [{"kind": "points", "handle": [[1, 1]], "target": [[9, 9]], "radius": 30000}]}',
     "larger than the photo's diagonal"),
    ("million.json", json.dumps({"pairs": [dict(kind="points", handle=[[1, 1]] * 10**6, target=[[2, 2]] * 10**6)]})
     .encode(), "more than a region file holds"),
])
def test_region_files_that_crashed_are_one_line(capsys, tmp_path, name, content, fragment):
    path = tmp_path / name
    path.write_bytes(content)
    code, out, err = run(capsys, "preview", "--image", CHELSEA, "--regions", path, "--out", tmp_path / "o.png")
    assert_one_line_error(code, out, err, fragment)


def test_a_decompression_bomb_photo_is_one_line(capsys, tmp_path):
    import struct
    import zlib

    data = bytearray(CHELSEA.read_bytes())
    data[16:24] = struct.pack(">II", 200_000, 200_000)  # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bytes(data))
    code, out, err = run(capsys, "preview", "--image", bomb, "--regions", CHELSEA_REGIONS, "--out", tmp_path / "o.png")
    assert_one_line_error(code, out, err, "bomb.png", "pixels; downscale it")


def test_41_pairs_onto_one_cell_preview_finishes(capsys, tmp_path):
    regions = write_regions(tmp_path, {"pairs": [dict(kind="points", handle=[[10 + 5 * i, 100] for i in range(41)],
                                                      target=[[3, 3]] * 41, radius=0)]})
    code, _, err = run(capsys, "preview", "--image", CHELSEA, "--regions", regions, "--out", tmp_path / "p.png")
    assert code == 0, err


def test_exif_rotated_photo_takes_displayed_coordinates(capsys, tmp_path):
    """Stored 451 x 300 with Orientation=6: displayed 300 x 451, so y = 400 is inside it; the preview is upright."""
    exif = Image.Exif()
    exif[0x0112] = 6
    photo = tmp_path / "rotated.jpg"
    Image.open(CHELSEA).convert("RGB").save(photo, exif=exif)
    regions = write_regions(tmp_path, {"pairs": [dict(kind="points", handle=[[150, 400]], target=[[150, 360]])]})
    code, _, err = run(capsys, "preview", "--image", photo, "--regions", regions, "--out", tmp_path / "p.png")
    assert code == 0, err
    assert Image.open(tmp_path / "p.png").size == (300, 451)


def test_an_empty_editable_mask_is_refused(capsys, tmp_path):
    mask = tmp_path / "mask.png"
    Image.new("L", Image.open(CHELSEA).size, 0).save(mask)
    code, out, err = run(capsys, "edit", "--image", CHELSEA, "--regions", CHELSEA_REGIONS, "--mask", mask,
                         "--out", tmp_path / "o.png", *NEVER_LOADED)
    assert_one_line_error(code, out, err, "the editable mask is empty")


def test_an_rgba_editable_mask_reads_its_alpha(capsys, tmp_path, tiny_sd_folder):
    """White paint everywhere, opaque only over the regions: outside them the photo stays as it was."""
    w, h = Image.open(CHELSEA).size
    rgba = np.full((h, w, 4), 255, np.uint8)
    rgba[..., 3] = 0
    rgba[100:290, 230:370, 3] = 255
    mask = tmp_path / "mask.png"
    Image.fromarray(rgba).save(mask)
    out = tmp_path / "o.png"
    code, _, err = run(capsys, "edit", "--image", CHELSEA, "--regions", CHELSEA_REGIONS, "--mask", mask, "--out", out,
                       "--weights", tiny_sd_folder, *FAST)
    assert code == 0, err
    changed = (photo_array(out) != photo_array(CHELSEA)).any(-1)
    assert changed[100:290, 230:370].mean() > 0.5 and not changed[:90].any() and not changed[:, :220].any()


def test_outputs_have_the_umask_permissions(capsys, tmp_path):
    old = os.umask(0o027)
    try:
        code, _, err = run(capsys, "preview", "--image", CHELSEA, "--regions", CHELSEA_REGIONS, "--out",
                           tmp_path / "p.png")
    finally:
        os.umask(old)
    assert code == 0, err
    assert (tmp_path / "p.png").stat().st_mode & 0o777 == 0o640


# A preview whose PNG encoder stalls halfway through writing: the test signals it there.
STALLING_PREVIEW = textwrap.dedent("""
    import sys, time
    from PIL import Image
    real_save = Image.Image.save
    def stalling_save(self, fp, *args, **kwargs):
        real_save(self, fp, *args, **kwargs)
        if hasattr(fp, "name"):  # the output file, not the up-front format check
            fp.flush()
            print("saving", flush=True)
            time.sleep(60)
    Image.Image.save = stalling_save
    from regiondrag.apps.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.parametrize("signum, code, name", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGHUP, 129, "SIGHUP"),
                                                (signal.SIGINT, 130, "Ctrl-C")])
def test_a_signal_during_the_save_leaves_no_file(tmp_path, signum, code, name):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", STALLING_PREVIEW, "preview", "--image", str(CHELSEA),
                             "--regions", str(CHELSEA_REGIONS), "--out", str(out_dir / "p.png")],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # a shell's background job ignores SIGINT, and Python keeps an inherited SIG_IGN:
                            # give the child the default, as a terminal would
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout.readline() == "saving\n"
        assert len(os.listdir(out_dir)) == 1  # the temporary file, half written
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code, err
    assert err.count("\n") == 1 and err.startswith("error: ") and name in err and "Traceback" not in err, err
    assert os.listdir(out_dir) == []


# -- special files, names the file system refuses, memory, interrupts: one line each -------------------

def run_subprocess(*argv, timeout=120, **kwargs) -> subprocess.CompletedProcess:
    """`python -m regiondrag ...` in a child (a hang or a memory limit must not take the test run along)."""
    return subprocess.run([sys.executable, "-m", "regiondrag", *map(str, argv)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def assert_one_line_exit(proc: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    err = proc.stderr.splitlines()[-1] if proc.stderr else ""
    assert proc.returncode == code and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert err.startswith("error: ") and all(f in err for f in fragments), proc.stderr[-2000:]


@pytest.mark.parametrize("link", [False, True])
def test_a_region_file_of_dev_zero_is_refused_not_read(tmp_path, link):
    """/dev/zero says it has 0 bytes and never ends: it was read to a MemoryError (or a DragBench pickle linked to it)."""
    regions = "/dev/zero"
    if link:
        regions = tmp_path / "meta_data_region.pkl"
        regions.symlink_to("/dev/zero")
    proc = run_subprocess("edit", "--image", CHELSEA, "--regions", regions, "--out", tmp_path / "p.png", *NEVER_LOADED,
                          timeout=60)
    assert_one_line_exit(proc, 2, "is a character device, not a regular file")
    assert not (tmp_path / "p.png").exists()


@pytest.mark.parametrize("which", ["--image", "--mask", "mask file"])
def test_a_fifo_input_is_named_as_one(capsys, tmp_path, which):
    """A FIFO was reported as "not found" (and --mask's message read "--mask file file not found")."""
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    image, mask, regions = CHELSEA, [], CHELSEA_REGIONS
    if which == "--image":
        image = fifo
    elif which == "--mask":
        mask = ["--mask", fifo]
    else:
        regions = write_regions(tmp_path, {"pairs": [{"kind": "masks", "handle": "pipe.png",
                                                      "target": {"polygon": [[10, 10], [60, 10], [60, 60]]}}]})
    code, out, err = run(capsys, "edit", "--image", image, "--regions", regions, *mask, "--out", tmp_path / "o.png",
                         *NEVER_LOADED)
    assert_one_line_error(code, out, err, "pipe.png is a FIFO (named pipe), not a regular file")
    assert "file file" not in err


def test_a_mask_path_with_a_nul_byte_is_one_line(capsys, tmp_path):
    regions = write_regions(tmp_path, {"pairs": [{"kind": "masks", "handle": "a\0b.png", "target": "c.png"}]})
    code, out, err = run(capsys, "preview", "--image", CHELSEA, "--regions", regions, "--out", tmp_path / "o.png")
    assert_one_line_error(code, out, err, "pair 0 (masks): handle mask file path", "has a NUL byte")


def test_an_output_name_too_long_for_the_file_system_is_one_line(capsys, tmp_path):
    name_max = os.pathconf(tmp_path, "PC_NAME_MAX")
    for length in (name_max + 1, name_max - 4):  # too long itself; too long for its temporary file (+14 bytes)
        out = tmp_path / ("a" * (length - 4) + ".png")
        code, stdout, err = run(capsys, "preview", "--image", CHELSEA, "--regions", CHELSEA_REGIONS, "--out", out)
        assert_one_line_error(code, stdout, err, f"is {length} bytes", f"takes at most {name_max - 14} here")
    assert os.listdir(tmp_path) == []


def test_an_output_with_a_trailing_slash_is_refused(capsys, tmp_path):
    """`--out out/res.png/` wrote out/res.png: a slash names a folder, so it is refused, not dropped."""
    code, out, err = run(capsys, "preview", "--image", CHELSEA, "--regions", CHELSEA_REGIONS,
                         "--out", f"{tmp_path}/out/res.png/")
    assert_one_line_error(code, out, err, "ends with a slash, so it names a folder")
    assert os.listdir(tmp_path) == []


def test_a_read_only_output_is_kept(capsys, tmp_path):
    """An existing read-only --out was replaced and its mode changed to 644."""
    out = tmp_path / "p.png"
    out.write_bytes(b"keep me")
    out.chmod(0o444)
    code, stdout, err = run(capsys, "preview", "--image", CHELSEA, "--regions", CHELSEA_REGIONS, "--out", out)
    assert_one_line_error(code, stdout, err, "exists and is read-only; refusing to replace it")
    assert out.read_bytes() == b"keep me" and out.stat().st_mode & 0o777 == 0o444
    assert os.listdir(tmp_path) == ["p.png"]


def test_a_replaced_output_keeps_its_mode(capsys, tmp_path):
    out = tmp_path / "p.png"
    out.write_bytes(b"old")
    out.chmod(0o600)
    code, _, err = run(capsys, "preview", "--image", CHELSEA, "--regions", CHELSEA_REGIONS, "--out", out)
    assert code == 0, err
    assert Image.open(out).size == (451, 300) and out.stat().st_mode & 0o777 == 0o600


def test_a_prompt_longer_than_the_cap_is_refused_before_the_model(capsys, tmp_path):
    from regiondrag.config import MAX_PROMPT_CHARS

    code, out, err = run(capsys, "edit", "--image", CHELSEA, "--regions", CHELSEA_REGIONS, "--out", tmp_path / "o.png",
                         "--prompt", "a cat " * (MAX_PROMPT_CHARS // 6 + 1), *NEVER_LOADED)
    assert_one_line_error(code, out, err, "--prompt", f"longer than {MAX_PROMPT_CHARS}")


def test_running_out_of_memory_is_one_line_and_leaves_no_output(tmp_path, tiny_sd_folder):
    """`edit --max-side 4096` where the memory does not suffice (here: a 3 GiB address-space limit) ended in
    torch's allocator traceback."""
    import resource

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))

    out = tmp_path / "out.png"
    proc = run_subprocess("edit", "--image", CHELSEA, "--regions", CHELSEA_REGIONS, "--out", out, "--weights",
                          tiny_sd_folder, "--device", "cpu", "--dtype", "fp32", "--quiet", "--max-side", "4096",
                          timeout=300, preexec_fn=limit_memory)
    assert_one_line_exit(proc, 2, "out of memory: an allocation of", "GiB failed", "--max-side", "--dtype fp16",
                         "--device cuda")
    assert os.listdir(tmp_path) == []


def test_ctrl_c_while_importing_is_one_line(tmp_path):
    """Ctrl-C in the seconds `python -m regiondrag` spends importing torch was a KeyboardInterrupt traceback."""
    proc = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "regiondrag", "preview", "--image", str(CHELSEA),
                             "--regions", str(CHELSEA_REGIONS), "--out", str(tmp_path / "p.png")], cwd=ROOT,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in proc.stderr:  # -X importtime reports each module as it is imported
            if "torch" in line:
                proc.send_signal(signal.SIGINT)
                break
        err = proc.stderr.read()
        proc.wait(timeout=60)
    finally:
        proc.kill()
    lines = [line for line in err.splitlines() if not line.startswith("import time:")]
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert lines == ["error: interrupted (Ctrl-C) while starting; nothing was written"], lines
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("fail, size", ALLOCATION_FAILURES)
def test_every_kind_of_allocation_failure_is_the_same_line(capsys, tmp_path, monkeypatch, fail, size):
    """CUDA's OutOfMemoryError (no GPU here to run out of), torch's CPU allocator, numpy's MemoryError."""
    from regiondrag.apps import cli

    monkeypatch.setattr(cli, "run_preview", lambda args: fail())
    code, out, err = run(capsys, "preview", "--image", CHELSEA, "--regions", CHELSEA_REGIONS, "--out", tmp_path / "o.png")
    assert_one_line_error(code, out, err, f"out of memory: an allocation of {size} failed", "--max-side")


def test_other_runtime_errors_are_not_taken_for_memory(capsys, tmp_path, monkeypatch):
    from regiondrag.apps import cli

    def buggy_preview(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "run_preview", buggy_preview)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["preview", "--image", str(CHELSEA), "--regions", str(CHELSEA_REGIONS), "--out", str(tmp_path / "o.png")])
