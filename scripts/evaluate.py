"""Evaluate RegionDrag on DragBench-SR/DR and print the paper's table (MD x100, LPIPS x100, s / edit).

    python scripts/evaluate.py --data drag_data --json outputs/evaluate.json
    python scripts/evaluate.py --data drag_data --subset sr --limit 5        # a quick look

Edits use each sample's region file (meta_data_region.pkl), the metric its point file
(meta_data.pkl), as the reference's run_eval.py. Edits and per-sample scores are kept in
--save-dir; a rerun skips the edits (and scores) already there.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from regiondrag.dragbench import run as E  # noqa: E402
from regiondrag.pipeline import METHODS  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    E.add_model_arguments(parser, default_save_dir="outputs/evaluate")
    parser.add_argument("--method", choices=METHODS, default="encode_then_cp")
    parser.add_argument("--json", type=Path, default=None, help="also write settings, summary and per-sample scores")
    args = parser.parse_args(argv)

    def body() -> None:
        variants = [E.Variant(args.method, {"method": args.method})]
        models, samples, store, summaries = E.run_from_args(args, variants)
        print(E.paper_table(summaries))
        if args.json:
            print(f"wrote {E.write_results_json(args.json, models, variants, summaries, store, samples)}")

    return E.script_main(body)


if __name__ == "__main__":
    sys.exit(main())
