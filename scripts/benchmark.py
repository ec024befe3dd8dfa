"""Time one RegionDrag edit, phase by phase, and optionally a diffusers-based baseline in the same run:
regiondrag/apps/benchmark.py (its docstring has the commands), runnable from a checkout as this script."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from regiondrag.apps.benchmark import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
