"""E4 ``variance``: the measurements against a float64 reference, the verdicts against hand-made numbers, and the
report as Chromium renders it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bnlab.lab.experiments.variance import VarianceConfig, claims
from bnlab.lab.experiments.variance.config import records as record_schema
from bnlab.lab.experiments.variance.config import units
from bnlab.lab.experiments.variance.nets import jacobian_singular_values, measure, network_weights
from bnlab.lab.experiments.variance.plots import GRAD_COLOR, HIST_COLOR
from bnlab.lab.schema import why_wrong
from lab.chromium import check_report
from tolerances import assert_as_accurate_as_torch

ACTS = {"tanh": torch.tanh, "relu": torch.relu, "selu": torch.selu}


def reference(x: torch.Tensor, labels: torch.Tensor, weights: list[torch.Tensor], act: str, bn: bool,
              dtype: torch.dtype) -> dict[str, list[float]]:
    """The network written out with torch alone in ``dtype``: BN as (z − μ_B) / √(σ²_B + ε), biased σ²_B."""
    h = x.to(dtype).requires_grad_(True)
    zs, pres, hs = [], [], []
    for w in weights[:-1]:
        z = h @ w.to(dtype).T
        z.retain_grad()
        pre = (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + 1e-5) if bn else z
        h = ACTS[act](pre)
        zs.append(z)
        pres.append(pre)
        hs.append(h)
    torch.nn.functional.cross_entropy(h @ weights[-1].to(dtype).T, labels, reduction="sum").backward()
    pres, hs = [p.detach() for p in pres], [t.detach() for t in hs]
    return {"pre_std": [float(p.std()) for p in pres], "h_std": [float(t.std()) for t in hs],
            "h_mean": [float(t.mean()) for t in hs], "g_std": [float(z.grad.std()) for z in zs]}


@pytest.mark.parametrize(("act", "init", "bn"), [
    pytest.param("tanh", "glorot_uniform", False, id="tanh-glorot"),
    pytest.param("relu", "he_normal", True, id="relu-he-bn"),
    pytest.param("selu", "normal-0.01", True, id="selu-small-bn"),
])
def test_measurements_are_as_accurate_as_torch(act: str, init: str, bn: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 20, generator=gen)
    labels = torch.randint(0, 10, (64,), generator=gen)
    weights = network_weights(init, 20, 32, 3, torch.Generator().manual_seed(1), torch.device("cpu"))
    ours = measure(x, labels, weights, act, bn, bins=8, leak=0.01)
    theirs = reference(x, labels, weights, act, bn, torch.float32)
    exact = reference(x, labels, weights, act, bn, torch.float64)
    for field in ("pre_std", "h_std", "h_mean", "g_std"):
        assert_as_accurate_as_torch(torch.tensor(getattr(ours, field)), torch.tensor(theirs[field]),
                                    torch.tensor(exact[field]), torch.float32, what=field)
    assert ours.h_hist.shape == (3, 8) and float(ours.h_hist.sum()) == 3 * 64 * 32  # every value counted


def test_jacobian_singular_values_against_autograd() -> None:
    x = torch.randn(3, 12, generator=torch.Generator().manual_seed(0))
    ours = jacobian_singular_values(x, "standard", 3, torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)  # the same draws: the first layer, then one per Jacobian
    bound = 1 / math.sqrt(12)
    w = [torch.empty(12, 12).uniform_(-bound, bound, generator=gen).double() for _ in range(3)]
    expected = []
    for i in (1, 2):
        values = []
        for row in x.double():
            def layer_up(h: torch.Tensor, i: int = i) -> torch.Tensor:
                return torch.tanh(h @ w[i].T)
            h = torch.tanh(row @ w[0].T)
            for k in range(1, i):
                h = torch.tanh(h @ w[k].T)
            values.append(torch.linalg.svdvals(torch.autograd.functional.jacobian(layer_up, h)).mean())
        expected.append(float(torch.stack(values).mean()))
    np.testing.assert_allclose(ours, expected, rtol=1e-5)


def layers(seed: int, input_: str, act: str, init: str, bn: bool, h_std: list[float], *, depth: int = 4,
           saturated: float | None = None, pre: float = 1.0) -> dict[str, Any]:
    return {"kind": "layers", "seed": seed, "input": input_, "activation": act, "init": init, "batch_norm": bn,
            "z_std": [1.0] * depth, "pre_mean": [0.0] * depth, "pre_std": [pre] * depth, "h_mean": [0.0] * depth,
            "h_std": h_std, "saturated": [None] * (depth - 1) + [saturated], "g_mean": [0.0] * depth,
            "g_std": [1.0] * depth}


CONFIG = VarianceConfig(depth=4, inits=("normal-0.01", "normal-1"), activations=("tanh",), inputs=("gaussian",),
                        selu_depth=3, jacobian_depth=3)


def verdict(records: list[dict[str, Any]], index: int, config: VarianceConfig = CONFIG) -> str:
    return claims.summarize(config, records).claims[index].verdict


@pytest.mark.parametrize(("last", "expected"), [
    pytest.param(1e-4, "reproduced", id="vanishes"),
    pytest.param(5e-3, "not reproduced", id="shrinks-too-little"),
])
def test_vanishing_claim_follows_the_numbers(last: float, expected: str) -> None:
    recs = [layers(0, "gaussian", "tanh", "normal-0.01", False, [1.0, 0.1, 0.01, 1e-4]),
            layers(1, "gaussian", "tanh", "normal-0.01", False, [1.0, 0.1, 0.01, last])]
    assert verdict(recs, 0) == expected  # every seed must pass


def test_saturation_claim_and_a_network_not_measured() -> None:
    recs = [layers(0, "gaussian", "tanh", "normal-1", False, [1.0] * 4, saturated=0.91)]
    assert verdict(recs, 1) == "reproduced"
    recs[0]["saturated"][-1] = 0.89
    assert verdict(recs, 1) == "not reproduced"
    result = claims.summarize(CONFIG, recs)
    assert result.claims[0].verdict == "not judged" and "did not measure" in result.claims[0].evidence


@pytest.mark.parametrize(("pre", "expected"), [
    pytest.param(1.0, "reproduced", id="normalized"),
    pytest.param(1.2, "not reproduced", id="one-network-off"),
])
def test_batch_norm_claim_needs_every_layer_in_range(pre: float, expected: str) -> None:
    recs = [layers(0, "gaussian", "tanh", "normal-0.01", True, [0.6] * 4),
            layers(0, "gaussian", "tanh", "normal-1", True, [0.6] * 4, pre=pre)]
    assert verdict(recs, 5) == expected


@pytest.mark.parametrize(("worst_mean", "expected"), [
    pytest.param(0.1, "reproduced", id="self-normalizes"),
    pytest.param(0.3, "not reproduced", id="mean-drifts"),
])
def test_selu_claim(worst_mean: float, expected: str) -> None:
    recs = [{"kind": "selu", "seed": 0, "input": "gaussian", "mean": [0.0, worst_mean, 0.0], "std": [1.0, 0.9, 1.1]}]
    assert verdict(recs, 4) == expected


@pytest.mark.parametrize(("normalized", "expected"), [
    pytest.param([0.78, 0.82], "reproduced", id="about-0.8"),
    pytest.param([0.6, 0.65], "not reproduced", id="too-low"),
])
def test_jacobian_claim(normalized: list[float], expected: str) -> None:
    recs = [{"kind": "jacobian", "seed": 0, "init": "glorot_uniform", "singular": normalized},
            {"kind": "jacobian", "seed": 0, "init": "standard", "singular": [0.5, 0.5]}]
    assert verdict(recs, 6) == expected


def test_a_non_finite_measurement_fails_its_claim() -> None:
    recs = [layers(0, "gaussian", "tanh", "normal-0.01", False, [1.0, 0.1, 0.01, None])]  # type: ignore[list-item]
    assert verdict(recs, 0) == "not reproduced"


def test_units_and_record_shapes() -> None:
    config = VarianceConfig()
    assert len(units(config)) == 2 * 6 + 2 + 1
    schema = record_schema(config)
    good = layers(0, "gaussian", "tanh", "he_normal", True, [1.0] * 10, depth=10)
    assert why_wrong(good, schema) is None
    assert "must hold 10 numbers" in str(why_wrong({**good, "h_std": [1.0]}, schema))
    assert "must be one of" in str(why_wrong({**good, "init": "kaiming"}, schema))


def test_report_renders(variance_run: Path, tmp_path: Path) -> None:
    check_report(variance_run, tmp_path, {"activation histograms": HIST_COLOR, "gradient histograms": GRAD_COLOR},
                 name="variance-report.png", height=6000)
