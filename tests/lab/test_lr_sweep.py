"""E6 ``lr_sweep``: the networks and one run against a hand-written loop and float64, the landscape ratio against
float64, the verdicts against hand-made records, resuming an interrupted sweep, and the report in Chromium."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from bnlab.lab import registry
from bnlab.lab.experiments.lr_sweep import LrSweepConfig, claims
from bnlab.lab.experiments.lr_sweep.config import alphas, records, units
from bnlab.lab.experiments.lr_sweep.plots import COLORS
from bnlab.lab.experiments.lr_sweep.train import build_pair, load, prepare_pixels, train
from bnlab.lab.records import read_metrics
from bnlab.lab.registry import RunContext, get_experiment
from bnlab.lab.runner import make_config, resume_run, run_experiment
from bnlab.lab.schema import why_wrong
from lab.chromium import check_report

SMALL = LrSweepConfig(dataset="synthetic", lrs=(0.01, 0.1), depth=3, width=16, batch_size=20, final_window=5,
                      check_every=5, alpha_count=7)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    experiment = get_experiment("lr_sweep")
    return run_experiment(experiment, make_config(experiment, smoke=True), out_root=tmp_path_factory.mktemp("runs"),
                          seeds=(0,), device="cpu", progress=False)


def context(unit: dict[str, Any], logged: list[dict[str, Any]], seed: int = 0) -> RunContext:
    return RunContext(seed=seed, device=torch.device("cpu"), log=logged.append, unit=unit, progress=False)


def test_pair_shares_he_normal_weights() -> None:
    config = dataclasses.replace(SMALL, depth=2, width=512)
    pair = build_pair(config, 784, 10, seed=3)
    plain = [m for m in pair["plain"] if isinstance(m, torch.nn.Linear)]
    bn = [m for m in pair["bn"] if isinstance(m, torch.nn.Linear)]
    assert all(torch.equal(a.weight, b.weight) for a, b in zip(plain, bn, strict=True))
    assert [m.bias is None for m in bn] == [True, True, False]  # β replaces the hidden biases; the output keeps one
    assert all(float(m.bias.detach().abs().max()) == 0 for m in plain)
    # He normal: variance 2 / fan_in (Keras's truncated normal, rescaled), within 5% over 401,408 draws.
    assert float(plain[0].weight.detach().double().var()) == pytest.approx(2 / 784, rel=0.05)
    assert torch.equal(build_pair(config, 784, 10, seed=3)["plain"][0].weight, plain[0].weight)  # seed alone
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in pair["bn"]) == 2


def test_pixels_are_scaled_with_the_training_statistics() -> None:
    x_train = torch.rand(50, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    x_test = torch.rand(20, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    a, b = prepare_pixels(x_train, x_test, "global")
    ref = x_train.double().flatten(1)
    assert float(a.double().mean()) == pytest.approx(0, abs=1e-6) and float(a.double().std()) == pytest.approx(1)
    expected = (x_test.double().flatten(1) - ref.mean()) / ref.std()
    torch.testing.assert_close(b.double(), expected, rtol=1e-5, atol=1e-6)
    a, _ = prepare_pixels(x_train, x_test, "pixel")
    torch.testing.assert_close(a.double().mean(0), torch.zeros(16, dtype=torch.float64), atol=1e-6, rtol=0)


def test_a_run_records_what_a_hand_written_loop_computes() -> None:
    logged: list[dict[str, Any]] = []
    train(SMALL, context({"lr": 0.1, "model": "bn"}, logged))
    (record,) = logged
    assert why_wrong(record, records(SMALL)) is None
    x, y, x_test, y_test, classes = load(SMALL, torch.device("cpu"), None, {})
    model = build_pair(SMALL, x.shape[1], classes, 0)["bn"]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))  # batches(): one permutation
    losses = []
    for step in range(len(x) // 20):
        idx = order[step * 20:(step + 1) * 20]
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert record["steps"] == record["planned_steps"] == 30 and not record["diverged"]
    assert record["losses"] == pytest.approx(losses, rel=1e-4)
    assert record["final_loss"] == pytest.approx(sum(losses[-5:]) / 5, rel=1e-4)
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).double().mean().item()
    assert record["test_accuracy"] == pytest.approx(accuracy, abs=1e-6)


def test_a_diverging_run_stops_and_says_where() -> None:
    logged: list[dict[str, Any]] = []
    train(dataclasses.replace(SMALL, check_every=4), context({"lr": 1e4, "model": "plain"}, logged))
    (record,) = logged
    first_bad = next(i for i, v in enumerate(record["losses"]) if v is None or not math.isfinite(v)) + 1
    assert record["diverged"] and record["diverged_at"] == first_bad and record["final_loss"] is None
    assert record["steps"] == 4 * math.ceil(first_bad / 4) < record["planned_steps"]  # stopped at the next check
    assert record["test_accuracy"] is None  # non-finite weights are not scored


def test_landscape_ratios_against_float64() -> None:
    logged: list[dict[str, Any]] = []
    config = dataclasses.replace(SMALL, landscape_updates=(0, 2))
    train(config, context({"landscape": "plain"}, logged))
    assert [r["updates"] for r in logged] == [0, 2]
    x, y, _, _, classes = load(config, torch.device("cpu"), None, {})
    model = build_pair(config, x.shape[1], classes, 0)["plain"].double()
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:20]
    xb, yb = x[idx].double(), y[idx]
    loss = torch.nn.functional.cross_entropy(model(xb), yb)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    expected = []
    with torch.no_grad():
        for alpha in alphas(config):
            moved = {n: p - alpha * g for (n, p), g in zip(model.named_parameters(), grads, strict=True)}
            out = torch.func.functional_call(model, moved, (xb,))
            expected.append(float(torch.nn.functional.cross_entropy(out, yb) / loss))
    got = logged[0]["ratios"]
    finite = [i for i, v in enumerate(expected) if math.isfinite(v) and v < 1e6]
    assert [got[i] for i in finite] == pytest.approx([expected[i] for i in finite], rel=1e-3)


def run(seed: int, model: str, lr: float, diverged: bool = False, accuracy: float | None = 0.8) -> dict[str, Any]:
    return {"kind": "run", "seed": seed, "model": model, "lr": lr, "steps": 10, "planned_steps": 10,
            "losses": [1.0] * 10, "final_loss": None if diverged else 0.5,
            "test_accuracy": None if diverged else accuracy, "diverged": diverged,
            "diverged_at": 3 if diverged else None, "seconds": 1.0}


LRS = (0.001, 0.01, 0.1, 1.0)
CONFIG = LrSweepConfig(lrs=LRS, landscape_updates=())


def sweep(seed: int, plain_max: float, bn_max: float, plain_acc: float = 0.8, bn_acc: float = 0.85) -> list[dict]:
    """Runs in which each network is stable up to its ``*_max`` and reaches its accuracy at that rate."""
    return [run(seed, m, lr, diverged=lr > top, accuracy=acc if lr == top else 0.5)
            for m, top, acc in (("plain", plain_max, plain_acc), ("bn", bn_max, bn_acc)) for lr in LRS]


@pytest.mark.parametrize(("plain_max", "bn_max", "expected"), [
    pytest.param(0.01, 0.1, "reproduced", id="ten-times"),
    pytest.param(0.01, 0.01, "not reproduced", id="same-rate"),
    pytest.param(0.0001, 1.0, "reproduced", id="no-bn-diverges-everywhere"),
    pytest.param(0.01, 0.0001, "not reproduced", id="bn-diverges-everywhere"),
])
def test_stable_rate_claim(plain_max: float, bn_max: float, expected: str) -> None:
    result = claims.summarize(CONFIG, sweep(0, plain_max, bn_max))
    assert result.claims[0].verdict == expected


@pytest.mark.parametrize(("bn_acc", "expected"), [
    pytest.param(0.83, "reproduced", id="plus-3-points"),
    pytest.param(0.829, "not reproduced", id="plus-2.9-points"),
])
def test_accuracy_claim_threshold(bn_acc: float, expected: str) -> None:
    result = claims.summarize(CONFIG, sweep(0, 0.01, 0.1, plain_acc=0.8, bn_acc=bn_acc))
    assert result.claims[1].verdict == expected
    assert result.claims[2].verdict == "reported"


def test_every_seed_must_hold_and_a_missing_seed_is_left_out() -> None:
    records_ = [{"kind": "plan", "seeds": [0, 1, 2]}, *sweep(0, 0.01, 0.1), *sweep(1, 0.01, 0.01)]
    result = claims.summarize(CONFIG, records_)
    assert result.claims[0].verdict == "not reproduced"  # seed 1 fails
    assert "seed 2 (not measured" in result.claims[0].evidence
    only_missing = claims.summarize(CONFIG, [{"kind": "plan", "seeds": [0]}, *sweep(0, 0.01, 0.1)[:-1]])
    assert only_missing.claims[0].verdict == "not judged"


def landscape(seed: int, model: str, updates: int, rise_at: int | None) -> dict[str, Any]:
    a = alphas(LrSweepConfig())
    ratios = [0.9 if rise_at is None or i < rise_at else 5.0 for i in range(len(a))]
    return {"kind": "landscape", "seed": seed, "model": model, "updates": updates, "lr": 0.003, "alphas": a,
            "ratios": ratios}


@pytest.mark.parametrize(("plain_at", "bn_at", "expected"), [
    pytest.param(10, 15, "reproduced", id="bn-five-steps-later"),  # 5 grid steps of 10^0.25: 17.8×
    pytest.param(10, 13, "not reproduced", id="bn-three-steps-later"),  # 5.6×
    pytest.param(10, None, "reproduced", id="bn-never-rises"),  # α_div(bn) > 10 ≥ 10 × 0.0032
    pytest.param(None, None, "not judged", id="neither-rises"),
])
def test_landscape_claim(plain_at: int | None, bn_at: int | None, expected: str) -> None:
    config = LrSweepConfig(lrs=LRS)
    recs = [*sweep(0, 0.01, 0.1), *(landscape(0, m, u, at) for u in (0, 10)
                                    for m, at in (("plain", plain_at), ("bn", bn_at)))]
    assert claims.summarize(config, recs).claims[3].verdict == expected


@pytest.mark.parametrize(("ratios", "expected"), [
    pytest.param([0.9, 1.5, 2.5, 9.0], 0.01, id="first-above-2"),
    pytest.param([0.9, None, 1.0, 1.0], 0.001, id="non-finite-counts"),
    pytest.param([0.9, 1.0, 2.0, 1.9], None, id="never-above"),
])
def test_alpha_div(ratios: list[float | None], expected: float | None) -> None:
    assert claims.alpha_div([1e-4, 1e-3, 1e-2, 1e-1], ratios) == expected


def test_units_and_records() -> None:
    config = LrSweepConfig()
    assert len(units(config)) == 8 * 2 + 2
    assert units(dataclasses.replace(config, landscape_updates=()))[-1] == {"lr": 3.0, "model": "bn"}
    good = run(0, "bn", 0.1)
    assert why_wrong(good, records(config)) is None
    assert "must be in 1.." in str(why_wrong({**good, "diverged_at": 0}, records(config)))
    with pytest.raises(ValueError, match="lrs must list positive"):
        LrSweepConfig(lrs=(0.1, 0.1))


def test_an_interrupted_sweep_resumes_run_by_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    experiment = get_experiment("lr_sweep")
    config = make_config(experiment, smoke=True)
    trained: list[dict[str, Any]] = []

    def counting(config: Any, ctx: RunContext) -> None:
        trained.append(dict(ctx.unit))
        if len(trained) == 4:  # in the middle of the fourth unit
            raise KeyboardInterrupt
        experiment.train(config, ctx)

    monkeypatch.setitem(registry.experiments(), "lr_sweep", dataclasses.replace(experiment, train=counting))
    with pytest.raises(KeyboardInterrupt):
        run_experiment(registry.experiments()["lr_sweep"], config, out_root=tmp_path, device="cpu", progress=False)
    (run_dir,) = (tmp_path / "lr_sweep").iterdir()
    monkeypatch.setitem(registry.experiments(), "lr_sweep", experiment)
    resume_run(run_dir, progress=False)
    done = [r["unit"] for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "unit_done"]
    assert done == units(config)  # each unit once, in order: the first three kept, the fourth run again
    assert trained == units(config)[:4]
    fresh = run_experiment(experiment, config, out_root=tmp_path / "fresh", device="cpu", progress=False)

    def runs(path: Path) -> list[Any]:
        return [(r["model"], r["lr"], r["losses"]) for r in read_metrics(path / "metrics.jsonl") if r["kind"] == "run"]

    assert runs(run_dir) == runs(fresh)  # a resumed sweep measures what an uninterrupted one does
    assert json.loads((run_dir / "result.json").read_text())["complete"]


def test_report_renders(smoke_run: Path, tmp_path: Path) -> None:
    check_report(smoke_run, tmp_path, {"without BN": COLORS["plain"], "with BN": COLORS["bn"]},
                 name="lr_sweep-report.png", height=3000)
