"""The per-call overhead benchmark end to end, tiny: every shape and mode, the paired overhead, the environment."""

from __future__ import annotations

import json

import pytest

from benchmarks import call_overhead


def test_call_overhead_writes_every_row_with_its_environment(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "overhead.json"
    assert call_overhead.main(["--reps", "3", "--calls", "5", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {(tuple(r["shape"]), r["mode"]): r for r in result["results"]}
    assert set(rows) == {(shape, mode) for shape in call_overhead.SHAPES for mode in ("eval", "train")}
    for row in rows.values():
        assert set(row["median_us"]) == {"torch", "bnlab auto", "bnlab native"}
        assert all(t > 0 for t in row["median_us"].values()) and row["ratio"] > 0
    env = result["environment"]
    assert env["cpu"] and len(env["loadavg_start"]) == len(env["loadavg_end"]) == 3
    assert "goal: (256, 512) eval within 3.0 µs" in capsys.readouterr().out
