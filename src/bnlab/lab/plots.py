"""Plot helpers shared by the experiments: files written as PNG and SVG, mean-and-spread curves. Colours and
labels belong to each experiment (its ``plots.py``).

Figures are built as :class:`matplotlib.figure.Figure` objects and written by their own canvas, never through
pyplot: plotting needs no display, and it leaves the process's matplotlib backend and pyplot's figures alone
(a notebook that calls the lab keeps its inline plots).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["log_axis", "mean_band", "new_figure", "save"]


def new_figure(ncols: int, width: float = 4.2, height: float = 3.4, nrows: int = 0, layout: Any = "constrained",
               **subplots: Any) -> tuple[Any, Any]:
    """A figure with ``ncols`` axes in one row, each ``width`` × ``height`` inches: (figure, axes array).

    With ``nrows`` (≥ 1), a grid of ``nrows`` × ``ncols`` axes instead, returned as a 2-d array; ``subplots`` go to
    :meth:`matplotlib.figure.Figure.subplots` (``sharex``, ``sharey``). ``layout=None`` skips matplotlib's
    constrained layout, which costs seconds on a grid of many small axes (place them with ``subplots_adjust``).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * max(nrows, 1)), layout=layout)
    axes = fig.subplots(max(nrows, 1), ncols, squeeze=False, **subplots)
    return fig, (axes if nrows else axes[0])


def save(fig: Any, out_dir: Path, stem: str) -> None:
    """Write ``stem.png`` and ``stem.svg`` into ``out_dir`` (the figure is not registered anywhere to close)."""
    fig.savefig(out_dir / f"{stem}.png", dpi=110)
    fig.savefig(out_dir / f"{stem}.svg")


def mean_band(ax: Any, x: np.ndarray, values: np.ndarray, **line: Any) -> None:
    """Plot the mean over rows of ``values`` (S, T) against ``x`` (T,), shading ± one standard deviation when S > 1.

    A step where any row is NaN (not measured) is left out of the line rather than averaged over fewer rows.
    """
    mean = values.mean(axis=0)
    keep = np.isfinite(mean)
    if keep.sum() == 1:
        line.setdefault("marker", "o")  # a line of one point is invisible without a marker
    ax.plot(x[keep], mean[keep], **line)
    if len(values) > 1:
        std = values.std(axis=0, ddof=1)[keep]
        ax.fill_between(x[keep], mean[keep] - std, mean[keep] + std, color=line.get("color"), alpha=0.2,
                        linewidth=0)


def log_axis(ax: Any, axis: str = "y", ticks: int = 6) -> None:
    """A log scale with at most ``ticks`` labelled decades and no minor ticks: values spanning 20 decades otherwise
    cost seconds of tick layout per axis."""
    from matplotlib.ticker import LogLocator, NullLocator

    target = ax.yaxis if axis == "y" else ax.xaxis
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    target.set_major_locator(LogLocator(numticks=ticks))
    target.set_minor_locator(NullLocator())
