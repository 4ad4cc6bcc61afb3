"""Plot helpers shared by the experiments: one style, files written as PNG and SVG, mean-and-spread curves.

Matplotlib runs on its file-only Agg backend, so plotting needs no display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["COLORS", "mean_band", "new_figure", "save"]

COLORS = {"baseline": "#d62728", "bn": "#1f77b4"}  # the paper draws the baseline dashed, BN solid
LABELS = {"baseline": "without BN", "bn": "with BN"}


def new_figure(ncols: int, width: float = 4.2, height: float = 3.4) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False, layout="constrained")
    return fig, axes[0]


def save(fig: Any, out_dir: Path, stem: str) -> None:
    """Write ``stem.png`` and ``stem.svg`` into ``out_dir`` and close the figure."""
    import matplotlib.pyplot as plt

    fig.savefig(out_dir / f"{stem}.png", dpi=110)
    fig.savefig(out_dir / f"{stem}.svg")
    plt.close(fig)


def mean_band(ax: Any, x: np.ndarray, values: np.ndarray, **line: Any) -> None:
    """Plot the mean over rows of ``values`` (S, T) against ``x`` (T,), shading ± one standard deviation when S > 1."""
    mean = np.nanmean(values, axis=0) if len(values) else values
    ax.plot(x, mean, **line)
    if len(values) > 1:
        std = np.nanstd(values, axis=0, ddof=1)
        ax.fill_between(x, mean - std, mean + std, color=line.get("color"), alpha=0.2, linewidth=0)
