"""report.html as a person sees it: rendered by headless Chromium, the figures drawn and the verdicts shown.

Needs Debian's ``chromium`` (``make test`` installs it where apt-get can run as root); skipped elsewhere. The
screenshot is kept in pytest's temporary folder, and copied to ``$BNLAB_SCREENSHOTS`` when that is set.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bnlab.lab.plots import COLORS

# Colors that only the figures (the two networks' curves) and the verdict badges paint.
FIGURE_COLORS = {"BN curve": COLORS["bn"], "baseline curve": COLORS["baseline"]}
BADGE_COLORS = {"reproduced": "#2e7d32", "not reproduced": "#c62828", "not judged": "#757575"}


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("Chromium is not installed (Debian: `apt-get install chromium`; `make test` does it as root)")


def headless(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def pixels_of(image: np.ndarray, color: str) -> int:
    rgb = np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(image[..., :3] * 255 - rgb).max(axis=-1) <= 12).sum())


def test_report_renders_with_figures_and_verdicts(fig1_run: Path, tmp_path: Path) -> None:
    import matplotlib.image

    page = (fig1_run / "report.html").resolve().as_uri()
    shot = tmp_path / "report.png"
    done = headless(tmp_path / "profile", "--hide-scrollbars", "--window-size=1280,2000", f"--screenshot={shot}",
                    page)
    assert shot.is_file(), f"Chromium wrote no screenshot (exit {done.returncode}): {done.stderr[-2000:]}"
    if os.environ.get("BNLAB_SCREENSHOTS"):
        target = Path(os.environ["BNLAB_SCREENSHOTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, target / "report.png")
    image = matplotlib.image.imread(shot)
    assert image.shape[:2] == (2000, 1280)
    for what, color in FIGURE_COLORS.items():
        assert pixels_of(image, color) > 200, f"no {what} in the rendered page: the figures were not drawn"
    dom = headless(tmp_path / "profile-dom", "--dump-dom", page).stdout
    verdicts = [v for v in BADGE_COLORS if f'">{v}</span>' in dom]
    assert verdicts, "no verdict in the rendered page"
    for verdict in verdicts:
        assert pixels_of(image, BADGE_COLORS[verdict]) > 100, f"the {verdict!r} badge is not painted"
    assert dom.count("<img") == len(list(fig1_run.glob("*.png")))
