"""The doctor's HTML page as a person sees it: rendered by headless Chromium, tables and charts drawn.

Needs Debian's ``chromium`` (``make test`` installs it where apt-get can run as root); skipped elsewhere. The
screenshot is kept in pytest's temporary folder, and copied to ``$BNLAB_SCREENSHOTS`` when that is set.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bnlab.tools import doctor, recalibrate
from bnlab.tools.diagnosis.page import COLORS, MODE_COLORS


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("Chromium is not installed (Debian: `apt-get install chromium`; `make test` does it as root)")


def _headless(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def _pixels_of(image: np.ndarray, color: str) -> int:
    rgb = np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(image[..., :3] * 255 - rgb).max(axis=-1) <= 12).sum())


class _Classifier(nn.Module):
    """Three batch norms side by side: one right for the data, one off by 0.5σ, one by 2σ; then a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.BatchNorm1d(4) for _ in range(3))
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([bn(x) for bn in self.norms], dim=1))


def test_the_page_renders_summary_tables_and_charts(tmp_path: Path) -> None:
    import matplotlib.image

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=gen) * 2 + 1
    y = (x[:, 0] > 1).long()
    model = _Classifier()
    recalibrate(model.eval(), list(x.split(64)))
    with torch.no_grad():
        model.norms[1].running_mean.add_(1.0)  # 0.5σ: a warning
        model.norms[2].running_mean.add_(4.0)  # 2σ: an error
    report = doctor(model, list(zip(x.split(64), y.split(64), strict=True)))
    page = tmp_path / "doctor.html"
    page.write_text(report.to_html(), encoding="utf-8")
    shot = tmp_path / "doctor.png"
    done = _headless(tmp_path / "profile", "--hide-scrollbars", "--window-size=1280,1400", f"--screenshot={shot}",
                     page.as_uri())
    assert shot.is_file(), f"Chromium wrote no screenshot (exit {done.returncode}): {done.stderr[-2000:]}"
    if os.environ.get("BNLAB_SCREENSHOTS"):
        target = Path(os.environ["BNLAB_SCREENSHOTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, target / "doctor.png")
    image = matplotlib.image.imread(shot)
    # The gap chart: one bar per level (right, warning, error); the effect chart: one bar per configuration.
    assert _pixels_of(image, COLORS["ok"]) > 30, "no bar for the layer without a gap"  # a sliver: gap ≈ 0
    for what, color in [("warning badge and bar", COLORS["warning"]), ("error badge and bar", COLORS["error"]),
                        *((f"{m} bar", c) for m, c in MODE_COLORS.items())]:
        assert _pixels_of(image, color) > 150, f"no {what} in the rendered page"
    dom = _headless(tmp_path / "profile-dom", "--dump-dom", page.as_uri()).stdout
    assert report.summary() in dom.replace("&amp;", "&")
    sections = re.findall(r'<section class="group (\w+)" id="(\w+)">', dom)
    assert sections == [(g.severity, g.code) for g in report.groups()] == [("error", "stats_mismatch")]
    assert dom.count('<rect class="gap"') == 3 and dom.count('<rect class="mode-') == 6  # accuracy and loss
    assert dom.count("<tr><td class=\"layer\">") == len(report.findings) == 2
