"""Figure 1's pieces: the two networks, the evaluation schedule, the pixel scaling, the drift measure."""

from __future__ import annotations

import numpy as np
import torch

import bnlab
from bnlab.lab.experiments.fig1 import Fig1Config, build_pair, eval_steps, prepare_pixels
from bnlab.lab.experiments.fig1.claims import unit_drift


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


def test_unit_drift() -> None:
    pct = np.zeros((3, 4, 2))  # (percentiles, steps, units)
    pct[:, :, 1] = [[0, 1, 3, 2]] * 3  # unit 1 sweeps the range 0..3 in every percentile
    assert unit_drift(pct).tolist() == [0.0, 3.0]
    pct[0, 3, 1] = np.nan  # a missing value is not skipped: it must not shorten the window silently
    assert np.isnan(unit_drift(pct)[1])
