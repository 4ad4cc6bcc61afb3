"""The benchmark runner end to end on one tiny case: rows, summary, environment, Markdown; CLI errors."""

from __future__ import annotations

import json

import torch

from benchmarks import run


def test_runner_writes_json_and_markdown(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(run, "catalogue", lambda device, suite: [run.Case((64, 8), torch.float32, "nchw")])
    monkeypatch.setattr(run.memory, "measure", lambda act: {"activation": act, "shape": [1, 1, 1, 1], "blocks": 1,
                                                            "layer_bytes": {"torch": 2, "bnlab save=input": 1,
                                                                            "bnlab save=output": 1},
                                                            "stack_bytes": {"torch": 2, "bnlab save=output": 1},
                                                            "layer_ratio_output": 0.5, "layer_ratio_input": 0.5,
                                                            "stack_ratio_output": 0.5})
    out = tmp_path / "r.json"
    assert run.main(["--device", "cpu", "--reps", "2", "--warmup", "0", "--json", str(out),
                     "--backends", "native"]) == 0
    result = json.loads(out.read_text())
    assert {r["op"] for r in result["rows"]} == {"fwd", "bwd", "fwd+bwd", "eval"}
    row = result["rows"][0]
    assert row["ratio"] > 0 and row["floor_ms"] > 0 and row["floor_fraction"] > 0
    assert result["environment"]["torch"] == torch.__version__ and result["copy_bandwidth_GBps"] > 0
    assert "| case | op |" in out.with_suffix(".md").read_text()


def test_cli_errors_are_one_line_exit_2(capsys) -> None:
    assert run.main(["--backends", "nonexistent"]) == 2
    if not torch.cuda.is_available():
        assert run.main(["--device", "cuda"]) == 2
    assert "error:" in capsys.readouterr().err


def test_auto_is_timed_as_users_get_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(run, "catalogue", lambda device, suite: [run.Case((64, 8), torch.float32, "nchw")])
    monkeypatch.setattr(run.memory, "measure", lambda act: {})
    monkeypatch.setattr(run, "markdown", lambda result: "")
    out = tmp_path / "r.json"
    assert run.main(["--device", "cpu", "--reps", "2", "--warmup", "0", "--json", str(out),
                     "--backends", "auto", "native"]) == 0
    result = json.loads(out.read_text())
    assert {r["backend"] for r in result["rows"]} == {"auto", "native"}
    assert result["disturbances"]["samples"] > 0
    assert run.competitors(None, torch.device("cpu"), torch.float32)[-1] == "auto"
    assert "reference" not in run.competitors(None, torch.device("cpu"), torch.float32)
