"""The step protocol: several models and optimizers in one step (a GAN), hooks before and after each optimizer
update, and the probes built on them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import torch
from torch import Tensor

from bnlab.lab.train import (
    ActivationProbe,
    GradientProbe,
    Hook,
    LossAlongDirection,
    OptimizerStep,
    Stepper,
    batches,
    run_steps,
    supervised_step,
)


def problem(n: int = 120) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    return x, (x[:, 0] > 0).long()


def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8, bias=False), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                               torch.nn.Linear(8, 2))


class Recorder(Hook):
    """Records what a hook sees: the order of calls, gradients present before the step, weights moved after."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, str]] = []
        self.before: dict[tuple[int, str], Tensor] = {}

    def start_step(self, step: int) -> None:
        self.calls.append(("start", step, ""))

    def before_step(self, event: OptimizerStep) -> None:
        self.calls.append(("before", event.step, event.name))
        weight = next(event.model.parameters())
        assert weight.grad is not None and event.loss.requires_grad
        self.before[(event.step, event.name)] = weight.detach().clone()

    def after_step(self, event: OptimizerStep) -> None:
        self.calls.append(("after", event.step, event.name))
        assert not torch.equal(next(event.model.parameters()).detach(), self.before[(event.step, event.name)])


def test_hooks_run_around_each_update_in_order() -> None:
    model = net()
    x, y = problem()
    recorder = Recorder()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    run_steps(supervised_step(model, opt), batches((x, y), 20, torch.Generator().manual_seed(0)), steps=2,
              models=[model], hooks=[recorder], progress=False)
    assert recorder.calls == [("start", 1, ""), ("before", 1, "model"), ("after", 1, "model"),
                              ("start", 2, ""), ("before", 2, "model"), ("after", 2, "model")]


def test_two_models_and_two_optimizers_in_one_step() -> None:
    """A GAN's step: the discriminator's update, then the generator's; each loss averaged at evaluations."""
    torch.manual_seed(0)
    gen, disc = torch.nn.Linear(4, 6), torch.nn.Sequential(torch.nn.Linear(6, 1))
    opt_g, opt_d = torch.optim.Adam(gen.parameters(), 1e-2), torch.optim.Adam(disc.parameters(), 1e-2)
    real, _ = problem()
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    before = [p.detach().clone() for p in (*gen.parameters(), *disc.parameters())]

    def gan_step(batch: tuple[Tensor, ...], stepper: Stepper) -> Mapping[str, Tensor]:
        (xb,) = batch
        z = torch.randn(len(xb), 4)
        fake = gen(z)
        d_loss = bce(disc(xb), torch.ones(len(xb), 1)) + bce(disc(fake.detach()), torch.zeros(len(xb), 1))
        stepper.optimize("discriminator", disc, opt_d, d_loss)
        g_loss = bce(disc(fake), torch.ones(len(xb), 1))
        stepper.optimize("generator", gen, opt_g, g_loss)
        return {"d_loss": d_loss.detach(), "g_loss": g_loss.detach()}

    recorder = Recorder()
    records: list[dict[str, Any]] = []
    result = run_steps(gan_step, batches((real,), 30, torch.Generator().manual_seed(0)), steps=4,
                       models=[gen, disc], eval_steps=(2, 4), hooks=[recorder], on_eval=records.append,
                       progress=False)
    assert not result.diverged and [r["step"] for r in records] == [2, 4]
    assert all(set(r) == {"step", "train_d_loss", "train_g_loss"} for r in records)
    assert [c for c in recorder.calls if c[0] != "start"][:4] == [
        ("before", 1, "discriminator"), ("after", 1, "discriminator"), ("before", 1, "generator"),
        ("after", 1, "generator")]
    after = [p.detach() for p in (*gen.parameters(), *disc.parameters())]
    assert all(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_activation_probe_samples_only_its_steps() -> None:
    model = net()
    x, y = problem()
    probe = ActivationProbe({"bn": model[1]}, steps={1, 4})
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    run_steps(supervised_step(model, opt), batches((x, y), 20, torch.Generator().manual_seed(0)), steps=5,
              models=[model], hooks=[probe], eval_steps=(5,), evaluate=lambda: {"acc": model(x).mean().item()},
              progress=False)
    probe.close()
    results = probe.results()
    assert [(r["step"], r["module"]) for r in results] == [(1, "bn"), (4, "bn")]  # not the evaluation's forward
    assert abs(results[0]["mean"]) < 1e-6 and abs(results[0]["std"] - 1) < 0.05  # step 1: γ = 1, β = 0
    assert not model[1]._forward_hooks


def test_gradient_probe_reads_the_gradients_before_the_update() -> None:
    model = net()
    x, y = problem()
    probe = GradientProbe(steps={1})
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    stream = batches((x, y), 20, torch.Generator().manual_seed(0))
    first = next(batches((x, y), 20, torch.Generator().manual_seed(0)))
    expected = net()
    torch.nn.functional.cross_entropy(expected(first[0]), first[1]).backward()
    run_steps(supervised_step(model, opt), stream, steps=3, models=[model], hooks=[probe], progress=False)
    (result,) = probe.results()
    assert result["step"] == 1 and result["optimizer"] == "model"
    for name, p in expected.named_parameters():
        assert result["norms"][name] == pytest.approx(float(p.grad.norm()), rel=1e-5)


def test_loss_along_the_gradient_changes_neither_weights_nor_statistics() -> None:
    model = net()
    x, y = problem()
    alphas = [0.0, 0.1, 1.0, 100.0]
    probe = LossAlongDirection(lambda out, batch: torch.nn.functional.cross_entropy(out, batch[1]), alphas,
                               steps={1})
    seen: dict[str, Any] = {}

    class Snapshot(Hook):  # after the probe, before the optimizer: nothing may have moved
        def before_step(self, event: OptimizerStep) -> None:
            seen["state"] = {k: v.clone() for k, v in event.model.state_dict().items()}

    reference = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    first = next(batches((x, y), 20, torch.Generator().manual_seed(0)))
    reference(first[0])  # one train-mode forward: the running statistics the real step leaves before its update
    run_steps(supervised_step(model, opt), batches((x, y), 20, torch.Generator().manual_seed(0)), steps=1,
              models=[model], hooks=[probe, Snapshot()], progress=False)
    for key, value in reference.state_dict().items():
        assert torch.equal(seen["state"][key], value), key
    (result,) = probe.results()
    assert result["ratios"][0] == pytest.approx(1.0, abs=1e-6)  # α = 0: the loss itself
    assert result["ratios"][1] < 1.0  # a small step down the gradient lowers the loss
