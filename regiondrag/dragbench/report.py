"""Tables and plots of evaluation results: markdown for the terminal and README, CSV, PNG."""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ..image_io import PathLike

Row = Sequence[Any]
FIGURE_DPI = 150


def _cell(value: Any, digits: int) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown_table(header: Row, rows: Sequence[Row], digits: int = 2,
                   column_digits: Optional[Mapping[str, int]] = None) -> str:
    """A pipe table, floats with `digits` decimals (`column_digits`: other numbers per header), missing
    values as n/a."""
    places = [(column_digits or {}).get(str(h), digits) for h in header]
    lines = [[str(h) for h in header]] + [[_cell(v, d) for v, d in zip(row, places)] for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    fmt = lambda cells: "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([fmt(lines[0]), "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"]
                     + [fmt(line) for line in lines[1:]])


def write_text_atomic(path: PathLike, text: str) -> Path:
    """Write `text` to a temporary file beside `path`, then rename it over: never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    part.write_text(text)
    os.replace(part, path)
    return path


def write_csv(path: PathLike, header: Row, rows: Sequence[Row]) -> Path:
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(header)
    writer.writerows(rows)
    return write_text_atomic(path, text.getvalue())


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
    part = path.with_name(path.name + ".part")
    fig.tight_layout()
    fig.savefig(part, dpi=FIGURE_DPI, format=path.suffix.lstrip("."))
    pyplot().close(fig)
    os.replace(part, path)
    return path


def plot_metrics(x: Sequence[Any], series: dict[str, dict[str, Sequence[float]]], xlabel: str, path: PathLike, *,
                 bars: bool = False, logx: bool = False) -> Path:
    """One panel per metric; in each, one line (or group of bars) per label: series[label][metric][i] at x[i]."""
    plt = pyplot()
    metrics = list(next(iter(series.values())))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.5), squeeze=False)
    width = 0.8 / len(series)
    for ax, metric in zip(axes[0], metrics):
        for i, (label, panels) in enumerate(series.items()):
            if bars:
                ax.bar([j + (i - (len(series) - 1) / 2) * width for j in range(len(x))], panels[metric], width,
                       label=label)
            else:
                ax.plot(x, panels[metric], marker="o", label=label)
        if bars:
            ax.set_xticks(range(len(x)), [str(v) for v in x])
            ax.set_ylim(top=ax.get_ylim()[1] * 1.25)  # room for the legend above the bars
        if logx:
            ax.set_xscale("log")
            ax.set_xticks(x, [f"{v:g}" for v in x])
            ax.minorticks_off()
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric)
        ax.legend()
    return save_figure(fig, path)


def plot_histograms(values: dict[str, Sequence[int]], xlabel: str, path: PathLike, bins: int = 20) -> Path:
    """One panel per label; log-spaced bins, since counts span orders of magnitude."""
    plt = pyplot()
    from matplotlib.ticker import LogFormatter

    fig, axes = plt.subplots(1, len(values), figsize=(4.5 * len(values), 3.5), squeeze=False)
    for ax, (label, v) in zip(axes[0], values.items()):
        lo, hi = max(min(v), 1), max(max(v), 2)
        ax.hist(v, bins=np.geomspace(lo, hi * 1.001, bins + 1))
        ax.set_xscale("log")
        for set_formatter in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
            set_formatter(LogFormatter())  # plain numbers; minor ticks labelled only on short ranges
        ax.set_title(f"{label} ({len(v)} samples)")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("samples")
    return save_figure(fig, path)
