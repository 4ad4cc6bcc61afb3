"""Figure 1's figures: drawn from the same seeds as the verdicts, without touching matplotlib's global state."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bnlab.lab.experiments.fig1 import Fig1Config
from bnlab.lab.experiments.fig1 import plots as fig1_plots
from bnlab.lab.records import read_metrics
from bnlab.lab.registry import get_experiment
from bnlab.lab.result import Result
from bnlab.lab.runner import make_config

SMOKE: Fig1Config = make_config(get_experiment("fig1"), smoke=True)
RESULT = Result("fig1", "plots read only the records", claims=[])


def drawn(monkeypatch: pytest.MonkeyPatch, config: Fig1Config, records: list[dict[str, Any]],
          out_dir: Path) -> dict[str, Any]:
    """The matplotlib figures ``plot`` makes, by stem, drawn with every warning an error."""
    figures: dict[str, Any] = {}
    monkeypatch.setattr(fig1_plots, "save", lambda fig, out, stem: figures.__setitem__(stem, fig))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stems = [f.stem for f in fig1_plots.plot(config, records, RESULT, out_dir)]
    assert stems == list(figures)
    return figures


def curve(fig: Any, label: str) -> tuple[np.ndarray, np.ndarray]:
    line = next(line for line in fig.axes[0].lines if line.get_label() == label)
    return np.asarray(line.get_xdata()), np.asarray(line.get_ydata())


def accuracy(records: list[dict[str, Any]], seed: int, model: str) -> list[float]:
    return [r["test_accuracy"] for r in records
            if r["kind"] == "eval" and r["seed"] == seed and r["model"] == model and r["step"] > 0]


def test_plotting_leaves_matplotlib_alone(fig1_run: Path, tmp_path: Path) -> None:
    import matplotlib
    import matplotlib.pyplot as plt

    before = matplotlib.get_backend()
    matplotlib.use("pdf")  # as a notebook or another program may have chosen
    try:
        fig1_plots.plot(SMOKE, read_metrics(fig1_run / "metrics.jsonl"), RESULT, tmp_path)
        assert matplotlib.get_backend() == "pdf"
        assert plt.get_fignums() == []  # no figure left in pyplot's registry
    finally:
        matplotlib.use(before)
    assert (tmp_path / "fig1.png").is_file() and (tmp_path / "fig1_drift.svg").is_file()


def test_panel_a_starts_after_step_0(fig1_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = read_metrics(fig1_run / "metrics.jsonl")
    figures = drawn(monkeypatch, SMOKE, records, tmp_path)
    steps, bn = curve(figures["fig1"], "with BN")
    assert steps.tolist() == [20, 40, 60]  # no line from step 0's chance accuracy
    np.testing.assert_allclose(bn, np.mean([accuracy(records, s, "bn") for s in (0, 1)], axis=0))


def test_figures_use_the_judged_seeds(fig1_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = read_metrics(fig1_run / "metrics.jsonl")
    cut = next(i for i, r in enumerate(records) if (r["kind"], r.get("seed"), r.get("model")) == ("eval", 1, "bn"))
    figures = drawn(monkeypatch, SMOKE, records[: cut + 2], tmp_path)  # seed 1 stopped in the BN network
    _, bn = curve(figures["fig1"], "with BN")
    np.testing.assert_allclose(bn, accuracy(records, 0, "bn"))  # seed 0 alone, as the verdicts
    assert set(figures) == {"fig1", "fig1_drift"}


def test_an_unfinished_only_seed_is_drawn_as_measured(fig1_run: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    records = read_metrics(fig1_run / "metrics.jsonl")
    cut = next(i for i, r in enumerate(records) if (r["kind"], r.get("seed"), r.get("model")) == ("eval", 0, "bn"))
    figures = drawn(monkeypatch, SMOKE, records[: cut + 2], tmp_path)  # BN measured at steps 0 and 20 only
    steps, bn = curve(figures["fig1"], "with BN")
    assert steps.tolist() == [20] and bn.tolist() == accuracy(records, 0, "bn")[:1]
    assert list(figures) == ["fig1"]  # no drift figure: nothing finished to compare


def test_a_network_never_measured_says_so(fig1_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    baseline_only = [r for r in read_metrics(fig1_run / "metrics.jsonl") if r.get("model") != "bn"]
    panel_c = drawn(monkeypatch, SMOKE, baseline_only, tmp_path)["fig1"].axes[2]
    assert not panel_c.lines and "not measured" in panel_c.texts[0].get_text()


def test_no_drift_figure_for_a_one_evaluation_window(fig1_run: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config(get_experiment("fig1"), smoke=True, overrides={"eval_every": 60})  # steps 0 and 60
    records = [r for r in read_metrics(fig1_run / "metrics.jsonl") if r["kind"] != "eval" or r["step"] in (0, 60)]
    assert list(drawn(monkeypatch, config, records, tmp_path)) == ["fig1"]
