"""The doctor's HTML page as a person sees it: rendered by headless Chromium, tables and charts drawn.

Rendered with the lab's helper (tests/lab/chromium.py): needs Debian's ``chromium``, skipped elsewhere; the
screenshot is copied to ``$BNLAB_SCREENSHOTS`` when that is set.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from bnlab.tools import doctor, recalibrate
from bnlab.tools.diagnosis.page import COLORS, MODE_COLORS
from lab.chromium import pixels_of, render


class _Classifier(nn.Module):
    """Three batch norms side by side: one right for the data, one off by 0.5σ, one by 2σ; then a classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.BatchNorm1d(4) for _ in range(3))
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([bn(x) for bn in self.norms], dim=1))


def test_the_page_renders_summary_tables_and_charts(tmp_path: Path) -> None:
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
    image, dom = render(page, tmp_path, "doctor.png", height=1400)
    # The gap chart: one bar per level (right, warning, error); the effect chart: one bar per configuration.
    assert pixels_of(image, COLORS["ok"]) > 30, "no bar for the layer without a gap"  # a sliver: gap ≈ 0
    for what, color in [("warning badge and bar", COLORS["warning"]), ("error badge and bar", COLORS["error"]),
                        *((f"{m} bar", c) for m, c in MODE_COLORS.items())]:
        assert pixels_of(image, color) > 150, f"no {what} in the rendered page"
    assert report.summary() in dom.replace("&amp;", "&")
    sections = re.findall(r'<section class="group (\w+)" id="(\w+)">', dom)
    assert sections == [(g.severity, g.code) for g in report.groups()] == [("error", "stats_mismatch")]
    assert dom.count('<rect class="gap"') == 3 and dom.count('<rect class="mode-') == 6  # accuracy and loss
    assert dom.count("<tr><td class=\"layer\">") == len(report.findings) == 2
