"""The tour (`make run` = `bnlab run all --quick`): every experiment's quick run, skipped with the install command
when its data is missing, and one page of verdicts, times and report links."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bnlab.cli import main
from bnlab.lab import registry
from lab.chromium import BADGE_COLORS, pixels_of, render
from lab.toy import with_toy

INSTALL = "Fashion-MNIST not found; install it with `apt-get install dataset-fashion-mnist`"


@pytest.fixture
def small_tour(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every registered experiment with its smoke settings as its quick version, plus one whose data is missing."""
    for name in list(registry.experiment_names()):
        experiment = registry.get_experiment(name)
        monkeypatch.setitem(registry.experiments(), name, replace(experiment, quick={**experiment.smoke}))

    def missing(config: Any, device: Any, data_dir: Any, cache: Any) -> None:
        raise FileNotFoundError(INSTALL)

    with_toy(monkeypatch, prepare=missing, order=999)
    return registry.experiment_names()


def test_tour_runs_every_experiment_and_writes_one_page(small_tour: list[str], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "all", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    page = Path(out.split("tour: ")[1].split()[0])
    html = page.read_text()
    for name in small_tour:
        assert f"<code>{name}</code>" in html
        if name != "toy":
            (run,) = (tmp_path / name).iterdir()
            assert f'href="{name}/{run.name}/report.html"' in html
    assert "skipped" in html and "apt-get install dataset-fashion-mnist" in html
    assert not (tmp_path / "toy").exists()  # a skipped experiment leaves no folder
    times = re.findall(r'<span class="num">([0-9.]+) s</span>', html)
    assert len(times) == len(small_tour)
    assert re.search(r"toy: skipped: Fashion-MNIST not found.*\(\d+ s\)", out)


def test_tour_page_renders(small_tour: list[str], tmp_path: Path) -> None:
    assert main(["run", "all", "--quick", "--out", str(tmp_path)]) == 0
    image, dom = render(tmp_path / "tour.html", tmp_path, "tour.png", height=1400)
    shown = [v for v in BADGE_COLORS if f'">{v}</span>' in dom]
    assert "reproduced" in shown
    for verdict in shown:
        assert pixels_of(image, BADGE_COLORS[verdict]) > 100, verdict


@pytest.mark.parametrize("extra", [["--set", "steps=1"], ["--grid", "lr=1,2"], ["--show-config"]])
def test_tour_takes_no_settings(extra: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "all", *extra, "--out", str(tmp_path)]) == 2
    assert "apply to one experiment" in capsys.readouterr().err
