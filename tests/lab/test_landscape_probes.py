"""The probes that evaluate a network at moved weights (``bnlab.lab.train.landscape``), against a float64 hand
computation on deep linear chains (gradients written out with NumPy, no autograd), against a direct autograd
computation on a batch-norm network, and for what they must leave alone; and ActivationProbe's one-unit quantiles.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

import bnlab
from bnlab.lab.train import (
    ActivationProbe,
    CovariateShiftProbe,
    Hook,
    LandscapeProbe,
    LossAlongDirection,
    OptimizerStep,
    Stepper,
    batches,
    run_steps,
)
from tolerances import FLOOR

EXACT = 1e-10  # relative error allowed where the probe runs in float64 against the float64 hand computation


def mse(output: Tensor, batch: tuple[Tensor, ...]) -> Tensor:
    return torch.nn.functional.mse_loss(output, batch[1])


def chain(widths: list[int], dtype: torch.dtype, seed: int = 0) -> torch.nn.Sequential:
    """A bias-free linear chain widths[0] → … → widths[-1]."""
    torch.manual_seed(seed)
    layers = [torch.nn.Linear(a, b, bias=False) for a, b in itertools.pairwise(widths)]
    return torch.nn.Sequential(*layers).to(dtype)


def problem(n: int, d_in: int, d_out: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, d_in, generator=g).to(dtype), torch.randn(n, d_out, generator=g).to(dtype)


# --- the hand computation: L = mean((X W1ᵀ … Wkᵀ − Y)²), its gradients by the chain rule, in float64 NumPy ---

def hand_loss_and_grads(ws: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[float, list[np.ndarray]]:
    acts = [x]
    for w in ws:
        acts.append(acts[-1] @ w.T)
    err = acts[-1] - y
    loss = float(np.mean(err ** 2))
    upstream = 2 * err / err.size  # ∂L/∂A_k
    grads: list[np.ndarray] = [np.empty(0)] * len(ws)
    for i in range(len(ws) - 1, -1, -1):
        grads[i] = upstream.T @ acts[i]  # ∂L/∂W_i = (∂L/∂A_i)ᵀ A_{i−1}
        upstream = upstream @ ws[i]
    return loss, grads


def sgd_update(ws: list[np.ndarray], grads: list[np.ndarray], velocity: list[np.ndarray] | None, lr: float,
               momentum: float) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """torch.optim.SGD's update: v ← μ·v + g (v = g at the first step), w ← w − lr·v."""
    v = [g.copy() for g in grads] if velocity is None else [momentum * a + g for a, g in zip(velocity, grads,
                                                                                               strict=True)]
    return [w - lr * (b if momentum else g) for w, b, g in zip(ws, v, grads, strict=True)], v


def first_batches(x: Tensor, y: Tensor, size: int, count: int) -> list[tuple[Tensor, ...]]:
    stream = batches((x, y), size, torch.Generator().manual_seed(3))
    return [next(stream) for _ in range(count)]


def weights_of(model: torch.nn.Module) -> list[np.ndarray]:
    return [p.detach().double().numpy().copy() for p in model.parameters()]


@pytest.mark.parametrize(("momentum", "dtype"), [
    pytest.param(0.0, torch.float64, id="sgd-float64"),
    pytest.param(0.9, torch.float64, id="momentum-float64"),  # the update W' comes from the optimizer, momentum and all
    pytest.param(0.9, torch.float32, id="momentum-float32"),
])
def test_covariate_shift_matches_a_hand_computation(momentum: float, dtype: torch.dtype) -> None:
    widths, lr, steps = [5, 4, 6, 3, 2], 0.05, 3
    model = chain(widths, dtype)
    x, y = problem(48, widths[0], widths[-1], dtype)
    ws = weights_of(model)
    probe = CovariateShiftProbe(mse, [[f"{i}.weight"] for i in range(4)], steps={2, 3})
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)

    def step(batch: tuple[Tensor, ...], stepper: Stepper) -> Mapping[str, Tensor]:
        loss = mse(model(batch[0]), batch)
        stepper.optimize("model", model, optimizer, loss)
        return {"loss": loss.detach()}

    run_steps(step, iter(first_batches(x, y, 16, steps)), steps=steps, models=[model], hooks=[probe], progress=False)
    expected: list[dict[str, list[float]]] = []
    velocity = None
    for t, (xb, yb) in enumerate(first_batches(x.double(), y.double(), 16, steps), start=1):
        xb_, yb_ = xb.numpy(), yb.numpy()
        _, g = hand_loss_and_grads(ws, xb_, yb_)
        new, velocity = sgd_update(ws, g, velocity, lr, momentum)
        if t in (2, 3):
            row: dict[str, list[float]] = {"l2": [], "grad_norm": [], "cosine": []}
            for i in range(1, 4):  # layers 2, 3, 4: the layers below i updated, i and above not
                _, g2 = hand_loss_and_grads(new[:i] + ws[i:], xb_, yb_)
                a, b = g[i].ravel(), g2[i].ravel()
                row["l2"].append(float(np.linalg.norm(a - b)))
                row["grad_norm"].append(float(np.linalg.norm(a)))
                row["cosine"].append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
            expected.append(row)
        ws = new
    results = probe.results()
    assert [r["step"] for r in results] == [2, 3] and all(r["layers"] == [2, 3, 4] for r in results)
    for got, want in zip(results, expected, strict=True):
        if dtype == torch.float64:
            for key in ("l2", "grad_norm", "cosine"):
                np.testing.assert_allclose(got[key], want[key], rtol=EXACT, err_msg=key)
        else:
            # float32: each gradient entry is rounded at about 2^-24 of its size; the difference of two such
            # gradients is off by at most a few of those roundings of ‖G‖.
            bound = 50 * FLOOR[torch.float32] * np.array(want["grad_norm"])
            assert np.all(np.abs(np.array(got["l2"]) - want["l2"]) <= bound)
            np.testing.assert_allclose(got["grad_norm"], want["grad_norm"], rtol=1e-5)
        assert min(want["l2"]) > 0  # a case where the layers below do shift the gradient


def bn_net(dtype: torch.dtype) -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8, bias=False), bnlab.BatchNorm1d(8), torch.nn.ReLU(),
                               torch.nn.Linear(8, 8, bias=False), bnlab.BatchNorm1d(8), torch.nn.ReLU(),
                               torch.nn.Linear(8, 3)).to(dtype)


BN_LAYERS = [["0.weight", "1.weight", "1.bias"], ["3.weight", "4.weight", "4.bias"], ["6.weight", "6.bias"]]


def test_covariate_shift_of_a_batch_norm_network_matches_autograd() -> None:
    """Definition 2.1 computed directly: copies of the network with the mixed weights loaded, their own backward."""
    model = bn_net(torch.float64)
    x, y = problem(40, 6, 3, torch.float64)
    batch = (x[:20], y[:20])
    before = copy.deepcopy(model)
    probe = CovariateShiftProbe(mse, BN_LAYERS, steps={1})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    run_steps(lambda b, s: _mse_step(model, optimizer, b, s), iter([batch]), steps=1, models=[model], hooks=[probe],
              progress=False)
    (result,) = probe.results()

    def grad_of(weights: dict[str, Tensor], name: str) -> Tensor:
        net = copy.deepcopy(before)  # buffers as before the step; train mode uses batch statistics anyway
        net.load_state_dict({**net.state_dict(), **weights})
        net.train()
        mse(net(batch[0]), batch).backward()
        grad = dict(net.named_parameters())[name].grad
        assert grad is not None
        return grad.detach().reshape(-1)

    old = {n: p.detach() for n, p in before.named_parameters()}
    new = {n: p.detach() for n, p in model.named_parameters()}
    for i, row in enumerate(zip(result["l2"], result["cosine"], strict=True), start=1):
        below = {n for layer in BN_LAYERS[:i] for n in layer}
        weight = BN_LAYERS[i][0]
        g = grad_of(old, weight)
        g2 = grad_of({n: (new[n] if n in below else old[n]) for n in old}, weight)
        assert row[0] == pytest.approx(float((g - g2).norm()), rel=EXACT)
        assert row[1] == pytest.approx(float(g @ g2 / (g.norm() * g2.norm())), rel=EXACT)


def _mse_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: tuple[Tensor, ...],
              stepper: Stepper) -> Mapping[str, Tensor]:
    loss = mse(model(batch[0]), batch)
    stepper.optimize("model", model, optimizer, loss)
    return {"loss": loss.detach()}


@pytest.mark.parametrize("dtype", [
    pytest.param(torch.float64, id="float64"),
    pytest.param(torch.float32, id="float32"),
])
def test_landscape_matches_a_hand_computation(dtype: torch.dtype) -> None:
    widths, etas = [4, 5, 5, 2], [0.05, 0.2, 0.4]
    model = chain(widths, dtype, seed=2)
    x, y = problem(30, widths[0], widths[-1], dtype)
    ws = weights_of(model)
    probe = LandscapeProbe(mse, etas, steps={1})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run_steps(lambda b, s: _mse_step(model, optimizer, b, s), iter([(x, y)]), steps=1, models=[model],
              hooks=[probe], progress=False)
    (result,) = probe.results()
    xd, yd = x.double().numpy(), y.double().numpy()
    loss, g = hand_loss_and_grads(ws, xd, yd)
    flat = np.concatenate([a.ravel() for a in g])
    losses, changes = [], []
    for eta in etas:
        moved_loss, moved = hand_loss_and_grads([w - eta * a for w, a in zip(ws, g, strict=True)], xd, yd)
        losses.append(moved_loss)
        changes.append(float(np.linalg.norm(np.concatenate([a.ravel() for a in moved]) - flat)))
    rtol = EXACT if dtype == torch.float64 else 1e-4  # float32: a few roundings of each of a dozen products
    assert result["etas"] == etas
    np.testing.assert_allclose(result["loss"], loss, rtol=rtol)
    np.testing.assert_allclose(result["grad_norm"], np.linalg.norm(flat), rtol=rtol)
    np.testing.assert_allclose(result["losses"], losses, rtol=rtol)
    np.testing.assert_allclose(result["grad_changes"], changes, rtol=rtol)


class Snapshot(Hook):
    """Copies the model's state and gradients in before_step (after the probes listed before it)."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def before_step(self, event: OptimizerStep) -> None:
        self.seen.append({"state": {k: v.clone() for k, v in event.model.state_dict().items()},
                          "grads": {n: p.grad.clone() for n, p in event.model.named_parameters()
                                    if p.grad is not None}})


@pytest.mark.parametrize("probe_kind", [pytest.param("landscape", id="landscape"), pytest.param("ics", id="ics")])
def test_probes_leave_weights_gradients_and_statistics_alone(probe_kind: str) -> None:
    """With and without the probe, the same weights, gradients and running statistics, step after step."""
    x, y = problem(60, 6, 3, torch.float32)
    runs = []
    for with_probe in (False, True):
        model = bn_net(torch.float32)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        snapshot = Snapshot()
        probe: Hook = (LandscapeProbe(mse, [0.1, 1.0], steps={1, 2, 3}) if probe_kind == "landscape"
                       else CovariateShiftProbe(mse, BN_LAYERS, steps={1, 2, 3}))
        hooks = [probe, snapshot] if with_probe else [snapshot]
        run_steps(lambda b, s, m=model, o=optimizer: _mse_step(m, o, b, s),
                  batches((x, y), 20, torch.Generator().manual_seed(0)), steps=3, models=[model], hooks=hooks,
                  progress=False)
        runs.append((snapshot.seen, model.state_dict()))
    (plain, plain_end), (probed, probed_end) = runs
    for a, b in zip(plain, probed, strict=True):
        for key in a["state"]:
            assert torch.equal(a["state"][key], b["state"][key]), key
        for key in a["grads"]:
            assert torch.equal(a["grads"][key], b["grads"][key]), key
    for key in plain_end:
        assert torch.equal(plain_end[key], probed_end[key]), key


@pytest.mark.parametrize(("make", "message"), [
    pytest.param(lambda: LandscapeProbe(mse, [], steps={1}), "positive", id="no-step-sizes"),
    pytest.param(lambda: LandscapeProbe(mse, [0.1, -0.1], steps={1}), "positive", id="negative-step"),
    pytest.param(lambda: CovariateShiftProbe(mse, [["0.weight"]], steps={1}), "two layers", id="one-layer"),
    pytest.param(lambda: CovariateShiftProbe(mse, [["0.weight"], ["0.weight"]], steps={1}), "no name twice",
                 id="a-parameter-twice"),
    pytest.param(lambda: ActivationProbe({}, steps={1}, quantiles=[0.5, 1.5]), r"in \[0, 1\]", id="bad-quantile"),
])
def test_probes_refuse_bad_arguments(make: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_covariate_shift_names_a_missing_parameter() -> None:
    model = chain([3, 3, 3], torch.float32)
    probe = CovariateShiftProbe(mse, [["0.weight"], ["2.weight"]], steps={1})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = problem(8, 3, 3, torch.float32)
    with pytest.raises(ValueError, match=r"no parameter named '2\.weight'"):
        run_steps(lambda b, s: _mse_step(model, optimizer, b, s), iter([(x, y)]), steps=1, models=[model],
                  hooks=[probe], progress=False)


def test_activation_probe_gives_one_units_quantiles() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, 3, 3, padding=1)
    model = torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(3 * 25, 2))
    x = torch.randn(16, 2, 5, 5)
    y = torch.randint(0, 2, (16,))
    seen = conv(x).detach()  # the step's forward pass, before the update
    probe = ActivationProbe({"conv": conv}, steps={1}, unit=2, quantiles=[0.15, 0.5, 0.85])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def step(batch: tuple[Tensor, ...], stepper: Stepper) -> Mapping[str, Tensor]:
        loss = torch.nn.functional.cross_entropy(model(batch[0]), batch[1])
        stepper.optimize("model", model, optimizer, loss)
        return {"loss": loss.detach()}

    run_steps(step, iter([(x, y)]), steps=1, models=[model], hooks=[probe], progress=False)
    probe.close()
    (row,) = probe.results()
    values = seen[:, 2].double().reshape(-1).numpy()  # channel 2 over the batch and every position
    np.testing.assert_allclose(row["quantiles"], np.quantile(values, [0.15, 0.5, 0.85]), rtol=1e-5, atol=1e-6)
    assert row["mean"] == pytest.approx(values.mean(), abs=1e-6)
    assert row["std"] == pytest.approx(values.std(ddof=1), rel=1e-5)


def test_activation_probe_names_a_unit_the_layer_lacks() -> None:
    linear = torch.nn.Linear(3, 2)
    probe = ActivationProbe({"linear": linear}, steps={1}, unit=5)
    probe.start_step(1)
    with pytest.raises(ValueError, match="unit 5 is not a feature of linear's output"):
        linear(torch.randn(4, 3))
    probe.close()


@pytest.mark.parametrize("probe_first", [pytest.param(True, id="probe-listed-first"),
                                         pytest.param(False, id="activations-listed-first")])
def test_activation_probe_skips_other_probes_forward_passes(probe_first: bool) -> None:
    """The landscape, ICS and loss-along-direction probes evaluate the network again at a sampled step; the
    activation probe samples the training step's forward pass only."""
    model = bn_net(torch.float32)
    x, y = problem(40, 6, 3, torch.float32)
    trace = ActivationProbe({"bn": model[1]}, steps={1, 2})
    others: list[Hook] = [LandscapeProbe(mse, [0.1, 0.2], steps={1, 2}),
                          CovariateShiftProbe(mse, BN_LAYERS, steps={1, 2}),
                          LossAlongDirection(mse, [0.1], steps={1, 2})]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run_steps(lambda b, s: _mse_step(model, optimizer, b, s), batches((x, y), 20, torch.Generator().manual_seed(0)),
              steps=2, models=[model], hooks=[*others, trace] if probe_first else [trace, *others], progress=False)
    trace.close()
    assert [r["step"] for r in trace.results()] == [1, 2]
