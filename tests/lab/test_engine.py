"""The training engine: batch order, evaluation schedule, no host syncs between evaluations, reproducibility."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from bnlab.lab import engine


def problem(n: int = 240) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    return x, (x[:, 0] > 0).long()


def model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(8, 16, bias=False), torch.nn.BatchNorm1d(16), torch.nn.Sigmoid(),
                               torch.nn.Linear(16, 2))


def test_batches_cover_each_epoch_once() -> None:
    x = torch.arange(10).float().unsqueeze(1)
    stream = engine.batches((x, torch.arange(10)), 3, torch.Generator().manual_seed(0))
    epoch = [next(stream) for _ in range(3)]  # 3 batches of 3; the 10th example is dropped this epoch
    seen = torch.cat([xb for xb, _ in epoch]).flatten().tolist()
    assert len(set(seen)) == 9
    assert all(torch.equal(xb.flatten().long(), yb) for xb, yb in epoch)  # images and labels stay paired


@pytest.mark.parametrize("size", [pytest.param(0, id="zero"), pytest.param(11, id="more-than-data")])
def test_bad_batch_size(size: int) -> None:
    with pytest.raises(ValueError, match="batch size"):
        next(engine.batches((torch.zeros(10, 1), torch.zeros(10)), size, torch.Generator()))


def run(steps: int = 100, eval_steps: tuple[int, ...] = (0, 50, 100), seed: int = 0,
        lr: float = 0.5) -> tuple[list[dict[str, Any]], torch.nn.Module, engine.TrainResult]:
    torch.manual_seed(0)
    net = model()
    x, y = problem()
    records: list[dict[str, Any]] = []

    def evaluate(m: torch.nn.Module) -> dict[str, Any]:
        assert not m.training and not torch.is_grad_enabled()
        return {"accuracy": (m(x).argmax(1) == y).float().mean().item()}

    result = engine.train(net, x, y, engine.make_optimizer(net.parameters(), "sgd", lr), steps=steps,
                          batch_size=20, seed=seed, eval_steps=eval_steps, evaluate=evaluate,
                          on_eval=records.append, progress=False)
    return records, net, result


def test_evaluation_schedule_and_learning() -> None:
    records, net, result = run()
    assert [r["step"] for r in records] == [0, 50, 100]
    assert records[0]["train_loss"] is None and records[1]["train_loss"] > records[2]["train_loss"]
    assert records[-1]["accuracy"] > 0.9 > records[0]["accuracy"]
    assert net.training and result == engine.TrainResult(100, False, result.seconds)


def test_same_seed_same_weights_other_seed_other_order() -> None:
    _, a, _ = run(seed=3)
    _, b, _ = run(seed=3)
    _, c, _ = run(seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters(), strict=True))


def test_no_host_sync_between_evaluations(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    item = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda self: calls.append(1) or item(self))
    torch.manual_seed(0)
    net = model()
    x, y = problem()
    engine.train(net, x, y, engine.make_optimizer(net.parameters(), "sgd", 0.1), steps=200, batch_size=20, seed=0,
                 eval_steps=(100, 200), progress=False)
    assert len(calls) == 2  # the mean loss, read once per evaluation and never per step


def test_divergence_stops_training() -> None:
    torch.manual_seed(0)
    net = torch.nn.Linear(8, 2)  # no batch norm to tame it: a huge learning rate overflows the weights
    x, y = problem()
    records: list[dict[str, Any]] = []
    result = engine.train(net, x * 1e10, y, engine.make_optimizer(net.parameters(), "sgd", 1e30), steps=100,
                          batch_size=20, seed=0, eval_steps=(20, 40, 100), on_eval=records.append, progress=False)
    assert result.diverged and result.steps == 20 and len(records) == 1
    assert not math.isfinite(records[0]["train_loss"])


@pytest.mark.parametrize(("value", "index"), [
    pytest.param(math.nan, 5, id="nan"),
    pytest.param(math.inf, 239, id="inf-in-the-last-example"),
])
def test_non_finite_data_is_refused_before_training(value: float, index: int) -> None:
    """A NaN in one example would poison batch norm's running statistics (pytorch#90342): say where it is."""
    torch.manual_seed(0)
    net = model()
    before = [t.clone() for t in net.state_dict().values()]
    x, y = problem()
    x[index, 3] = value
    with pytest.raises(engine.NonFiniteDataError, match=rf"the toy images hold non-finite values: 1 of 240 "
                                                        rf"examples, the first at index {index} \({value}\)"):
        engine.train(net, x, y, engine.make_optimizer(net.parameters(), "sgd", 0.1), steps=10, batch_size=20,
                     seed=0, data_name="the toy images", progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, net.state_dict().values(), strict=True))


def test_progress_bar_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    net = model()
    x, y = problem()
    engine.train(net, x, y, engine.make_optimizer(net.parameters(), "adam", 0.01), steps=250, batch_size=20, seed=0,
                 progress=True, desc="unit-test")
    assert "unit-test" in capsys.readouterr().err


@pytest.mark.parametrize(("name", "kind", "momentum"), [
    pytest.param("sgd", torch.optim.SGD, 0.0, id="plain-sgd"),  # the paper's Figure 1: no momentum
    pytest.param("momentum", torch.optim.SGD, 0.9, id="momentum"),
    pytest.param("adam", torch.optim.Adam, None, id="adam"),
])
def test_optimizers(name: str, kind: type, momentum: float | None) -> None:
    opt = engine.make_optimizer(model().parameters(), name, 0.1)
    assert type(opt) is kind and opt.defaults["lr"] == 0.1
    if momentum is not None:
        assert opt.defaults["momentum"] == momentum


def test_bad_optimizer_and_device() -> None:
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        engine.make_optimizer(model().parameters(), "rmsprop", 0.1)
    with pytest.raises(ValueError, match="learning rate must be positive"):
        engine.make_optimizer(model().parameters(), "sgd", 0.0)
    with pytest.raises(ValueError, match="choose auto, cpu or cuda"):
        engine.resolve_device("tpu")
    assert engine.resolve_device("cpu") == torch.device("cpu")
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the missing-GPU message cannot be checked here")
    assert engine.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="sees no CUDA GPU"):
        engine.resolve_device("cuda")
