"""Render a lab page in headless Chromium and check what a person would see: the helper every experiment's
report test uses (``from lab.chromium import check_report``).

Needs Debian's ``chromium`` (``make test`` installs it where apt-get can run as root); skipped elsewhere. The
screenshot is kept in pytest's temporary folder, and copied to ``$BNLAB_SCREENSHOTS`` when that is set (look at
it: a test can check colours and counts, not that a figure makes sense).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

BADGE_COLORS = {"reproduced": "#2e7d32", "not reproduced": "#c62828", "not judged": "#757575",
                "reported": "#1565c0"}


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
    """How many pixels of ``image`` (H, W, 3+ floats in [0, 1]) are within 12/255 of ``color`` (#rrggbb)."""
    rgb = np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(image[..., :3] * 255 - rgb).max(axis=-1) <= 12).sum())


def render(page: Path, tmp_path: Path, name: str, height: int = 2000, width: int = 1280) -> tuple[np.ndarray, str]:
    """(screenshot as an RGB(A) float array, the DOM after rendering) of the HTML file ``page``."""
    import matplotlib.image

    uri = page.resolve().as_uri()
    shot = tmp_path / name
    done = headless(tmp_path / f"profile-{name}", "--hide-scrollbars", f"--window-size={width},{height}",
                    f"--screenshot={shot}", uri)
    assert shot.is_file(), f"Chromium wrote no screenshot (exit {done.returncode}): {done.stderr[-2000:]}"
    if os.environ.get("BNLAB_SCREENSHOTS"):
        target = Path(os.environ["BNLAB_SCREENSHOTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, target / name)
    image = matplotlib.image.imread(shot)
    assert image.shape[:2] == (height, width)
    dom = headless(tmp_path / f"profile-dom-{name}", "--dump-dom", uri).stdout
    return image, dom


def check_report(run_dir: Path, tmp_path: Path, colors: Mapping[str, str], name: str,
                 height: int = 2000) -> np.ndarray:
    """Render ``run_dir/report.html`` and check that every figure is embedded, that each of ``colors`` (what it
    is → a colour only the figures paint) covers at least 200 pixels, and that each verdict shown is painted.

    ``height`` is the window: tall enough to hold the figures whose colours are checked. Returns the screenshot.
    """
    image, dom = render(run_dir / "report.html", tmp_path, name, height=height)
    for what, color in colors.items():
        assert pixels_of(image, color) > 200, f"no {what} in the rendered page: the figures were not drawn"
    verdicts = [v for v in BADGE_COLORS if f'">{v}</span>' in dom]
    assert verdicts, "no verdict in the rendered page"
    for verdict in verdicts:
        assert pixels_of(image, BADGE_COLORS[verdict]) > 100, f"the {verdict!r} badge is not painted"
    figures = len(list(run_dir.glob("*.png"))) + len(list(run_dir.glob("point-*/*.png")))
    assert dom.count("<img") == figures, "a figure of the run is missing from the page"
    return image
