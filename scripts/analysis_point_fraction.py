"""How many of a region's dense point pairs does RegionDrag need? Quality vs the fraction kept.

    python scripts/analysis_point_fraction.py --data drag_data --fractions 1 0.5 0.25 0.1 0.05

Each fraction edits every sample with a random subset of its region file's dense pairs
(RegionDragPipeline.edit's point_fraction, seeded); writes point_fraction.csv and .png
(MD x100 and LPIPS x100 against the fraction) to --out-dir and prints the table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from regiondrag.dragbench import run as E  # noqa: E402
from regiondrag.pipeline import METHODS  # noqa: E402
from regiondrag.dragbench.report import markdown_table, plot_metrics, write_csv  # noqa: E402

FRACTIONS = (1.0, 0.5, 0.25, 0.1, 0.05)  # our default grid, from all pairs down to one in twenty


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    E.add_model_arguments(parser, default_save_dir="outputs/point_fraction")
    parser.add_argument("--fractions", type=float, nargs="+", default=FRACTIONS)
    parser.add_argument("--method", choices=METHODS, default="encode_then_cp")
    parser.add_argument("--out-dir", type=Path, default=None, help="table and plot (default: --save-dir)")
    args = parser.parse_args(argv)

    def body() -> None:
        variants = [E.Variant(f"fraction_{f:g}", {"method": args.method, "point_fraction": f}) for f in args.fractions]
        _, _, _, summaries = E.run_from_args(args, variants)
        fraction = {v.name: f for v, f in zip(variants, args.fractions)}
        header, rows = ["fraction"] + E.SUMMARY_HEADER, [[fraction[s.variant]] + E.summary_row(s) for s in summaries]
        print(markdown_table(header, rows))
        out = args.out_dir or args.save_dir
        print(f"wrote {write_csv(out / 'point_fraction.csv', header, rows)}")
        plot = plot_metrics(args.fractions, E.metric_series(summaries, variants), 'fraction of dense pairs kept',
                            out / 'point_fraction.png', logx=True)
        print(f"wrote {plot}")

    return E.script_main(body)


if __name__ == "__main__":
    sys.exit(main())
