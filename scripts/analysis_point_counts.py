"""How many point pairs is a region worth? Dense pairs per sample of DragBench-SR/DR's annotations.

    python scripts/analysis_point_counts.py --data drag_data [--annotation region|i4p|points]

An annotation's dense mapping holds one handle->target pair per moved latent cell at the photo's
own size (the region file, meta_data_region.pkl, holds them precomputed; an i4p region is mapped
as the edit maps it): the "equivalent" point pairs of that edit, against the few clicks of its
point file (meta_data.pkl). Writes point_counts.csv (per sample), point_counts_summary.csv and
point_counts.png (histograms) to --out-dir and prints the summary. No model is needed.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from regiondrag.dragbench import run as E  # noqa: E402
from regiondrag.dragbench.reader import ANNOTATION_CHOICES, AUTO, SUBSET_TITLES  # noqa: E402
from regiondrag.dragbench.report import markdown_table, plot_histograms, write_csv  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    E.add_data_arguments(parser)
    parser.add_argument("--annotation", choices=ANNOTATION_CHOICES, default=AUTO,
                        help="whose pairs are counted (default %(default)s: region, else i4p, else points)")
    parser.add_argument("--out-dir", type=Path, default=Path("outputs/point_counts"))
    args = parser.parse_args(argv)

    def body() -> None:
        samples = E.samples_from_args(args, [args.annotation])
        counts = [(s, *s.pair_counts(args.annotation)) for s in samples]
        write_csv(args.out_dir / "point_counts.csv", ["benchmark", "sample", "dense pairs", "point pairs"],
                  [[SUBSET_TITLES[s.subset], s.name, dense, sparse] for s, dense, sparse in counts])
        dense = {}
        for s, n, _ in counts:
            dense.setdefault(SUBSET_TITLES[s.subset], []).append(n)
        sparse = {t: [p for s, _, p in counts if SUBSET_TITLES[s.subset] == t] for t in dense}
        header = ["benchmark", "samples", "min", "median", "mean", "max", "mean point pairs"]
        rows = [[t, len(v), min(v), statistics.median(v), statistics.fmean(v), max(v), statistics.fmean(sparse[t])]
                for t, v in dense.items()]
        print("Dense (equivalent) point pairs per sample:")
        print(markdown_table(header, rows, digits=1))
        print(f"wrote {write_csv(args.out_dir / 'point_counts_summary.csv', header, rows)}")
        print(f"wrote {plot_histograms(dense, 'dense point pairs per sample', args.out_dir / 'point_counts.png')}")

    return E.script_main(body)


if __name__ == "__main__":
    sys.exit(main())
