"""Sweeps (scripts/sweep.py) on the synthetic DragBench with tiny random models: a 2x2 grid's table,
CSV and plots, resuming, inversions shared by the settings that share them, the repo's sweep files
(the paper's two analyses), and sweep files that cannot run."""
import importlib.util
import re
import json

import numpy as np
import pytest
from PIL import Image

from regiondrag.dragbench import run as E
from regiondrag.dragbench.sweep import load_sweep
from test_evaluation import PNG_MAGIC, ROOT, bench, one_thread, read_csv, script, table_cells, tiny_args  # noqa: F401

needs_matplotlib = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                                      reason="sweep plots need matplotlib (pip install matplotlib)")
SWEEPS = ROOT / "scripts" / "sweeps"
# the first parameter does not change the inversion, the second does: the work must be regrouped
GRID = {"grid": {"paste_schedule": ["every_step", "single_step"], "start_t": [0.5, 0.3]}}


def sweep_file(tmp_path, doc, name="grid.json"):
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def results(save):
    store = E.ResultStore(save)
    return store.records.values()


@needs_matplotlib
def test_a_2x2_grid_gives_4_rows_a_csv_and_a_plot_per_parameter_and_reruns_nothing(bench, tmp_path, capsys):
    root, _ = bench
    sweep = script("sweep")
    save = tmp_path / "out"
    args = ["--config", str(sweep_file(tmp_path, GRID)), *tiny_args(root, save, "--subset", "sr", "--limit", 1)]
    assert sweep(args) == 0
    out = capsys.readouterr().out
    assert "1 samples x 4 setting(s): edited 4, measured 4, reused 0, skipped 0" in out
    header, _, *rows = table_cells(out)
    assert header == ["setting", "paste_schedule", "start_t", "benchmark", "annotation", "samples",
                      "MD×100 (regiondrag)", "LPIPS×100", "MD px (dragdiffusion)", "DAI γ=1", "DAI γ=5", "DAI γ=10",
                      "DAI γ=20", "s / edit"]
    assert [r[:4] for r in rows] == [["paste_schedule=every_step,start_t=0.5", "every_step", "0.5", "DragBench-SR"],
                                     ["paste_schedule=every_step,start_t=0.3", "every_step", "0.3", "DragBench-SR"],
                                     ["paste_schedule=single_step,start_t=0.5", "single_step", "0.5", "DragBench-SR"],
                                     ["paste_schedule=single_step,start_t=0.3", "single_step", "0.3", "DragBench-SR"]]
    csv = read_csv(save / "sweep.csv")
    assert csv[0] == header and len(csv) == 5
    assert [float(r[7]) for r in csv[1:]] == pytest.approx([float(r[7]) for r in rows], abs=0.006)
    assert table_cells((save / "sweep.md").read_text()) == table_cells(out)
    for parameter in ("paste_schedule", "start_t"):
        assert (save / f"{parameter}.png").read_bytes()[:8] == PNG_MAGIC
    assert len({r[7] for r in rows}) > 1  # the settings really edit differently

    assert sweep(args) == 0
    again = capsys.readouterr().out
    assert "edited 0, measured 0, reused 4" in again
    assert table_cells(again)[2:] == rows  # the same records, so the same table


def test_settings_that_share_an_inversion_share_it_and_edit_as_alone(bench, tmp_path, capsys):
    """Per sample, the two settings of each start_t run one after the other and the second reuses
    the first's inversion; its edit is what it is alone, and its time still counts the inversion."""
    root, _ = bench
    save = tmp_path / "out"
    assert script("sweep")(["--config", str(sweep_file(tmp_path, GRID)), *tiny_args(root, save, "--limit", 1)]) == 0
    capsys.readouterr()
    records = {(r["setting"], r["sample"]): r for r in results(save)}
    shared = {k for k, r in records.items() if r["shared_inversion"]}
    assert len(records) == 8
    assert shared == {(f"paste_schedule=single_step,start_t={t}", s) for t in ("0.5", "0.3")
                      for s in ("sr/art_0", "dr/animals/JH_2023-09-14-1820-16")}
    for setting, sample in shared:  # its time counts the inversion it reused: the one its twin made
        twin = records[setting.replace("single_step", "every_step"), sample]
        assert records[setting, sample]["inversion_s"] == twin["inversion_s"] > 0
        assert records[setting, sample]["edit_s"] > twin["inversion_s"]
    alone = tmp_path / "alone"
    doc = {"settings": [{"name": "paste_schedule=single_step,start_t=0.3", "paste_schedule": "single_step",
                         "start_t": 0.3}]}
    assert script("sweep")(["--config", str(sweep_file(tmp_path, doc, "alone.yaml")),
                            *tiny_args(root, alone, "--limit", 1)]) == 0
    capsys.readouterr()
    for edit in (alone / "paste_schedule=single_step,start_t=0.3").rglob(E.EDIT_FILE):
        twin = save / edit.relative_to(alone)
        np.testing.assert_array_equal(np.asarray(Image.open(edit)), np.asarray(Image.open(twin)))
    [record] = [r for r in results(alone) if r["sample"] == "sr/art_0"]
    assert not record["shared_inversion"]


def test_command_line_settings_change_the_base(bench, tmp_path, capsys):
    root, _ = bench
    save = tmp_path / "out"
    doc = {"base": {"steps": 10, "annotation": "i4p"}, "settings": [{"name": "a", "seed": 1},
                                                                   {"name": "b", "seed": 2, "steps": 8}]}
    assert script("sweep")(["--config", str(sweep_file(tmp_path, doc)), "--annotation", "points",
                            *tiny_args(root, save, "--subset", "sr", "--limit", 1)]) == 0
    assert "annotation points: points for 1 samples" in capsys.readouterr().out  # over the file's base
    saved = json.loads((save / E.SETTINGS_FILE).read_text())["settings"]
    assert [(s["config"]["steps"], s["config"]["seed"], s["annotation"]) for s in saved.values()] == \
        [(10, 1, "points"), (8, 2, "points")]  # a setting's own override stays


def test_a_backbone_sweep_edits_each_setting_with_its_weights(bench, tmp_path, capsys):
    """`weights` picks a setting's backbone (random tiny models: each name other random weights)."""
    root, _ = bench
    save = tmp_path / "out"
    doc = {"settings": [{"name": "default"}, {"name": "other", "weights": "another-backbone"}]}
    assert script("sweep")(["--config", str(sweep_file(tmp_path, doc)),
                            *tiny_args(root, save, "--subset", "sr", "--limit", 1)]) == 0
    rows = {r[0]: r for r in table_cells(capsys.readouterr().out)[2:]}
    assert rows["default"][1:5] == ["", "DragBench-SR", "region", "1"]  # setting, weights, benchmark, ...
    assert rows["other"][1:5] == ["another-backbone", "DragBench-SR", "region", "1"]
    assert rows["default"][6] != rows["other"][6]  # LPIPS: other weights, another edit
    assert not any(r["shared_inversion"] for r in results(save))  # an inversion is the backbone's own
    saved = json.loads((save / E.SETTINGS_FILE).read_text())["settings"]
    assert (saved["default"]["weights"], saved["other"]["weights"]) == (None, "another-backbone")


@needs_matplotlib
def test_the_repos_copy_paste_sweep_is_the_papers_analysis(bench, tmp_path, capsys):
    root, _ = bench
    args = ["--config", str(SWEEPS / "copy_paste.yaml"), *tiny_args(root, tmp_path, "--subset", "dr", "--limit", 1)]
    assert script("sweep")(args) == 0
    rows = read_csv(tmp_path / "sweep.csv")
    assert [r[:4] for r in rows[1:]] == [["single-step", "single_step", "DragBench-DR", "region"],
                                         ["multi-step", "every_step", "DragBench-DR", "region"]]
    assert rows[1][7] != rows[2][7]  # LPIPS: the schedules really edit differently
    assert (tmp_path / "paste_schedule.png").read_bytes()[:8] == PNG_MAGIC


def test_the_repos_baselines_sweep_scores_the_method_beside_its_anchors(bench, tmp_path, capsys):
    root, _ = bench
    args = ["--config", str(SWEEPS / "baselines.yaml"), *tiny_args(root, tmp_path, "--subset", "sr", "--limit", 1)]
    assert script("sweep")(args) == 0
    header, *rows = read_csv(tmp_path / "sweep.csv")
    assert [r[:3] for r in rows] == [["encode_then_cp", "encode_then_cp", "DragBench-SR"],
                                     ["identity", "identity", "DragBench-SR"],
                                     ["copy_paste", "copy_paste", "DragBench-SR"]]
    lpips = header.index("LPIPS×100")
    assert float(rows[1][lpips]) == 0.0 < float(rows[2][lpips])
    saved = json.loads((tmp_path / E.SETTINGS_FILE).read_text())["settings"]
    assert (saved["identity"]["baseline"], "baseline" in saved["encode_then_cp"]) == ("identity", False)


def test_the_repos_point_fraction_sweep():
    sweep = load_sweep(SWEEPS / "point_fraction.yaml")
    assert sweep.name == "point_fraction" and sweep.parameters == ["point_fraction"]
    assert [s.config.point_fraction for s in sweep.settings] == [1.0, 0.5, 0.25, 0.1, 0.05]
    assert [s.name for s in sweep.settings][:2] == ["point_fraction=1", "point_fraction=0.5"]
    assert all(s.config.replace(point_fraction=1.0) == E.EVALUATION for s in sweep.settings)
    assert sweep.log_x == {"point_fraction"}


def test_attention_swap_is_swept_by_its_fields(tmp_path):
    doc = {"grid": {"attention_swap": [{"layers": [0, 1]}, {"enabled": False}]}}
    a, b = load_sweep(sweep_file(tmp_path, doc)).settings
    assert a.config.attention_swap.layers == frozenset({0, 1}) and not b.config.attention_swap.enabled
    assert (a.name, b.name) == ("attention_swap=layers_0+1", "attention_swap=enabled_False")


@pytest.mark.parametrize("doc, why", [
    ({"grid": {"start": [0.5]}}, "unknown setting start; the settings are annotation, point_radius, weights "
                                 "and EditConfig's steps"),
    ({"grid": {"start_t": [0.5]}, "settings": [{"seed": 1}]}, "give either 'grid'"),
    ({"grid": {"start_t": []}}, "'grid' must map each parameter to a non-empty list"),
    ({"grid": {"steps": ["ten"]}}, "steps='ten' must be a number"),
    ({"grid": {"method": ["sde"]}}, "unknown method 'sde'"),
    ({"settings": [{"name": "x", "seed": 1}, {"name": "x", "seed": 2}]}, "two settings share a name"),
    ({"grid": {"seed": [1]}, "sweep": 1}, "found \\['sweep'\\]"),
    ({"grid": {"annotation": ["i4"]}}, "unknown annotation 'i4'"),
])
def test_a_bad_sweep_file_is_one_line(bench, tmp_path, capsys, doc, why):
    args = ["--config", str(sweep_file(tmp_path, doc)), *tiny_args(bench[0], tmp_path / "out")]
    assert script("sweep")(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert re.search(why, err), err
