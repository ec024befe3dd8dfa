"""Tables and plots of evaluation results: markdown for the terminal and README, CSV, PNG."""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Sequence, Union

PathLike = Union[str, os.PathLike]
Row = Sequence[Any]
FIGURE_DPI = 150


def _cell(value: Any, digits: int) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown_table(header: Row, rows: Sequence[Row], digits: int = 2) -> str:
    """A pipe table, floats with `digits` decimals, missing values as n/a."""
    lines = [[str(h) for h in header]] + [[_cell(v, digits) for v in row] for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    fmt = lambda cells: "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([fmt(lines[0]), "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"]
                     + [fmt(line) for line in lines[1:]])


def write_csv(path: PathLike, header: Row, rows: Sequence[Row]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def pyplot():
    """matplotlib's pyplot on the file-only backend, or a one-line install hint."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("the analysis plots need matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=FIGURE_DPI)
    pyplot().close(fig)
    return path
