"""E1b ``inception_mini``: the network's shape, the variants' settings, the schedule and measurements against
float64, the verdicts against hand-made records, a diverging run, and the report as Chromium renders it."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

import bnlab
from bnlab.lab import registry
from bnlab.lab.experiments.inception_mini import InceptionConfig, claims
from bnlab.lab.experiments.inception_mini.config import eval_steps, hyper, units
from bnlab.lab.experiments.inception_mini.config import records as record_schema
from bnlab.lab.experiments.inception_mini.nets import MiniInception, initialize
from bnlab.lab.experiments.inception_mini.plots import COLORS, PAPER_COLOR
from bnlab.lab.experiments.inception_mini.train import (
    ExponentialDecay,
    batch_stream,
    build,
    optimizer_for,
    validation_accuracy,
    weight_norm,
)
from bnlab.lab.records import read_metrics
from bnlab.lab.registry import get_experiment
from bnlab.lab.runner import make_config, resume_run, run_experiment
from bnlab.lab.schema import why_wrong
from bnlab.lab.train import batches
from lab.chromium import check_report


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs/inception_mini/<timestamp>/ of a smoke run on synthetic data (seconds)."""
    experiment = get_experiment("inception_mini")
    return run_experiment(experiment, make_config(experiment, smoke=True), out_root=tmp_path_factory.mktemp("runs"),
                          seeds=(0,), device="cpu", progress=False)


# -- the network -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("width", "batch_norm", "activation"), [
    pytest.param(2, False, "relu", id="w2-plain-relu"),
    pytest.param(8, True, "relu", id="w8-bn-relu"),
    pytest.param(4, True, "sigmoid", id="w4-bn-sigmoid"),
])
def test_network_stages_have_the_documented_shapes(width: int, batch_norm: bool, activation: str) -> None:
    model = MiniInception(width, 10, activation, batch_norm, dropout=0.4, lrn=True)  # type: ignore[arg-type]
    x = torch.randn(3, 1, 28, 28)
    h = model.stem(x)
    assert h.shape == (3, 2 * width, 7, 7)
    shapes = []
    for stage in (model.inception3a, model.inception3b, model.inception3c, model.inception4a):
        h = stage(h)
        assert h.shape[1] == stage.out_channels
        shapes.append(tuple(h.shape[1:]))
    w = width  # even: 4.5w, 1.5w and 2.5w are whole channel counts, as the docstring's table gives them
    assert shapes == [(9 * w // 2, 7, 7), (6 * w, 7, 7), (10 * w, 4, 4), (9 * w, 4, 4)]
    assert model(x).shape == (3, 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, bnlab.BatchNorm2d)]
    assert len(convs) == 29
    assert len(bns) == (29 if batch_norm else 0)
    assert all((c.bias is None) == batch_norm for c in convs)  # BN's β replaces the bias
    acts = torch.nn.ReLU if activation == "relu" else torch.nn.Sigmoid
    assert sum(isinstance(m, acts) for m in model.modules()) == 29
    assert sum(isinstance(m, torch.nn.LocalResponseNorm) for m in model.modules()) == 2


def test_paired_initialization_with_and_without_batch_norm() -> None:
    plain = MiniInception(4, 10, "relu", False, dropout=0.4, lrn=True)
    normed = MiniInception(4, 10, "relu", True, dropout=0.0, lrn=False)
    initialize(plain, "relu", torch.Generator().manual_seed(3))
    initialize(normed, "relu", torch.Generator().manual_seed(3))
    weights = [[m.weight for m in net.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
               for net in (plain, normed)]
    assert all(torch.equal(a, b) for a, b in zip(*weights, strict=True))
    assert all(m.bias is not None and float(m.bias.detach().abs().max()) == 0 for m in plain.modules()
               if isinstance(m, torch.nn.Conv2d))
    assert not any(isinstance(m, torch.nn.LocalResponseNorm | torch.nn.Dropout) for m in normed.modules())
    # He normal for ReLU, Glorot normal for sigmoid: the first convolution is the generator's first draw.
    for activation, draw in (("relu", bnlab.init.he_normal_), ("sigmoid", bnlab.init.glorot_normal_)):
        net = MiniInception(4, 10, activation, True, dropout=0.0, lrn=False)  # type: ignore[arg-type]
        initialize(net, activation, torch.Generator().manual_seed(3))  # type: ignore[arg-type]
        first = next(net.stem.parameters())  # the first convolution's weight
        assert torch.equal(first, draw(torch.empty_like(first), generator=torch.Generator().manual_seed(3)))


# -- the variants --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "lr", "dropout", "decay", "half_life", "lrn"), [
    pytest.param("inception", 0.01, 0.4, 5e-4, 600.0, True, id="baseline"),
    pytest.param("bn-baseline", 0.01, 0.4, 5e-4, 600.0, True, id="bn-baseline-keeps-the-rest"),
    pytest.param("bn-x5", 0.05, 0.0, 1e-4, 100.0, False, id="bn-x5-accelerated"),
    pytest.param("bn-x30", 0.3, 0.0, 1e-4, 100.0, False, id="bn-x30-accelerated"),
    pytest.param("bn-x5-sigmoid", 0.05, 0.0, 1e-4, 100.0, False, id="bn-x5-sigmoid-accelerated"),
    pytest.param("inception-x5", 0.05, 0.4, 5e-4, 600.0, True, id="x5-without-bn-only-the-rate"),
])
def test_variant_settings_follow_section_4_2_1(name: str, lr: float, dropout: float, decay: float,
                                               half_life: float, lrn: bool) -> None:
    config = InceptionConfig(lr=0.01, weight_decay=5e-4, lr_half_life=600, dropout=0.4, lrn=True)
    h = hyper(config, name)
    assert (h.dropout, h.lrn, h.lr_half_life) == (dropout, lrn, half_life)
    assert h.lr == pytest.approx(lr, rel=1e-12) and h.weight_decay == pytest.approx(decay, rel=1e-12)


def test_learning_rate_decay_against_float64() -> None:
    config = InceptionConfig(lr=0.03, lr_half_life=600)
    for name, half_life in (("inception", 600.0), ("bn-x5", 100.0)):
        h = hyper(config, name)
        model = torch.nn.Linear(2, 2)
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        decay = ExponentialDecay(optimizer, h)
        for step in (1, 2, 101, 601, 3000):
            decay.start_step(step)
            expected = h.lr * math.pow(2.0, -(step - 1) / half_life)
            assert decay.lr == pytest.approx(expected, rel=1e-12)
            assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12)
        decay.start_step(1 + int(half_life))
        assert decay.lr == pytest.approx(h.lr / 2, rel=1e-12)  # halves after one half-life


def test_weight_decay_only_on_convolution_and_classifier_weights() -> None:
    config = InceptionConfig(width=2, weight_decay=5e-4)
    model = build(config, "bn-baseline", 10, seed=0)
    optimizer = optimizer_for(model, config, hyper(config, "bn-baseline"))
    decayed, other = optimizer.param_groups
    assert decayed["weight_decay"] == 5e-4 and other["weight_decay"] == 0.0
    assert len(decayed["params"]) == 30  # 29 convolutions and the classifier
    assert {p.dim() for p in other["params"]} == {1}  # BN's γ and β, the classifier's bias
    assert optimizer.param_groups[0]["momentum"] == 0.9


def test_measurements_against_float64() -> None:
    model = torch.nn.Linear(4, 3)
    x = torch.randn(2_500, 4, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 3, (2_500,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = float((model.double()(x.double()).argmax(1) == y).double().mean())
        model.float()
        assert validation_accuracy(model, x, y) == pytest.approx(expected, abs=1 / 2_500)  # chunks of 1,000
        reference = torch.cat([p.double().flatten() for p in model.parameters()]).norm()
        assert weight_norm(model) == pytest.approx(float(reference), rel=1e-12)
        model.weight[0, 0] = math.inf
        assert weight_norm(model) is None


def test_batch_stream_gives_the_batches_of_the_lab_loop() -> None:
    x = torch.arange(70.0).reshape(35, 2)
    y = torch.arange(35)
    ours = batch_stream(x, y, 8, seed=4)
    theirs = batches((x, y), 8, torch.Generator().manual_seed(4))
    for _ in range(10):  # two and a half epochs: a fresh permutation each epoch, the last partial batch dropped
        (xa, ya), (xb, yb) = next(ours), next(theirs)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_non_finite_logits_count_as_wrong() -> None:
    class Constant(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(len(x), 3)
            out[:, 0] = 1.0
            out[::2] = math.nan  # NaN rows would "predict" class 0 and be right by chance
            return out

    x, y = torch.zeros(10, 1), torch.zeros(10, dtype=torch.int64)
    assert validation_accuracy(Constant(), x, y) == 0.5


def test_config_checks_and_units() -> None:
    config = InceptionConfig(variants=("inception", "bn-x5"))
    assert units(config) == [{"variant": "inception"}, {"variant": "bn-x5"}]
    assert eval_steps(InceptionConfig(steps=1000, eval_every=300)) == [0, 300, 600, 900, 1000]
    with pytest.raises(ValueError, match="each once"):
        InceptionConfig(variants=("bn-x5", "bn-x5"))
    with pytest.raises(ValueError, match="dropout"):
        InceptionConfig(dropout=1.0)
    with pytest.raises(ValueError, match="batch norm needs two"):
        InceptionConfig(batch_size=1)


# -- verdicts from hand-made records -------------------------------------------------------------------------------

CONFIG = InceptionConfig(steps=1000, eval_every=100, lr_half_life=1000, lr=0.01)


def curve(variant: str, accuracies: list[float], *, seed: int = 0,
          diverged_at: int | None = None) -> list[dict[str, Any]]:
    """Records of one variant: accuracy at steps 0, 100, …, then an end record (diverged: the curve stops)."""
    steps = eval_steps(CONFIG)
    if diverged_at is not None:
        steps = [s for s in steps if s <= diverged_at]
    out: list[dict[str, Any]] = [
        {"kind": "eval", "seed": seed, "variant": variant, "step": s, "train_loss": None if s == 0 else 1.0,
         "val_accuracy": a, "lr": 0.01, "weight_norm": 10.0 + s}
        for s, a in zip(steps, accuracies, strict=False)]
    out.append({"kind": "end", "seed": seed, "variant": variant, "steps": steps[-1],
                "diverged": diverged_at is not None, "seconds": 1.0})
    return out


def ramp(best: float, at: int) -> list[float]:
    """0.1 at step 0, rising linearly to ``best`` at step ``at``, flat after."""
    return [0.1 + (best - 0.1) * min(s, at) / at for s in eval_steps(CONFIG)]


def paper_like(seed: int = 0) -> list[dict[str, Any]]:
    return [*curve("inception", ramp(0.80, 1000), seed=seed), *curve("bn-baseline", ramp(0.82, 500), seed=seed),
            *curve("bn-x5", ramp(0.84, 200), seed=seed), *curve("bn-x30", ramp(0.85, 300), seed=seed),
            *curve("bn-x5-sigmoid", ramp(0.77, 600), seed=seed),
            *curve("inception-x5", [0.1, 0.1], seed=seed, diverged_at=100),
            *curve("inception-sigmoid", [0.1] * 11, seed=seed)]


def verdicts(records: list[dict[str, Any]]) -> list[str]:
    return [c.verdict for c in claims.summarize(CONFIG, records).claims]


def test_a_paper_like_run_reproduces_every_claim() -> None:
    result = claims.summarize(CONFIG, paper_like())
    assert [c.verdict for c in result.claims] == ["reproduced"] * 5 + ["reported"]
    assert result.summary["steps_to_baseline_best"] == {
        "inception": 1000, "bn-baseline": 500, "bn-x5": 200, "bn-x30": 300, "bn-x5-sigmoid": None,
        "inception-x5": None, "inception-sigmoid": None}
    assert "0.20×" in result.claims[1].evidence and "diverged at step 100" in result.claims[2].evidence
    figure3 = result.tables[0]
    assert figure3.rows[2][:4] == ["BN-x5", "5η0 = 0.05", "200", "0.20×"]
    assert figure3.rows[2][6:] == ["2.1·10⁶", "0.07×", "73.00%"]


@pytest.mark.parametrize(("change", "index"), [
    pytest.param(("bn-baseline", ramp(0.82, 700)), 0, id="bn-baseline-too-slow"),  # reaches 0.80 at 700 > 600
    pytest.param(("bn-x5", ramp(0.84, 500)), 1, id="bn-x5-too-slow"),  # 0.80 at 500 > 350
    pytest.param(("bn-x5", ramp(0.79, 100)), 1, id="bn-x5-never-reaches"),
    pytest.param(("inception-x5", ramp(0.78, 1000)), 2, id="x5-trains-fine"),  # 2 points below: not a failure
    pytest.param(("bn-x5-sigmoid", ramp(0.74, 600)), 3, id="bn-sigmoid-too-low"),  # 0.74 < 0.80 − 0.05
    pytest.param(("inception-sigmoid", ramp(0.5, 900)), 4, id="plain-sigmoid-trains"),
])
def test_each_claim_fails_on_its_own_numbers(change: tuple[str, list[float]], index: int) -> None:
    name, accuracies = change
    records = [r for r in paper_like() if r["variant"] != name] + curve(name, accuracies)
    got = verdicts(records)
    assert got[index] == "not reproduced"
    assert got[:index] + got[index + 1:5] == ["reproduced"] * 4  # the others are untouched


def test_x5_that_ends_far_below_the_baseline_fails_as_claimed() -> None:
    records = [r for r in paper_like() if r["variant"] != "inception-x5"]
    assert verdicts(records + curve("inception-x5", ramp(0.74, 1000)))[2] == "reproduced"  # 6 points below
    assert verdicts(records + curve("inception-x5", [0.1] + [0.15] * 10))[2] == "reproduced"  # ≤ 20%


def test_steps_to_reach_use_the_mean_over_seeds() -> None:
    # Seed 1's BN-x5 is slower: the mean reaches 0.80 later than seed 0 alone.
    records = [*paper_like(0), *(r for r in paper_like(1) if r["variant"] != "bn-x5"),
               *curve("bn-x5", ramp(0.84, 600), seed=1)]
    result = claims.summarize(CONFIG, records)
    assert result.summary["seeds"] == [0, 1]
    # Seed 0 is at 0.84 from step 200; seed 1 at 0.1 + 0.74·s/600: the mean is 0.655 at step 300, 0.717 at 400,
    # 0.778 at 500 and 0.84 at 600.
    assert result.summary["steps_to_baseline_best"]["bn-x5"] == 600
    assert result.claims[1].verdict == "not reproduced"


def test_interrupted_seed_is_left_out_and_missing_variants_are_not_judged() -> None:
    interrupted = [r for r in paper_like(1)
                   if not (r["variant"] == "bn-x30" and (r["kind"] == "end" or r["step"] > 300))]
    result = claims.summarize(CONFIG, [*paper_like(0), *interrupted, {"kind": "plan", "seeds": [0, 1]}])
    assert result.summary["seeds"] == [0] and not result.complete
    assert result.incomplete == "seed 1: bn-x30 stopped at step 300 (interrupted)"
    assert "Judged on seed(s) 0 only" in result.claims[0].evidence

    only = InceptionConfig(steps=1000, eval_every=100, variants=("inception", "bn-x5"))
    result = claims.summarize(only, [r for r in paper_like() if r["variant"] in only.variants])
    assert [c.verdict for c in result.claims] == ["not judged", "reproduced", "not judged", "not judged",
                                                  "not judged", "not judged"]
    assert "did not train bn-baseline" in result.claims[0].evidence


def test_a_baseline_that_did_not_learn_judges_nothing() -> None:
    records = [r for r in paper_like() if r["variant"] != "inception"] + curve("inception", ramp(0.2, 1000))
    result = claims.summarize(CONFIG, records)
    assert {c.verdict for c in result.claims} == {"not judged"}
    assert "did not learn" in result.claims[0].evidence


def test_record_shapes() -> None:
    schema = record_schema(CONFIG)
    for record in paper_like():
        assert why_wrong(record, schema) is None
    good = curve("bn-x5", ramp(0.8, 100))[1]
    assert "must be one of" in str(why_wrong({**good, "variant": "bn-x7"}, schema))
    assert "must be in 0..1000" in str(why_wrong({**good, "step": 1001}, schema))


# -- runs ---------------------------------------------------------------------------------------------------------

def test_a_diverging_variant_stops_and_says_so(tmp_path: Path) -> None:
    experiment = get_experiment("inception_mini")
    config = make_config(experiment, smoke=True, overrides={"variants": ["inception-x5"], "lr": 1e6})
    run_dir = run_experiment(experiment, config, out_root=tmp_path, seeds=(0,), device="cpu", progress=False)
    records = read_metrics(run_dir / "metrics.jsonl")
    end = next(r for r in records if r["kind"] == "end")
    evals = [r for r in records if r["kind"] == "eval"]
    assert end["diverged"] and end["steps"] < config.steps
    assert evals[-1]["step"] == end["steps"] and evals[-1]["train_loss"] is None  # the non-finite mean


def test_an_interrupted_run_resumes_to_the_same_records(smoke_run: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # Three of the variants; cut inside BN-x5 (the second unit), after its first evaluation: resuming drops that
    # unit's partial records and trains it again from its seed, so the records match the uninterrupted smoke run's
    # (each unit is seeded on its own), value for value.
    experiment = get_experiment("inception_mini")
    real_train = experiment.train
    trained: list[str] = []

    def cutting(config: InceptionConfig, ctx: Any) -> None:
        trained.append(ctx.unit["variant"])

        def log(record: dict[str, Any]) -> None:
            ctx.log(record)
            if record["variant"] == "bn-x5" and record["kind"] == "eval" and len(trained) == 2:
                raise KeyboardInterrupt

        real_train(config, replace(ctx, log=log))

    monkeypatch.setitem(registry.experiments(), "inception_mini", replace(experiment, train=cutting))
    config = make_config(experiment, smoke=True, overrides={"variants": ["inception", "bn-x5", "inception-sigmoid"]})
    with pytest.raises(KeyboardInterrupt):
        run_experiment(registry.experiments()["inception_mini"], config, out_root=tmp_path, seeds=(0,),
                       device="cpu", progress=False)
    (cut,) = (tmp_path / "inception_mini").iterdir()
    assert not (cut / "result.json").exists()
    resume_run(cut, progress=False)
    assert trained == ["inception", "bn-x5", "bn-x5", "inception-sigmoid"]  # only what was not done

    def measured(run_dir: Path) -> list[tuple[Any, ...]]:
        return [(r["variant"], r["step"], r["val_accuracy"], r["train_loss"], r["weight_norm"])
                for r in read_metrics(run_dir / "metrics.jsonl")
                if r["kind"] == "eval" and r["variant"] in config.variants]

    assert len(measured(cut)) == 3 * len(eval_steps(config)) and measured(cut) == measured(smoke_run)
    assert json.loads((cut / "result.json").read_text())["complete"]


def test_report_renders(smoke_run: Path, tmp_path: Path) -> None:
    check_report(smoke_run, tmp_path, {"Inception's curve": COLORS["inception"], "BN-x5's curve": COLORS["bn-x5"],
                                       "the paper's bars": PAPER_COLOR},
                 name="inception-mini-report.png", height=3000)
