"""E3 ``selu_deep``: the data and networks, the Keras-style log against a hand-written loop, the diagnostic against
float64, the verdicts against hand-made records, and the report (with bnlab.summary's tables) in Chromium."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

import bnlab
from bnlab.lab import registry
from bnlab.lab.experiments.selu_deep import SeluDeepConfig, claims
from bnlab.lab.experiments.selu_deep.config import records, units
from bnlab.lab.experiments.selu_deep.nets import build, forward_stats, gradient_ratios
from bnlab.lab.experiments.selu_deep.plots import COLORS, DIAGNOSTIC_COLORS
from bnlab.lab.experiments.selu_deep.train import generator_for, load, standardize, train
from bnlab.lab.records import read_metrics
from bnlab.lab.registry import RunContext, get_experiment
from bnlab.lab.result import Result
from bnlab.lab.runner import make_config, resume_run, run_experiment
from bnlab.lab.schema import why_wrong
from lab.chromium import check_report
from tolerances import assert_as_accurate_as_torch

SMALL = SeluDeepConfig(dataset="synthetic", depth=5, width=12, epochs=2, validation=100, batch_size=25,
                       diagnostic_samples=40)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    experiment = get_experiment("selu_deep")
    return run_experiment(experiment, make_config(experiment, smoke=True), out_root=tmp_path_factory.mktemp("runs"),
                          seeds=(0,), device="cpu", progress=False)


def test_standardize_per_pixel_with_the_training_statistics() -> None:
    gen = torch.Generator().manual_seed(0)
    x_train, x_val = torch.rand(200, 1, 3, 3, generator=gen), torch.rand(50, 1, 3, 3, generator=gen)
    x_train[:, 0, 0, 0] = 0.0  # a pixel that never varies: divided by 1, not by 0
    a, b = standardize(x_train, x_val)
    ref = x_train.double()
    std = ref.std(0, unbiased=False)
    std[0, 0, 0] = 1.0
    torch.testing.assert_close(a.double(), (ref - ref.mean(0)) / std, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.double(), (x_val.double() - ref.mean(0)) / std, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(a).all()


def test_geron_split_and_subset() -> None:
    data = load(dataclasses.replace(SMALL, train_size=300), torch.device("cpu"), None, {})
    assert len(data["x_train"]) == 300 and len(data["x_val"]) == 100 and len(data["x_test"]) == 200


@pytest.mark.parametrize(("name", "variance"), [
    pytest.param("selu", 1.0, id="selu-lecun"),  # 1 / fan_in
    pytest.param("relu", 2.0, id="relu-he"),  # 2 / fan_in
])
def test_networks_and_their_initialization(name: str, variance: float) -> None:
    config = SeluDeepConfig(depth=3, width=400)
    model = build(name, config, (1, 28, 28), 10, torch.Generator().manual_seed(0))
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 4 and isinstance(model[0], torch.nn.Flatten)
    first = linears[0].weight.detach().double()
    assert float(first.var()) == pytest.approx(variance / 784, rel=0.05)
    head = linears[-1].weight.detach().double()  # Keras's glorot_uniform: U[±√(6 / (fan_in + fan_out))]
    assert float(head.abs().max()) <= math.sqrt(6 / 410) and float(head.var()) == pytest.approx(2 / 410, rel=0.1)
    assert all(float(m.bias.detach().abs().max()) == 0 for m in linears)


def test_bn_and_dropout_variants() -> None:
    config = SeluDeepConfig(depth=4, width=20)
    bn = build("relu_bn", config, (1, 28, 28), 10, torch.Generator().manual_seed(0))
    norms = [m for m in bn if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(norms) == 4 and all(isinstance(m, bnlab.BatchNorm1d) for m in norms)
    assert (norms[0].eps, norms[0].momentum) == (1e-3, 0.01)  # Keras's epsilon and momentum 0.99
    assert [m.bias is None for m in bn if isinstance(m, torch.nn.Linear)] == [True] * 4 + [False]
    dropout = build("selu_dropout", config, (1, 28, 28), 10, torch.Generator().manual_seed(0))
    assert isinstance(dropout[-2], torch.nn.AlphaDropout) and dropout[-2].p == 0.05
    found = bnlab.summary(bn, (1, 28, 28))
    assert found.non_trainable == 4 * 2 * 20 and found.trainable == 784 * 20 + 3 * 400 + 4 * 2 * 20 + 210


def context(unit: dict[str, Any], logged: list[dict[str, Any]]) -> RunContext:
    return RunContext(seed=0, device=torch.device("cpu"), log=logged.append, unit=unit, progress=False)


def test_the_log_is_what_keras_prints() -> None:
    """loss and accuracy: means over the epoch's batches in training mode, each batch scored before its update;
    val_*: eval mode after the epoch; checked against a hand-written loop with the same weights and batches."""
    logged: list[dict[str, Any]] = []
    train(SMALL, context({"model": "relu_bn"}, logged))
    kinds = [r["kind"] for r in logged]
    assert kinds == ["summary", "gradients", "epoch", "epoch", "end"]
    assert all(why_wrong(r, records(SMALL)) is None for r in logged)
    data = load(SMALL, torch.device("cpu"), None, {})
    model = build("relu_bn", SMALL, (1, 28, 28), 10, generator_for(0, "relu_bn"))
    optimizer = torch.optim.SGD(model.parameters(), lr=SMALL.lr)
    gen = generator_for(0, "batches")
    per_epoch = len(data["x_train"]) // 25
    for epoch in (1, 2):
        order = torch.randperm(len(data["x_train"]), generator=gen)
        losses, hits = [], []
        model.train()
        for step in range(per_epoch):
            idx = order[step * 25:(step + 1) * 25]
            logits = model(data["x_train"][idx])
            loss = torch.nn.functional.cross_entropy(logits, data["y_train"][idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            hits.append((logits.argmax(1) == data["y_train"][idx]).double().mean().item())
        model.eval()
        with torch.no_grad():
            logits = model(data["x_val"])
        record = logged[epoch + 1]
        assert record["epoch"] == epoch
        assert record["loss"] == pytest.approx(sum(losses) / per_epoch, rel=1e-4)
        assert record["accuracy"] == pytest.approx(sum(hits) / per_epoch, abs=1e-5)
        assert record["val_loss"] == pytest.approx(torch.nn.functional.cross_entropy(logits, data["y_val"]).item(),
                                                   rel=1e-4)
        assert record["val_accuracy"] == pytest.approx((logits.argmax(1) == data["y_val"]).double().mean().item(),
                                                       abs=1e-6)
    summary = logged[0]
    assert summary["non_trainable"] == 2 * SMALL.depth * SMALL.width and summary["counters"] == SMALL.depth


def test_the_alpha_dropout_option_trains() -> None:
    logged: list[dict[str, Any]] = []
    train(dataclasses.replace(SMALL, models=("selu_dropout",)), context({"model": "selu_dropout"}, logged))
    assert [r["kind"] for r in logged] == ["summary", "gradients", "epoch", "epoch", "end"]
    assert not logged[-1]["diverged"]
    assert any("(AlphaDropout)" in row[0] for row in logged[0]["rows"])
    assert claims.summarize(dataclasses.replace(SMALL, models=("selu_dropout",)), logged).tables[1].title == \
        "Keras log: SELU + LeCun + AlphaDropout"


def test_gradient_ratios_against_float64_leave_the_model_alone() -> None:
    model = build("relu_bn", SeluDeepConfig(depth=4, width=20), (1, 28, 28), 10, torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(25, 1, 28, 28, generator=gen), torch.randint(0, 10, (25,), generator=gen)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ratios = gradient_ratios(model, x, y)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # running statistics untouched
    reference = copy.deepcopy(model).double().train()
    linears = [m for m in reference.modules() if isinstance(m, torch.nn.Linear)]
    grads = torch.autograd.grad(torch.nn.functional.cross_entropy(reference(x.double()), y),
                                [m.weight for m in linears])
    expected = [float(g.norm() / m.weight.detach().norm()) for m, g in zip(linears, grads, strict=True)]
    assert ratios == pytest.approx(expected, rel=1e-4)


def test_the_gradient_claim_is_reported() -> None:
    recs = [*epoch_records(0, "selu", [0.6, 0.75]),
            {"kind": "gradients", "seed": 0, "model": "selu", "ratios": [20.0] + [1.0] * 98 + [0.4, 0.5]}]
    claim = claims.summarize(SeluDeepConfig(epochs=2, models=("selu",)), recs).claims[-1]
    assert claim.verdict == "reported" and "20 at layer 1, 0.4 at layer 100 (50×)" in claim.evidence


@pytest.mark.parametrize("network", ["selu_lecun", "relu_he", "tanh_small"])
def test_diagnostic_against_float64(network: str) -> None:
    x = torch.randn(64, 30, generator=torch.Generator().manual_seed(0))
    mean, std = forward_stats(x, network, 12, 20, torch.Generator().manual_seed(1))
    # The same draws (the generator is consumed one weight per layer), forwarded in float32 and in float64.
    from bnlab import init as keras_init

    gen = torch.Generator().manual_seed(1)
    weights = []
    for i in range(12):
        w = torch.empty(20, 30 if i == 0 else 20)
        if network == "tanh_small":
            w.normal_(0.0, 0.01, generator=gen)
        else:
            keras_init.INITIALIZERS["lecun_normal" if network == "selu_lecun" else "he_normal"](w, generator=gen)
        weights.append(w)
    act = {"selu_lecun": torch.selu, "relu_he": torch.relu, "tanh_small": torch.tanh}[network]

    def forward(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        h, means, stds = x.to(dtype), [], []
        for w in weights:
            h = act(h @ w.to(dtype).T)
            means.append(h.double().mean())
            stds.append(h.double().std())
        return torch.stack(means), torch.stack(stds)

    (m32, s32), (m64, s64) = forward(torch.float32), forward(torch.float64)
    assert_as_accurate_as_torch(torch.tensor(std), s32, s64, torch.float32, what="std")
    assert_as_accurate_as_torch(torch.tensor(mean), m32, m64, torch.float32, what="mean")


def epoch_records(seed: int, model: str, vals: list[float | None], diverged: bool = False) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"kind": "epoch", "seed": seed, "model": model, "epoch": e + 1, "loss": 0.5,
                                  "accuracy": 0.8, "val_loss": 0.5, "val_accuracy": v} for e, v in enumerate(vals)]
    out.append({"kind": "end", "seed": seed, "model": model, "steps": 10, "planned_steps": 10, "diverged": diverged,
                "test_accuracy": None if diverged else 0.8, "seconds": 1.0})
    return out


CONFIG = SeluDeepConfig(epochs=2, diagnostic=())


def verdicts(recs: list[dict[str, Any]], config: SeluDeepConfig = CONFIG) -> list[str]:
    """The three training claims' verdicts (the diagnostic's follow, "not judged" without diagnostic records)."""
    return [c.verdict for c in claims.summarize(config, recs).claims[:3]]


@pytest.mark.parametrize(("selu", "relu", "bn", "expected"), [
    pytest.param(0.75, 0.70, 0.72, ["reproduced", "reproduced", "reproduced"], id="all-hold"),
    pytest.param(0.69, 0.60, 0.72, ["not reproduced", "reproduced", "reproduced"], id="selu-below-0.70"),
    pytest.param(0.75, 0.73, 0.72, ["reproduced", "not reproduced", "reproduced"], id="selu-only-2-points-ahead"),
    pytest.param(0.75, 0.70, 0.10, ["reproduced", "reproduced", "not reproduced"], id="bn-does-not-train"),
])
def test_training_claims(selu: float, relu: float, bn: float, expected: list[str]) -> None:
    recs = [*epoch_records(0, "selu", [0.6, selu]), *epoch_records(0, "relu", [0.5, relu]),
            *epoch_records(0, "relu_bn", [0.5, bn])]
    assert verdicts(recs) == expected


def test_a_diverged_or_unfinished_network() -> None:
    recs = [*epoch_records(0, "selu", [0.6, 0.75]), *epoch_records(0, "relu", [None], diverged=True),
            *epoch_records(0, "relu_bn", [0.5])]  # relu_bn stopped after epoch 1 of 2 without diverging
    assert verdicts(recs) == ["reproduced", "reproduced", "not reproduced"]
    without_bn = dataclasses.replace(CONFIG, models=("selu", "relu"))
    recs = [*epoch_records(0, "selu", [0.6, 0.75]), *epoch_records(0, "relu", [0.5, 0.7])]
    result = claims.summarize(without_bn, recs)
    assert result.claims[2].verdict == "not judged" and "set models" in result.claims[2].evidence


def test_every_seed_must_hold() -> None:
    recs = [*epoch_records(0, "selu", [0.6, 0.75]), *epoch_records(1, "selu", [0.6, 0.68])]
    assert verdicts(recs, dataclasses.replace(CONFIG, models=("selu",)))[0] == "not reproduced"


def diagnostic(network: str, std: list[float], mean: float = 0.0) -> dict[str, Any]:
    return {"kind": "diagnostic", "seed": 0, "network": network, "mean": [mean] * len(std), "std": std}


@pytest.mark.parametrize(("records_", "index", "expected"), [
    pytest.param([diagnostic("selu_lecun", [1.0] * 12)], 3, "reproduced", id="selu-normalized"),
    pytest.param([diagnostic("selu_lecun", [1.0] * 11 + [1.4])], 3, "not reproduced", id="selu-std-too-high"),
    pytest.param([diagnostic("selu_lecun", [1.0] * 12, mean=0.3)], 3, "not reproduced", id="selu-mean-off"),
    pytest.param([diagnostic("relu_lecun", [1.0] + [0.5] * 10 + [0.09])], 4, "reproduced", id="relu-lecun-shrinks"),
    pytest.param([diagnostic("relu_lecun", [1.0] * 11 + [0.2])], 4, "not reproduced", id="relu-lecun-keeps"),
    pytest.param([diagnostic("tanh_small", [0.1] * 9 + [5e-4] * 3)], 5, "reproduced", id="tanh-vanishes"),
    pytest.param([diagnostic("tanh_small", [0.1] * 12)], 5, "not reproduced", id="tanh-stays"),
])
def test_diagnostic_claims(records_: list[dict[str, Any]], index: int, expected: str) -> None:
    config = SeluDeepConfig(depth=12, models=())
    recs = [*records_, *(diagnostic(n, [1.0] * 12) for n in ("selu_lecun", "relu_lecun", "tanh_small")
                         if n not in {r["network"] for r in records_})]
    # The three training claims are "not judged" here (no network trained): the diagnostic's start at index 3.
    assert claims.summarize(config, recs).claims[index].verdict == expected


def test_units_and_the_seed_004_table() -> None:
    assert units(SeluDeepConfig()) == [{"model": "selu"}, {"model": "relu"}, {"model": "relu_bn"},
                                       {"diagnostic": "init"}]
    recs = epoch_records(0, "selu", [0.6, 0.7])
    result = claims.summarize(dataclasses.replace(CONFIG, models=("selu",)), recs)
    table = next(t for t in result.tables if t.title == "Keras log: SELU + LeCun")
    assert table.columns[-5:] == ["seed 004: loss", "seed 004: accuracy", "seed 004: val_loss",
                                  "seed 004: val_accuracy", "Géron HOML3: val_accuracy"]
    assert table.rows[0][5:] == ["1.2359", "0.5200", "0.8552", "0.6756", "0.6444"]
    assert isinstance(result, Result)


def test_an_interrupted_run_resumes_network_by_network(smoke_run: Path, monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    experiment = get_experiment("selu_deep")
    config = make_config(experiment, smoke=True)
    started: list[dict[str, Any]] = []

    def interrupted(config: Any, ctx: RunContext) -> None:
        started.append(dict(ctx.unit))
        if len(started) == 3:  # in the middle of the third unit, the BN network
            raise KeyboardInterrupt
        experiment.train(config, ctx)

    monkeypatch.setitem(registry.experiments(), "selu_deep", dataclasses.replace(experiment, train=interrupted))
    with pytest.raises(KeyboardInterrupt):
        run_experiment(registry.experiments()["selu_deep"], config, out_root=tmp_path, seeds=(0,), device="cpu",
                       progress=False)
    (run_dir,) = (tmp_path / "selu_deep").iterdir()
    monkeypatch.setitem(registry.experiments(), "selu_deep", experiment)
    resume_run(run_dir, progress=False)
    done = [r["unit"] for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "unit_done"]
    assert started == units(config)[:3] and done == units(config)  # each unit done once, in order

    def measured(path: Path) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in read_metrics(path / "metrics.jsonl")
                if r["kind"] in ("epoch", "end", "gradients", "diagnostic", "summary")]

    assert measured(run_dir) == measured(smoke_run)  # a resumed run measures what an uninterrupted one does
    assert json.loads((run_dir / "result.json").read_text())["complete"]


def test_report_renders(smoke_run: Path, tmp_path: Path) -> None:
    image = check_report(smoke_run, tmp_path, {"SELU": COLORS["selu"], "ReLU + BN": COLORS["relu_bn"],
                                               "ReLU + LeCun (diagnostic)": DIAGNOSTIC_COLORS["relu_lecun"]},
                         name="selu_deep-report.png", height=5000)
    assert image.shape[0] == 5000
    html = (smoke_run / "report.html").read_text()
    assert "bnlab.summary: ReLU + He + BN" in html and "Non-trainable params" in html
