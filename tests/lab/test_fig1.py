"""Figure 1's pieces: the two networks, the evaluation schedule, and the verdicts on hand-made measurements."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import bnlab
from bnlab.lab.experiments.fig1 import Fig1Config, build_pair, eval_steps, prepare_pixels
from bnlab.lab.experiments.fig1_claims import summarize, unit_drift


def test_same_initial_weights_and_bn_before_each_sigmoid() -> None:
    torch.manual_seed(0)
    pair = build_pair(784, 10, Fig1Config())
    base, bn = pair["baseline"], pair["bn"]
    assert [type(m).__name__ for m in bn] == ["Linear", "BatchNorm1d", "Sigmoid"] * 3 + ["Linear"]
    assert all(isinstance(m, bnlab.BatchNorm1d) for m in bn if isinstance(m, torch.nn.BatchNorm1d))
    lin_base = [m for m in base if isinstance(m, torch.nn.Linear)]
    lin_bn = [m for m in bn if isinstance(m, torch.nn.Linear)]
    assert [m.weight.shape[::-1] for m in lin_base] == [(784, 100), (100, 100), (100, 100), (100, 10)]
    assert all(torch.equal(a.weight, b.weight) for a, b in zip(lin_base, lin_bn, strict=True))
    assert all(m.bias is None for m in lin_bn[:3]) and lin_bn[3].bias is not None  # BN's β replaces the bias
    assert all(not m.bias.detach().any() for m in lin_base)
    assert abs(float(lin_base[0].weight.detach().std()) - Fig1Config().init_std) < 0.01


def test_eval_steps_always_hold_the_claim_steps() -> None:
    steps = eval_steps(Fig1Config(steps=2500, eval_every=700))
    assert steps == [0, 700, 1000, 1400, 2000, 2100, 2500]


def test_pixels() -> None:
    x = torch.rand(5, 1, 4, 4)
    a, _ = prepare_pixels(x, x, "centered")
    assert a.shape == (5, 16) and float(a.min()) >= -1
    s, _ = prepare_pixels(x, x, "standardized")
    assert abs(float(s.mean())) < 1e-5 and abs(float(s.std()) - 1) < 1e-4


def records(acc: dict[str, list[float]], spread: dict[str, float], steps: list[int]) -> list[dict[str, Any]]:
    """Eval records whose percentiles are (−spread·t, 0, +spread·t)-shaped ramps for every unit."""
    out: list[dict[str, Any]] = []
    for model, curve in acc.items():
        for i, (step, a) in enumerate(zip(steps, curve, strict=True)):
            width = spread[model] * i
            out.append({"kind": "eval", "seed": 0, "model": model, "step": step, "test_accuracy": a,
                        "train_loss": None, "p15": [-width] * 4, "p50": [0.1 * i] * 4, "p85": [width] * 4})
        out.append({"kind": "end", "seed": 0, "model": model, "steps": steps[-1], "diverged": False, "seconds": 1})
    return out


STEPS = [0, 1000, 2000, 3000, 4000]


def verdicts(acc: dict[str, list[float]], spread: dict[str, float]) -> list[str]:
    config = Fig1Config(steps=4000, eval_every=1000, hidden=4)
    return [c["verdict"] for c in summarize(config, records(acc, spread, STEPS))["claims"]]


CASES = [
    pytest.param({"baseline": [.1, .5, .7, .8, .9], "bn": [.1, .8, .9, .95, .96]}, {"baseline": 1.0, "bn": 0.1},
                 ["reproduced"] * 3, id="paper-like"),
    pytest.param({"baseline": [.1, .5, .7, .8, .9], "bn": [.1, .8, .85, .88, .899]}, {"baseline": 1.0, "bn": 0.1},
                 ["not reproduced", "reproduced", "reproduced"], id="bn-never-reaches-final-but-within-0.2"),
    pytest.param({"baseline": [.1, .5, .7, .8, .9], "bn": [.1, .4, .9, .95, .96]}, {"baseline": 1.0, "bn": 0.1},
                 ["not reproduced", "reproduced", "reproduced"], id="bn-slower-at-1000"),
    pytest.param({"baseline": [.1, .5, .7, .8, .9], "bn": [.1, .4, .6, .9, .897]}, {"baseline": 0.1, "bn": 1.0},
                 ["not reproduced", "not reproduced", "not reproduced"], id="bn-worse-and-drifting"),
]


@pytest.mark.parametrize(("acc", "spread", "expected"), CASES)
def test_verdicts_follow_the_numbers(acc: dict[str, list[float]], spread: dict[str, float],
                                     expected: list[str]) -> None:
    assert verdicts(acc, spread) == expected


def test_first_claim_not_judged_on_a_short_run() -> None:
    config = Fig1Config(steps=40, eval_every=20, hidden=4)
    acc = {"baseline": [.1, .2, .3], "bn": [.1, .4, .5]}
    claims = summarize(config, records(acc, {"baseline": 1, "bn": 0.1}, [0, 20, 40]))["claims"]
    assert claims[0]["verdict"] == "not judged"


def test_unit_drift() -> None:
    pct = np.zeros((3, 4, 2))  # (percentiles, steps, units)
    pct[:, :, 1] = [[0, 1, 3, 2]] * 3  # unit 1 sweeps the range 0..3 in every percentile
    assert unit_drift(pct).tolist() == [0.0, 3.0]
