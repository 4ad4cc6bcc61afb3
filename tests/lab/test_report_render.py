"""report.html as a person sees it: Figure 1's report rendered by headless Chromium (:mod:`lab.chromium`)."""

from __future__ import annotations

from pathlib import Path

from bnlab.lab.experiments.fig1.plots import COLORS
from lab.chromium import check_report


def test_report_renders_with_figures_and_verdicts(fig1_run: Path, tmp_path: Path) -> None:
    check_report(fig1_run, tmp_path, {"BN curve": COLORS["bn"], "baseline curve": COLORS["baseline"]},
                 name="fig1-report.png")
