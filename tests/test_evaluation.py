"""DragBench evaluation: the dataset reader on a synthetic DragBench-SR/DR, and every script run end
to end on it with tiny random models (--random-tiny): tables, JSON, resuming, analysis plots."""
import csv
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from regiondrag.dragbench.reader import (DatasetError, INPAINT4DRAG_FILE, REGION_FILE, find_samples,
                                       region_mapping)
from models.lpips import AlexNet
from regiondrag.dragbench.run import EDIT_FILE, RESULTS_FILE, ResultStore, edit_sample, pretrained_models
from weights.lpips import ALEXNET_URL
from synthetic_dragbench import CELL, SIZE, write_synthetic_dragbench

ROOT = Path(__file__).resolve().parents[1]
needs_matplotlib = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                                      reason="the analysis plots need matplotlib (pip install matplotlib)")
needs_lpips = pytest.mark.skipif(importlib.util.find_spec("lpips") is None,
                                 reason="the LPIPS heads ship with the lpips package (pip install --no-deps lpips)")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine OpenMP's spin-waiting
    made their edits ~50x slower; restored afterwards for the other test modules."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """(root, {key: SyntheticSample}) of one synthetic dataset, shared: nothing writes into it."""
    root = tmp_path_factory.mktemp("drag_data")
    return root, write_synthetic_dragbench(root)


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def tiny_args(bench_root, save_dir, *extra):
    return ["--data", str(bench_root), "--random-tiny", "--quiet", "--save-dir", str(save_dir), *map(str, extra)]


def table_cells(out: str) -> list[list[str]]:
    """The cells of the markdown table printed in `out`, row by row (the separator row included)."""
    return [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines() if line.startswith("|")]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


# ---------------------------------------------------------------- the dataset reader

def test_reader_round_trips_the_synthetic_dataset(bench):
    root, written = bench
    samples = find_samples(root)
    assert [s.key for s in samples] == sorted(k for k in written if k.startswith("sr/")) + \
        sorted(k for k in written if k.startswith("dr/"))
    for s in samples:
        w = written[s.key]
        assert s.image().size == (SIZE, SIZE)
        region, points = s.region_meta(), s.point_meta()
        assert region.prompt == points.prompt == w.prompt
        np.testing.assert_array_equal(region.mask, w.mask)
        np.testing.assert_array_equal(region.handle, w.dense_handle)
        np.testing.assert_array_equal(region.target, w.dense_target)
        np.testing.assert_array_equal(points.handle, w.handle)
        np.testing.assert_array_equal(points.target, w.target)
        assert s.pair_counts() == (len(w.dense_handle), len(w.handle))


def test_reader_subset_folder_limit_and_order(bench):
    root, _ = bench
    dr = find_samples(root / "dragbench-dr", ["dr"])
    assert [s.name for s in dr] == ["animals/JH_2023-09-14-1820-16", "art_work/JH_2023-09-15-0901-02"]
    assert [s.key for s in find_samples(root, limit=1)] == ["sr/art_0", "dr/animals/JH_2023-09-14-1820-16"]


def test_reader_errors_name_what_is_missing(tmp_path):
    write_synthetic_dragbench(tmp_path)
    with pytest.raises(DatasetError, match="unknown subset 'xr'"):
        find_samples(tmp_path, ["xr"])
    with pytest.raises(DatasetError, match="no dragbench-dr/ folder"):
        find_samples(tmp_path / "dragbench-sr", ["dr"])
    folder = tmp_path / "dragbench-sr" / "cat_1"
    (folder / REGION_FILE).rename(folder / INPAINT4DRAG_FILE)
    with pytest.raises(DatasetError, match=f"cat_1: missing {REGION_FILE}; .*Inpaint4Drag"):
        find_samples(tmp_path, ["sr"])
    (folder / INPAINT4DRAG_FILE).unlink()
    (folder / "original_image.png").unlink()
    with pytest.raises(DatasetError, match="missing original_image.png, meta_data_region.pkl$"):
        find_samples(tmp_path, ["sr"])
    shutil.rmtree(tmp_path / "dragbench-dr" / "animals")
    shutil.rmtree(tmp_path / "dragbench-dr" / "art_work")
    with pytest.raises(DatasetError, match="holds no sample folders"):
        find_samples(tmp_path, ["dr"])


def test_region_mapping_is_floor_by_8_and_follows_the_working_size(bench):
    root, written = bench
    sample = find_samples(root, ["sr"])[0]
    w, meta = written[sample.key], sample.region_meta()
    handle, target = region_mapping(meta, (SIZE, SIZE), (SIZE, SIZE))
    np.testing.assert_array_equal(handle, w.dense_handle // CELL)
    np.testing.assert_array_equal(target, w.dense_target // CELL)
    handle, target = region_mapping(meta, (SIZE, SIZE), (SIZE // 2, SIZE // 2))  # a half-size working photo
    np.testing.assert_array_equal(target, w.dense_target // (2 * CELL))
    with pytest.raises(DatasetError, match="mask is 64x64 but the photo is 32x64"):
        region_mapping(meta, (32, 64), (32, 64))


def test_result_store_merges_records_and_survives_a_cut_line(tmp_path):
    path = tmp_path / RESULTS_FILE
    store = ResultStore(path)
    store.add("v", "sr/a", edit_s=1.0)
    store.add("v", "sr/a", md=0.1, lpips=0.2)
    with open(path, "a") as f:
        f.write('{"variant": "v", "sample": "sr/b", "md": 0.')  # a crash mid-write
    store = ResultStore(path)
    assert store.get("v", "sr/a") == {"variant": "v", "sample": "sr/a", "edit_s": 1.0, "md": 0.1, "lpips": 0.2}
    assert store.get("v", "sr/b") == {}
    store.add("v", "sr/b", md=0.3)
    assert ResultStore(path).get("v", "sr/b")["md"] == 0.3


# ---------------------------------------------------------------- real-weights path

@needs_lpips
def test_pretrained_models_load_from_weight_folders(bench, tiny_sd_folder, tmp_path, monkeypatch):
    """What --weights / --dift-weights load, on a tiny random diffusers folder: an edit, and the
    metric networks (DIFT with its text encoder, LPIPS from the cached AlexNet file)."""
    torch.manual_seed(0)
    alexnet = {f"features.{k}": v for k, v in AlexNet().features.state_dict().items()}
    torch.save(alexnet, tmp_path / ALEXNET_URL.rsplit("/", 1)[1])
    monkeypatch.setenv("REGIONDRAG_WEIGHTS", str(tmp_path))  # fetch_alexnet finds it there, offline
    models = pretrained_models(str(tiny_sd_folder), dift_weights=str(tiny_sd_folder), device="cpu")
    assert models.setup == dict(weights=str(tiny_sd_folder), ip_adapter=None, dift_weights=str(tiny_sd_folder),
                                dtype="torch.float32", max_side=None)
    sample = find_samples(bench[0], ["sr"], limit=1)[0]
    image, seconds = edit_sample(models.pipeline, sample, {})
    assert image.size == (SIZE, SIZE) and seconds > 0
    assert models.metrics.dift.context("a dog").shape == (1, 77, 32)
    torch.testing.assert_close(models.metrics.lpips.net.features[0].weight, alexnet["features.0.weight"])


# ---------------------------------------------------------------- the scripts

def test_evaluate_runs_end_to_end_and_resumes(bench, tmp_path, capsys):
    root, written = bench
    evaluate = script("evaluate")
    save, report = tmp_path / "eval", tmp_path / "eval.json"
    assert evaluate(tiny_args(root, save, "--json", report)) == 0
    out = capsys.readouterr().out
    assert "4 samples x 1 variant(s): edited 4, measured 4, reused 0" in out
    header, _, *body = table = table_cells(out)
    assert header == ["benchmark", "samples", "MD×100", "LPIPS×100", "s / edit",
                      "paper MD×100", "paper LPIPS×100", "paper s / edit"]
    rows = {row[0]: row[1:] for row in body}
    assert rows["DragBench-SR"][0] == rows["DragBench-DR"][0] == "2"
    assert rows["DragBench-SR"][-3:] == ["6.40", "9.90", "1.50"]
    assert rows["DragBench-DR"][-3:] == ["6.60", "9.20", "1.50"]

    result = json.loads(report.read_text())
    by_subset = {s["subset"]: s for s in result["summary"]}
    scores = {r["sample"]: r for r in result["samples"]}
    assert set(scores) == set(written)
    for subset in ("sr", "dr"):  # the table is the mean of the per-sample scores, x100
        mine = [r for k, r in scores.items() if k.startswith(subset)]
        assert by_subset[subset]["md"] == pytest.approx(100 * np.mean([r["md"] for r in mine]))
        assert by_subset[subset]["lpips"] == pytest.approx(100 * np.mean([r["lpips"] for r in mine]))
        assert f"{by_subset[subset]['md']:.2f}" == rows[f"DragBench-{subset.upper()}"][1]
    assert all(r["lpips"] > 0 and r["md"] >= 0 and r["edit_s"] > 0 for r in scores.values())
    edit = save / "encode_then_cp" / "dragbench-dr" / "animals" / "JH_2023-09-14-1820-16" / EDIT_FILE
    assert Image.open(edit).size == (SIZE, SIZE)

    assert evaluate(tiny_args(root, save)) == 0  # everything recorded: nothing edited or measured
    again = capsys.readouterr().out
    assert "edited 0, measured 0, reused 4" in again
    assert table_cells(again) == table

    (save / RESULTS_FILE).unlink()  # saved edits without scores: measured only, same scores
    assert evaluate(tiny_args(root, save, "--json", report)) == 0
    assert "edited 0, measured 4, reused 0" in capsys.readouterr().out
    remeasured = {r["sample"]: r for r in json.loads(report.read_text())["samples"]}
    assert all(remeasured[k]["md"] == scores[k]["md"] and "edit_s" not in remeasured[k] for k in scores)

    assert evaluate(tiny_args(root, save, "--max-side", 32)) == 2  # other settings: refused, not mixed in
    assert "holds results of another setup" in capsys.readouterr().err


@needs_matplotlib
def test_point_fraction_analysis_writes_table_and_plot(bench, tmp_path, capsys):
    root, _ = bench
    args = tiny_args(root, tmp_path, "--subset", "sr", "--limit", 1, "--fractions", 1, 0.5)
    assert script("analysis_point_fraction")(args) == 0
    assert "1 samples x 2 variant(s): edited 2" in capsys.readouterr().out
    rows = read_csv(tmp_path / "point_fraction.csv")
    assert rows[0] == ["fraction", "benchmark", "samples", "MD×100", "LPIPS×100", "s / edit"]
    assert [r[:3] for r in rows[1:]] == [["1.0", "DragBench-SR", "1"], ["0.5", "DragBench-SR", "1"]]
    assert (tmp_path / "point_fraction.png").read_bytes()[:8] == PNG_MAGIC


@needs_matplotlib
def test_copy_paste_analysis_writes_table_and_plot(bench, tmp_path, capsys):
    root, _ = bench
    assert script("analysis_copy_paste")(tiny_args(root, tmp_path, "--subset", "dr", "--limit", 1)) == 0
    out = capsys.readouterr().out
    assert "| single-step | DragBench-DR |" in out and "|  multi-step | DragBench-DR |" in out
    rows = read_csv(tmp_path / "copy_paste.csv")
    assert [r[:3] for r in rows[1:]] == [["single-step", "DragBench-DR", "1"], ["multi-step", "DragBench-DR", "1"]]
    single, multi = (float(r[4]) for r in rows[1:])
    assert single != multi  # the schedules really edit differently
    assert (tmp_path / "copy_paste.png").read_bytes()[:8] == PNG_MAGIC


@needs_matplotlib
def test_point_counts_counts_the_region_files_pairs(bench, tmp_path, capsys):
    root, written = bench
    assert script("analysis_point_counts")(["--data", str(root), "--out-dir", str(tmp_path)]) == 0
    per_sample = {f"{'sr' if r[0].endswith('SR') else 'dr'}/{r[1]}": (int(r[2]), int(r[3]))
                  for r in read_csv(tmp_path / "point_counts.csv")[1:]}
    assert per_sample == {k: (len(w.dense_handle), len(w.handle)) for k, w in written.items()}
    summary = {r[0]: r[1:] for r in read_csv(tmp_path / "point_counts_summary.csv")[1:]}
    sr = [len(w.dense_handle) for k, w in written.items() if k.startswith("sr/")]
    assert summary["DragBench-SR"][:3] == [str(len(sr)), str(min(sr)), str(float(np.median(sr)))]
    assert "| DragBench-DR |" in capsys.readouterr().out
    assert (tmp_path / "point_counts.png").read_bytes()[:8] == PNG_MAGIC


def test_point_counts_reports_a_bad_dataset_in_one_line(tmp_path, capsys):
    assert script("analysis_point_counts")(["--data", str(tmp_path / "nowhere"), "--out-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: dataset folder not found: {tmp_path / 'nowhere'}\n"
