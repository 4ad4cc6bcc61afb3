"""scripts/calibrate_fig1.py is a lab sweep: the grid, the baseline alone, resumed where it stopped, and the table."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from bnlab.lab import registry
from bnlab.lab.records import read_metrics
from bnlab.lab.runner import resume_run

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "calibrate_fig1.py"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "calibration-fig1.jsonl"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("calibrate_fig1", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_grid_is_the_documented_one() -> None:
    points = load_script().grid()
    assert len(points) == 24 and points[0] == {"pixels": "unit", "init_std": 0.01, "lr": 0.1}
    assert len({tuple(p.values()) for p in points}) == 24


def test_interrupted_calibration_resumes_and_chooses_by_the_baseline(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    script = load_script()
    monkeypatch.setattr(script, "INIT_STDS", (0.1,))
    monkeypatch.setattr(script, "LRS", (0.3, 3.0))
    experiment = registry.get_experiment("fig1")
    trained: list[tuple[int, float, str]] = []

    def counting(config: Any, ctx: Any) -> None:
        trained.append((ctx.seed, config.lr, ctx.unit["model"]))
        if len(trained) == 3:  # the first unit of the second point
            raise KeyboardInterrupt
        experiment.train(config, ctx)

    from dataclasses import replace
    monkeypatch.setitem(registry.experiments(), "fig1", replace(experiment, train=counting))
    monkeypatch.setattr(script.fig1, "EXPERIMENT", registry.experiments()["fig1"])
    with pytest.raises(KeyboardInterrupt):
        script.calibrate(tmp_path, "synthetic", 60, [0, 1], ("unit",), threads=1)
    (run_dir,) = (tmp_path / "fig1").iterdir()
    resume_run(run_dir, progress=False)
    # Point 0 (lr 0.3) ran once per seed; point 1's first seed was interrupted and ran again; the BN net never.
    assert trained == [(0, 0.3, "baseline"), (1, 0.3, "baseline"), (0, 3.0, "baseline"), (0, 3.0, "baseline"),
                       (1, 3.0, "baseline")]
    done = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "unit_done"]
    assert [(r["point"], r["seed"]) for r in done] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    rows = script.rows_of_run(run_dir)
    assert [(r["lr"], r["pixels"]) for r in rows] == [(0.3, "unit"), (3.0, "unit")]
    best = max(rows, key=lambda r: r["final_accuracy"])
    text = script.table(rows)
    assert f"| unit | 0.1 | {best['lr']} **chosen** |" in text and text.count("**chosen**") == 1


def test_table_of_the_recorded_calibration() -> None:
    script = load_script()
    text = script.table(script.rows_of_jsonl(DOCS))
    assert "| standardized | 0.1 | 1.0 **chosen** | 86.34 ± 0.29 |" in text and len(text.splitlines()) == 26
