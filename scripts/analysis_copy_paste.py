"""Single-step vs multi-step copy-paste: paste the handle latents once, or at every denoising step.

    python scripts/analysis_copy_paste.py --data drag_data

"multi-step" is RegionDrag's (and the reference's) schedule; "single-step" pastes only before
the first denoising step. Writes copy_paste.csv and .png to --out-dir and prints the table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from regiondrag.dragbench import run as E  # noqa: E402
from regiondrag.pipeline import METHODS  # noqa: E402
from regiondrag.dragbench.report import markdown_table, plot_metrics, write_csv  # noqa: E402

SCHEDULES = {"single-step": "single_step", "multi-step": "every_step"}  # label -> edit's paste_schedule


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    E.add_model_arguments(parser, default_save_dir="outputs/copy_paste")
    parser.add_argument("--method", choices=METHODS, default="encode_then_cp")
    parser.add_argument("--out-dir", type=Path, default=None, help="table and plot (default: --save-dir)")
    args = parser.parse_args(argv)

    def body() -> None:
        variants = [E.Variant(label, {"method": args.method, "paste_schedule": schedule})
                    for label, schedule in SCHEDULES.items()]
        _, _, _, summaries = E.run_from_args(args, variants)
        header, rows = ["copy-paste"] + E.SUMMARY_HEADER, [[s.variant] + E.summary_row(s) for s in summaries]
        print(markdown_table(header, rows))
        out = args.out_dir or args.save_dir
        print(f"wrote {write_csv(out / 'copy_paste.csv', header, rows)}")
        series = E.metric_series(summaries, variants)
        print(f"wrote {plot_metrics(list(SCHEDULES), series, 'copy-paste', out / 'copy_paste.png', bars=True)}")

    return E.script_main(body)


if __name__ == "__main__":
    sys.exit(main())
