"""``bnlab run fig1 --nproc 2``: two gloo processes with DDP and SyncBatchNorm train what one process trains on the
whole batch (the same curves within float tolerance), and only rank 0 writes the run's files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from distributed.launcher import require_gloo

SMOKE = ["--set", "dataset=synthetic", "--set", "steps=20", "--set", "eval_every=10", "--set", "hidden=8"]


def run(out: Path, *extra: str) -> list[dict[str, Any]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "bnlab.cli", "run", "fig1", *SMOKE, "--out", str(out), *extra],
                          env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    runs = list((out / "fig1").iterdir())
    assert len(runs) == 1, runs  # one run folder: the other rank wrote nothing here
    return [json.loads(line) for line in (runs[0] / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_draw_the_curves_of_one_process(tmp_path: Path) -> None:
    require_gloo()
    two = run(tmp_path / "two", "--nproc", "2")
    one = run(tmp_path / "one")
    evals = [(a, b) for a, b in zip(one, two, strict=True) if a["kind"] == "eval"]
    assert len(evals) == 6  # two networks, evaluated at steps 0, 10 and 20
    for a, b in evals:
        assert a.keys() == b.keys()
        for key, value in a.items():
            if isinstance(value, float):
                assert b[key] == pytest.approx(value, rel=1e-5, abs=1e-5), (a["model"], a["step"], key)
            elif isinstance(value, list):  # percentiles of the sigmoid inputs, rounded to 5 decimals
                assert b[key] == pytest.approx(value, abs=2e-5), (a["model"], a["step"], key)
            else:
                assert b[key] == value, key


@pytest.mark.parametrize("nproc", [pytest.param("0", id="zero"), pytest.param("999", id="too-many")])
def test_a_bad_process_count_is_one_line(nproc: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from bnlab.cli import main

    assert main(["run", "fig1", *SMOKE, "--out", str(tmp_path), "--nproc", nproc]) == 2
    assert "--nproc must be between 1 and 256" in capsys.readouterr().err
