"""Evaluate RegionDrag on DragBench-SR/DR: a table with the paper's scores (RegionDrag's MD x100, LPIPS
x100, s / edit, beside the paper's) and the field's (DragDiffusion's MD in pixels, GoodDrag's DAI).

    python scripts/evaluate.py --data drag_data --json outputs/evaluate.json
    python scripts/evaluate.py --data drag_data --annotation i4p           # the data as published today
    python scripts/evaluate.py --data drag_data --baselines                # + identity and copy_paste rows
    python scripts/evaluate.py --data drag_data --method copy_paste        # a baseline alone
    python scripts/evaluate.py --data drag_data --subset sr --limit 5       # a quick look
    torchrun --nproc-per-node 8 scripts/evaluate.py --data drag_data       # one process per GPU

Each sample is edited with one of its annotations (--annotation; auto: meta_data_region.pkl,
the paper's, if there, else meta_data_i4p.pkl, else meta_data.pkl's clicks), Mean Distance
always measured on meta_data.pkl's clicks, as the reference's run_eval.py. Edits and
per-sample scores are kept in --save-dir; a rerun skips the edits (and scores) already there.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from regiondrag.dragbench import run as E  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    E.add_model_arguments(parser, default_save_dir="outputs/evaluate")
    E.add_setting_arguments(parser)
    parser.add_argument("--baselines", action="store_true",
                        help=f"also score the baselines ({', '.join(E.BASELINES)}): their rows anchor the table")
    parser.add_argument("--json", type=Path, default=None, help="also write settings, summary and per-sample scores")
    args = parser.parse_args(argv)

    def body() -> None:
        overrides = E.setting_overrides(args)
        methods = dict.fromkeys([overrides.get("method", E.EVALUATION.method), *(E.BASELINES if args.baselines else ())])
        suffix = f"-{args.annotation}" if args.annotation not in (None, E.AUTO) else ""
        # each named by its method (its folder in --save-dir), -annotation if chosen
        settings = [E.Setting(method + suffix).replace(**{**overrides, "method": method}) for method in methods]
        run = E.run_from_args(args, settings)
        if run is None:  # another rank than 0 under torchrun: rank 0 reports
            return
        print(E.paper_table(run.summaries))
        if args.json:
            print(f"wrote {E.write_results_json(args.json, run)}")

    return E.script_main(body)


if __name__ == "__main__":
    sys.exit(main())
