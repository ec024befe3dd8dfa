"""Run a sweep: a base setting and a grid (or list) of overrides over DragBench-SR/DR.

    python scripts/sweep.py --config scripts/sweeps/point_fraction.yaml --data drag_data
    python scripts/sweep.py --config my_sweep.json --data drag_data --subset sr --limit 10
    torchrun --nproc-per-node 8 scripts/sweep.py --config scripts/sweeps/copy_paste.yaml --data drag_data

The sweep file's format: regiondrag/dragbench/sweep.py. Prints the table and writes it with a
CSV and a plot per swept parameter; a rerun does only what is missing.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from regiondrag.dragbench.sweep import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
