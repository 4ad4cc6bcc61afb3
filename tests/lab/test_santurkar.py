"""E2 ``santurkar``: the networks and the noise, the verdicts against hand-made records (each rule, each way it
can fail), the measures against hand arithmetic, and the report as Chromium renders it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bnlab.lab import registry
from bnlab.lab.experiments.santurkar import SanturkarConfig, claims
from bnlab.lab.experiments.santurkar.config import cnn_lr, probed, units
from bnlab.lab.experiments.santurkar.config import records as record_schema
from bnlab.lab.experiments.santurkar.measures import LandscapeSeries, median_step_change
from bnlab.lab.experiments.santurkar.nets import NoisyShift, cnn, dln, layer_parameters, preactivation, shared_weights
from bnlab.lab.experiments.santurkar.plots import COLORS
from bnlab.lab.records import read_metrics
from bnlab.lab.registry import RunContext, get_experiment
from bnlab.lab.runner import make_config, resume_run, run_experiment
from bnlab.lab.schema import why_wrong
from lab.chromium import check_report

# --- the networks and the noise ---


def test_noise_has_a_mean_and_scale_per_feature_that_change_every_step() -> None:
    torch.manual_seed(0)
    noise = NoisyShift(mean_range=2.0, scale_range=4.0)
    zeros = torch.zeros(20_000, 3, 2, 2)
    a, b = noise(zeros), noise(zeros)
    for out in (a, b):
        per_feature = out.transpose(0, 1).reshape(3, -1)
        sigma = per_feature.std(dim=1)  # σ·(0 + μ + ε): std σ, mean σ·μ
        mu = per_feature.mean(dim=1) / sigma
        assert torch.all((sigma > 0.97) & (sigma < 4.03)), sigma
        assert torch.all(mu.abs() < 2.03), mu
    assert not torch.allclose(a.mean(dim=(0, 2, 3)), b.mean(dim=(0, 2, 3)), atol=0.05)  # re-drawn each step
    noise.eval()
    x = torch.randn(4, 3)
    assert torch.equal(noise(x), x)


@pytest.mark.parametrize(("mean_range", "scale_range"), [
    pytest.param(-0.1, 2.0, id="negative-mean-range"),
    pytest.param(0.5, 0.9, id="scale-below-one"),
])
def test_noise_refuses_meaningless_ranges(mean_range: float, scale_range: float) -> None:
    with pytest.raises(ValueError, match="mean_range ≥ 0 and scale_range ≥ 1"):
        NoisyShift(mean_range, scale_range)


def test_cnn_layers_and_pre_activations() -> None:
    nets = {(bn, noise): cnn((4, 4, 8, 8, 16), 12, 10, batch_norm=bn, noise=noise)
            for bn in (False, True) for noise in (False, True)}
    layers = layer_parameters(nets[(True, True)])
    assert [group[0] for group in layers] == [*(f"conv{k}.weight" for k in range(1, 6)), "fc6.weight", "fc7.weight"]
    assert layers[0] == ["conv1.weight", "bn1.weight", "bn1.bias"] and layers[-1] == ["fc7.weight", "fc7.bias"]
    assert layer_parameters(nets[(False, False)])[2] == ["conv3.weight", "conv3.bias"]
    assert isinstance(preactivation(nets[(True, True)], 3), NoisyShift)
    assert isinstance(preactivation(nets[(True, False)], 3), torch.nn.BatchNorm2d)
    assert isinstance(preactivation(nets[(False, False)], 6), torch.nn.Linear)
    assert nets[(False, False)](torch.randn(2, 1, 28, 28)).shape == (2, 10)
    shared_weights(list(nets.values()), torch.Generator().manual_seed(3))
    first = dict(nets[(False, False)].named_parameters())
    for net in nets.values():
        for name, p in net.named_parameters():
            if name in first and "weight" in name and not name.startswith("bn"):
                assert torch.equal(p, first[name]), name  # every variant starts from the same weights
    assert float(first["conv1.bias"].detach().abs().sum()) == 0


def test_deep_linear_network() -> None:
    plain, with_bn = dln(25, 10, batch_norm=False), dln(25, 10, batch_norm=True)
    assert len(layer_parameters(plain)) == 25 and layer_parameters(with_bn)[24] == ["fc25.weight"]
    shared_weights([plain, with_bn], torch.Generator().manual_seed(0), init="orthogonal")
    w = dict(plain.named_parameters())["fc7.weight"].detach()
    torch.testing.assert_close(w @ w.T, torch.eye(10), atol=1e-5, rtol=0)  # orthogonal: norms kept through depth
    x = torch.randn(64, 10)
    with torch.no_grad():
        assert float(plain(x).norm()) == pytest.approx(float(x.norm()), rel=1e-4)


# --- the verdicts, from hand-made records ---

CONFIG = SanturkarConfig(dataset="synthetic", steps=100, eval_every=50, trace_every=10, probe_every=50,
                         dln_steps=100, dln_probe_every=50)
BN = probed(CONFIG)[1]  # BN at Standard's learning rate: the network probed beside Standard on the CNN
CLAIM = {"noise_as_good": 0, "better": 1, "moves": 2, "noise_hurts": 3, "ics_cnn": 4, "ics_dln": 5, "cosine": 6,
         "dln_l2": 7, "loss_range": 8, "predictive": 9, "beta": 10}


def healthy(seed: int = 0) -> list[dict[str, Any]]:
    """Records of a run in which every claim holds, with round numbers."""
    recs: list[dict[str, Any]] = []
    accuracy = {"standard": 0.80, "bn": 0.90, "bn_noise": 0.89, "noise": 0.10}
    loss = {"standard": 0.40, "bn": 0.30, "bn_noise": 0.32, "noise": 2.3}
    steps = [1, *range(10, 101, 10)]
    p50 = {"standard": np.linspace(0, 0.5, 11), "bn": np.full(11, 0.02), "bn_noise": 0.3 * (-1.0) ** np.arange(11),
           "noise": np.linspace(0, 5, 11)}
    accuracy[BN], loss[BN], p50[BN] = 0.88, 0.33, np.full(11, 0.02)
    variants: list[str] = [*CONFIG.variants, BN]
    for v in variants:
        for step in (0, 50, 100):
            recs.append({"kind": "eval", "seed": seed, "net": "cnn", "variant": v, "step": step,
                         "train_loss": None if step == 0 else loss[v],
                         "train_accuracy": None if step == 0 else accuracy[v], "test_accuracy": accuracy[v]})
        for layer in CONFIG.trace_layers:
            recs.append({"kind": "trace", "seed": seed, "variant": v, "layer": layer, "steps": steps,
                         "p15": list(p50[v] - 1), "p50": list(p50[v]), "p85": list(p50[v] + 1)})
        recs.append({"kind": "end", "seed": seed, "net": "cnn", "variant": v, "steps": 100, "diverged": False,
                     "seconds": 1.0})
    ics = {("cnn", "standard"): (0.2, 0.85), ("cnn", BN): (0.25, 0.86), ("dln", "standard"): (0.01, 0.999),
           ("dln", "bn"): (0.04, 0.998)}
    for (net, v), (relative, cosine) in ics.items():
        n = 6 if net == "cnn" else 24
        for step in (1, 50, 100):
            recs.append({"kind": "ics", "seed": seed, "net": net, "variant": v, "step": step,
                         "layers": list(range(2, n + 2)), "l2": [relative * 0.5] * n, "grad_norm": [0.5] * n,
                         "cosine": [cosine] * n})
        if net == "dln":
            recs.append({"kind": "end", "seed": seed, "net": net, "variant": v, "steps": 100, "diverged": False,
                         "seconds": 1.0})
    land = {"standard": (np.linspace(0.5, 1.5, 8), np.linspace(0.5, 4, 8)),
            BN: (np.linspace(0.45, 0.6, 8), np.linspace(0.1, 0.8, 8))}
    for v, (losses, changes) in land.items():
        for step in (1, 50, 100):
            recs.append({"kind": "landscape", "seed": seed, "net": "cnn", "variant": v, "step": step, "loss": 0.5,
                         "grad_norm": 1.0, "losses": list(losses), "grad_changes": list(changes)})
    return recs


def verdicts(recs: list[dict[str, Any]], config: SanturkarConfig = CONFIG) -> dict[str, str]:
    result = claims.summarize(config, recs)
    return {name: result.claims[i].verdict for name, i in CLAIM.items()}


def change(recs: list[dict[str, Any]], kind: str, variant: str, net: str = "cnn", **values: Any) -> None:
    """Set ``values`` on every ``kind`` record of ``variant`` on ``net`` (the last evaluation only, for evals)."""
    for r in recs:
        mine = r["kind"] == kind and r["variant"] == variant and r.get("net", "cnn") == net
        if mine and (kind != "eval" or r["step"] == 100):
            r.update(values)


def test_a_healthy_run_reproduces_every_claim() -> None:
    recs = healthy()
    for r in recs:
        assert why_wrong(r, record_schema(CONFIG)) is None, r
    assert set(verdicts(recs).values()) == {"reproduced"}
    result = claims.summarize(CONFIG, recs)
    assert result.complete and claims.headline(result)["Standard + BN"] == "90.00%"


def _noise_far(recs: list[dict[str, Any]]) -> None:
    change(recs, "eval", "bn_noise", train_accuracy=0.87, train_loss=0.45)  # 3 pp off, loss 50% higher


def _noise_close_by_loss(recs: list[dict[str, Any]]) -> None:
    change(recs, "eval", "bn_noise", train_accuracy=0.86, train_loss=0.32)  # 4 pp off, loss within 10%


def _standard_as_good(recs: list[dict[str, Any]]) -> None:
    change(recs, "eval", "standard", train_accuracy=0.885)


def _standard_diverged(recs: list[dict[str, Any]]) -> None:
    change(recs, "end", "standard", diverged=True)


def _noisy_traces_steady(recs: list[dict[str, Any]]) -> None:
    change(recs, "trace", "bn_noise", p50=[0.0] * 11)


def _noise_without_bn_trains(recs: list[dict[str, Any]]) -> None:
    change(recs, "eval", "noise", train_accuracy=0.75)


def _noise_without_bn_diverges(recs: list[dict[str, Any]]) -> None:
    change(recs, "eval", "noise", train_accuracy=None, train_loss=None)
    change(recs, "end", "noise", diverged=True)


def _bn_reduces_ics(recs: list[dict[str, Any]]) -> None:
    change(recs, "ics", BN, l2=[0.05] * 6)  # relative 0.1 against Standard's 0.2


def _bn_better_aligned(recs: list[dict[str, Any]]) -> None:
    change(recs, "ics", BN, cosine=[0.99] * 6)  # more than 0.05 above 0.85


def _dln_bn_smaller(recs: list[dict[str, Any]]) -> None:
    change(recs, "ics", "bn", net="dln", l2=[0.001] * 24)


def _loss_range_similar(recs: list[dict[str, Any]]) -> None:
    change(recs, "landscape", BN, losses=list(np.linspace(0.5, 1.2, 8)))


def _standard_loss_blows_up(recs: list[dict[str, Any]]) -> None:
    change(recs, "landscape", "standard", losses=[0.5] * 7 + [None])  # written as null: +inf, a rough landscape


def _bn_less_predictive(recs: list[dict[str, Any]]) -> None:
    change(recs, "landscape", BN, grad_changes=list(np.linspace(0.5, 5, 8)))


@pytest.mark.parametrize(("edit", "expected"), [
    pytest.param(_noise_far, {"noise_as_good": "not reproduced"}, id="noise-far-from-bn"),
    pytest.param(_noise_close_by_loss, {}, id="noise-close-by-loss"),
    pytest.param(_standard_as_good, {"better": "not reproduced"}, id="standard-as-good"),
    pytest.param(_standard_diverged, {"noise_hurts": "not reproduced"}, id="standard-diverged"),
    pytest.param(_noisy_traces_steady, {"moves": "not reproduced"}, id="noisy-traces-steady"),
    pytest.param(_noise_without_bn_trains, {"noise_hurts": "not reproduced"}, id="noise-without-bn-trains"),
    pytest.param(_noise_without_bn_diverges, {}, id="noise-without-bn-diverges"),
    pytest.param(_bn_reduces_ics, {"ics_cnn": "not reproduced"}, id="bn-reduces-ics"),
    pytest.param(_bn_better_aligned, {"cosine": "not reproduced"}, id="bn-better-aligned"),
    pytest.param(_dln_bn_smaller, {"dln_l2": "not reproduced", "ics_dln": "not reproduced"}, id="dln-bn-smaller"),
    pytest.param(_loss_range_similar, {"loss_range": "not reproduced"}, id="loss-range-similar"),
    pytest.param(_standard_loss_blows_up, {}, id="standard-loss-blows-up"),
    pytest.param(_bn_less_predictive, {"predictive": "not reproduced", "beta": "not reproduced"},
                 id="bn-less-predictive"),
])
def test_each_rule_follows_the_numbers(edit: Any, expected: dict[str, str]) -> None:
    recs = healthy()
    edit(recs)
    assert verdicts(recs) == {**dict.fromkeys(CLAIM, "reproduced"), **expected}


def test_a_claim_holds_only_if_it_holds_in_every_seed() -> None:
    second = healthy(seed=1)
    _bn_reduces_ics(second)
    result = claims.summarize(CONFIG, healthy() + second)
    claim = result.claims[CLAIM["ics_cnn"]]
    assert claim.verdict == "not reproduced" and "seed 0:" in claim.evidence and "seed 1:" in claim.evidence


def test_claims_without_their_networks_are_not_judged() -> None:
    config = replace(CONFIG, variants=("standard", "bn"), dln=False)
    recs = [r for r in healthy() if r.get("variant") in ("standard", "bn", BN) and r.get("net", "cnn") == "cnn"]
    got = verdicts(recs, config)
    # "better" needs BN + noise too; the cosine claim is judged on the networks there are (the CNN).
    assert {k for k, v in got.items() if v == "not judged"} == {"noise_as_good", "better", "moves", "noise_hurts",
                                                                "ics_dln", "dln_l2"}
    result = claims.summarize(config, recs)
    assert "did not train the DLN" in result.claims[CLAIM["ics_dln"]].evidence


def test_with_one_learning_rate_the_bn_run_is_the_one_probed() -> None:
    config = replace(CONFIG, bn_lr=CONFIG.lr)
    recs = []
    for r in healthy():
        if r.get("variant") == BN and r["kind"] in ("ics", "landscape"):
            recs.append({**r, "variant": "bn"})
        elif r.get("variant") != BN:
            recs.append(r)
    assert set(verdicts(recs, config).values()) == {"reproduced"}
    assert verdicts(recs)["ics_cnn"] == "not judged"  # with two learning rates, BN at Standard's is missing


def test_an_unfinished_unit_leaves_its_claims_unjudged_and_the_run_incomplete() -> None:
    recs = [r for r in healthy() if not (r["kind"] == "end" and r["variant"] == "bn_noise")]
    result = claims.summarize(CONFIG, recs)
    assert not result.complete and result.incomplete == "seed 0: cnn bn_noise did not finish"
    assert result.claims[CLAIM["noise_as_good"]].verdict == "not judged"
    assert result.claims[CLAIM["ics_cnn"]].verdict == "reproduced"


def test_measures_by_hand() -> None:
    assert median_step_change(np.array([0.0, 1.0, 0.5, 0.5])) == 0.5  # |Δ| = 1, 0.5, 0
    assert median_step_change(np.array([0.0, np.nan])) == np.inf
    s = LandscapeSeries(np.array([1]), np.array([0.1, 0.2]), np.array([1.0]), np.array([2.0]),
                        np.array([[0.9, 1.4]]), np.array([[0.4, 0.6]]))
    assert s.loss_range()[0] == pytest.approx(0.5)
    assert s.predictiveness()[0] == pytest.approx(0.3)  # 0.6 / 2
    assert s.beta()[0] == pytest.approx(2.0)  # max(0.4 / (0.1·2), 0.6 / (0.2·2)) = max(2, 1.5)


@pytest.mark.parametrize(("settings", "message"), [
    pytest.param({"channels": (8, 8, 8)}, "five counts", id="three-channels"),
    pytest.param({"variants": (), "dln": False}, "nothing to train", id="nothing"),
    pytest.param({"unit": 100}, "not a feature of every traced layer", id="unit-beyond-layer-3"),  # 64 channels
    pytest.param({"etas": (0.1, 0.0)}, "positive step sizes", id="zero-step"),
    pytest.param({"trace_layers": (3, 7)}, "hidden layers", id="trace-the-output"),
    pytest.param({"dln_batch_size": 4096}, "more than dln_samples", id="dln-batch-too-large"),
])
def test_config_refuses_meaningless_settings(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SanturkarConfig(**settings)


def test_units_and_learning_rates() -> None:
    """Part (a) trains the BN networks at bn_lr; parts (b, c) need BN at Standard's lr: one more run, unless equal."""
    cnns = [{"net": "cnn", "variant": v} for v in ("standard", "bn", "bn_noise", "noise")]
    dlns = [{"net": "dln", "variant": "standard"}, {"net": "dln", "variant": "bn"}]
    assert units(SanturkarConfig()) == [*cnns, {"net": "cnn", "variant": "bn_same_lr"}, *dlns]
    assert units(SanturkarConfig(bn_lr=0.02)) == [*cnns, *dlns]
    assert units(SanturkarConfig(variants=("bn",), dln=False)) == [{"net": "cnn", "variant": "bn"}]
    assert probed(SanturkarConfig()) == ("standard", "bn_same_lr") and probed(SanturkarConfig(bn_lr=0.02))[1] == "bn"
    assert [cnn_lr(SanturkarConfig(), v) for v in ("standard", "bn", "bn_noise", "noise", "bn_same_lr")] == [
        0.02, 0.1, 0.1, 0.02, 0.02]


# --- a run, and its report ---

@pytest.fixture(scope="module")
def santurkar_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    experiment = get_experiment("santurkar")
    return run_experiment(experiment, make_config(experiment, smoke=True), out_root=tmp_path_factory.mktemp("runs"),
                          seeds=(0,), device="cpu", progress=False)


def test_smoke_run_records_every_part(santurkar_run: Path) -> None:
    recs = read_metrics(santurkar_run / "metrics.jsonl")
    config = make_config(get_experiment("santurkar"), smoke=True)
    kinds = {(r["kind"], r.get("net"), r.get("variant")) for r in recs}
    for variant in ("standard", "bn_same_lr"):  # the probed pair: both at lr
        assert ("ics", "cnn", variant) in kinds and ("landscape", "cnn", variant) in kinds
    assert ("ics", "dln", "standard") in kinds and ("ics", "dln", "bn") in kinds
    assert ("ics", "cnn", "bn") not in kinds  # BN at bn_lr is part (a)'s
    assert ("ics", "cnn", "bn_noise") not in kinds  # the noise would make G and G' differ by itself
    traces = [r for r in recs if r["kind"] == "trace"]
    assert len(traces) == 5 * len(config.trace_layers)
    # Step 1, then every trace_every = 2 steps of 20 (a network that diverged stops early: Standard + noise may).
    assert all(r["steps"] == [1, *range(2, 21, 2)] for r in traces if r["variant"] in ("standard", "bn"))
    landscape = [r for r in recs if r["kind"] == "landscape" and r["variant"] == "bn_same_lr"]
    assert [r["step"] for r in landscape] == [1, 10, 20]


def _measured(run_dir: Path) -> list[dict[str, Any]]:
    """The run's records without its bookkeeping (units started and done, resumptions) and timings."""
    bookkeeping = {"plan", "unit_start", "unit_done"}
    return [{k: v for k, v in r.items() if k != "seconds"} for r in read_metrics(run_dir / "metrics.jsonl")
            if r["kind"] not in bookkeeping]


def test_an_interrupted_run_resumes_unit_by_unit(santurkar_run: Path, monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    """Stopped inside its third unit (BN + noise, after two records), the run resumes: the first two units are
    kept, the third's records are dropped and measured again, and the records equal an uninterrupted run's."""
    experiment = get_experiment("santurkar")
    config = make_config(experiment, smoke=True)
    trained: list[dict[str, Any]] = []

    def interrupted(config: Any, ctx: RunContext) -> None:
        trained.append(dict(ctx.unit))
        if len(trained) < 3:
            experiment.train(config, ctx)
            return
        logged: list[dict[str, Any]] = []

        def log(record: dict[str, Any]) -> None:
            if len(logged) == 2:
                raise KeyboardInterrupt
            logged.append(record)
            ctx.log(record)

        experiment.train(config, replace(ctx, log=log))

    monkeypatch.setitem(registry.experiments(), "santurkar", replace(experiment, train=interrupted))
    with pytest.raises(KeyboardInterrupt):
        run_experiment(registry.experiments()["santurkar"], config, out_root=tmp_path, seeds=(0,), device="cpu",
                       progress=False)
    (run_dir,) = (tmp_path / "santurkar").iterdir()
    assert not (run_dir / "result.json").exists()
    cut = read_metrics(run_dir / "metrics.jsonl")
    assert [r["variant"] for r in cut if r["kind"] == "eval"][-2:] == ["bn_noise"] * 2  # the third unit's two
    monkeypatch.setitem(registry.experiments(), "santurkar", experiment)
    resume_run(run_dir, progress=False)
    done = [r["unit"] for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "unit_done"]
    assert done == units(config)  # each unit once, in order
    assert _measured(run_dir) == _measured(santurkar_run)  # the dropped records measured again, the same
    assert json.loads((run_dir / "result.json").read_text())["complete"]


def test_report_renders(santurkar_run: Path, tmp_path: Path) -> None:
    check_report(santurkar_run, tmp_path, {"the BN curves": COLORS["bn"], "the Standard curves": COLORS["standard"],
                                           "the BN + noise traces": COLORS["bn_noise"]},
                 name="santurkar-report.png", height=5200)

