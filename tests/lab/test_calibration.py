"""scripts/calibrate_fig1.py: a resumed calibration skips only the grid points measured with the same data set and
step count (training is replaced by a stand-in that logs what the script reads)."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "calibrate_fig1.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("calibrate_fig1", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_resume_skips_only_points_of_the_same_data_set_and_steps(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    script = load_script()
    trained: list[tuple[float, float]] = []

    def stand_in(config: Any, ctx: Any, models: tuple[str, ...]) -> None:
        trained.append((config.init_std, config.lr))
        for step in (0, 1000, 2000, config.steps):
            ctx.log({"kind": "eval", "seed": ctx.seed, "model": "baseline", "step": step, "test_accuracy": 0.5,
                     "p15": [0.0], "p50": [0.0], "p85": [0.0]})
        ctx.log({"kind": "end", "seed": ctx.seed, "model": "baseline", "steps": config.steps, "diverged": False,
                 "seconds": 0.0})

    monkeypatch.setattr(script.fig1, "train", stand_in)
    out = tmp_path / "calibration.jsonl"
    point = {"pixels": "unit", "init_std": 0.1, "final_accuracy": 0.8}
    out.write_text("\n".join(json.dumps(row) for row in [
        {**point, "lr": 1.0, "dataset": "fashion-mnist", "steps": 3000},  # measured: skipped
        {**point, "lr": 0.3, "dataset": "fashion-mnist", "steps": 5000},  # other steps: measured again
        {**point, "lr": 3.0, "dataset": "mnist-5k", "steps": 3000},  # other data set: measured again
    ]) + "\n")
    script.calibrate(argparse.Namespace(out=str(out), dataset="fashion-mnist", steps=3000, seeds=[0, 1],
                                        pixels=["unit"]))
    grid = {(s, lr) for s in (0.01, 0.1) for lr in (0.1, 0.3, 1.0, 3.0)}
    assert set(trained) == grid - {(0.1, 1.0)} and len(trained) == 2 * 7  # two seeds per point
    assert len(out.read_text().splitlines()) == 3 + 7
