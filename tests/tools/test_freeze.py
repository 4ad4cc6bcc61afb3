"""bnlab.tools.freeze (three independent switches per layer) and the FrozenBatchNorm conversions."""

from __future__ import annotations

import copy

import pytest
import torch

import bnlab
from bnlab.tools import freeze, from_frozen, to_frozen


def _model() -> torch.nn.Sequential:
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 6, bias=False), torch.nn.BatchNorm1d(6),
    )
    with torch.no_grad():
        for _ in range(3):
            model.train()(torch.randn(8, 3, 6, 6) * 2 + 1)
    return model


def _reference(bn: torch.nn.Module, x: torch.Tensor, batch_stats: bool) -> torch.Tensor:
    dims = [0, *range(2, x.dim())]
    if batch_stats:
        mean, var = x.mean(dims), x.var(dims, unbiased=False)
    else:
        mean, var = bn.running_mean, bn.running_var
    shape = [1, -1] + [1] * (x.dim() - 2)
    return ((x - mean.view(shape)) / torch.sqrt(var.view(shape) + bn.eps) * bn.weight.view(shape)
            + bn.bias.view(shape))


SWITCHES = [
    pytest.param("running", False, id="running-no-update"),  # the classic frozen batch norm
    pytest.param("batch", False, id="batch-no-update"),  # batch statistics, running ones kept for later
    pytest.param("running", True, id="running-and-update"),  # fixed normalization, statistics follow new data
    pytest.param("batch", True, id="batch-and-update"),  # torch's training behaviour, in eval too
]


@pytest.mark.parametrize(("normalize_with", "update"), SWITCHES)
@pytest.mark.parametrize("mode", [pytest.param(True, id="train"), pytest.param(False, id="eval")])
def test_switches_hold_in_both_modes(normalize_with: str, update: bool, mode: bool) -> None:
    model = freeze(_model(), "1", normalize_with=normalize_with, update_stats=update).train(mode)
    bn = model[1]
    assert isinstance(bn, bnlab.BatchNorm2d)
    x = torch.randn(5, 3, 6, 6)
    h = model[0](x)
    before = (bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked))
    expected = _reference(bn, h, normalize_with == "batch")
    torch.testing.assert_close(bn(h), expected, rtol=1e-5, atol=1e-5)
    changed = not torch.equal(bn.running_mean, before[0])
    assert changed == update
    assert int(bn.num_batches_tracked) == before[2] + int(update)
    if update:  # momentum 0.1, unbiased batch variance
        m = h.numel() // h.shape[1]
        batch_var = h.var([0, 2, 3], unbiased=False) * m / (m - 1)
        torch.testing.assert_close(bn.running_var, 0.9 * before[1] + 0.1 * batch_var, rtol=1e-5, atol=1e-6)


def test_running_and_update_trains_through_the_running_statistics() -> None:
    bn = freeze(bnlab.BatchNorm1d(3), normalize_with="running", update_stats=True, train_affine=True).train()
    x = torch.randn(6, 3, requires_grad=True)
    bn(x).sum().backward()  # the statistics normalized as copies, so updating them does not break backward
    assert x.grad is not None and bn.weight.grad is not None


def test_train_affine_and_patterns() -> None:
    model = freeze(_model(), ["1"], normalize_with=None, update_stats=None, train_affine=False)
    assert not model[1].weight.requires_grad and not model[1].bias.requires_grad
    assert model[5].weight.requires_grad
    assert type(model[5]) is torch.nn.BatchNorm1d  # untouched layers keep their class
    thawed = freeze(model, normalize_with=None, update_stats=None, train_affine=True)
    assert all(p.requires_grad for p in thawed.parameters())


def test_freeze_whole_model_is_a_frozen_batch_norm_that_survives_train() -> None:
    original = _model()
    model = freeze(original).train()
    x = torch.randn(4, 3, 6, 6)
    state = copy.deepcopy(model.state_dict())
    torch.testing.assert_close(model(x), original.eval()(x))
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert not any(p.requires_grad for m in (model[1], model[5]) for p in m.parameters())
    assert type(original[1]) is torch.nn.BatchNorm2d and original[1].weight.requires_grad  # not mutated


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    pytest.param({"layers": "nope.*"}, ValueError, "matches no batch-norm layer", id="pattern-matches-nothing"),
    pytest.param({"normalize_with": "ema"}, ValueError, "normalize_with", id="bad-normalize-with"),
    pytest.param({"update_stats": "yes"}, TypeError, "update_stats", id="bad-update"),
])
def test_bad_arguments(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        freeze(_model(), **kwargs)  # type: ignore[arg-type]


def test_layers_bnlab_does_not_control_are_refused_for_the_statistics_switches() -> None:
    model = torch.nn.Sequential(torch.nn.SyncBatchNorm(3))
    with pytest.raises(ValueError, match="SyncBatchNorm"):
        freeze(model)
    frozen_affine = freeze(model, normalize_with=None, update_stats=None, train_affine=False)
    assert not frozen_affine[0].weight.requires_grad


def test_running_statistics_required() -> None:
    model = freeze(torch.nn.Sequential(torch.nn.BatchNorm1d(3, track_running_stats=False)))
    with pytest.raises(RuntimeError, match="track_running_stats=False"):
        model(torch.randn(4, 3))


# ----------------------------------------------------------------------------------------------- conversions

FAMILIES = [
    pytest.param(torch.nn.BatchNorm1d, {}, (5, 4), id="torch-1d"),
    pytest.param(bnlab.BatchNorm2d, {"momentum": None}, (3, 4, 5, 5), id="bnlab-2d-cumulative"),
    pytest.param(torch.nn.BatchNorm3d, {"eps": 1e-3, "affine": False}, (2, 4, 3, 3, 3), id="torch-3d-no-affine"),
    pytest.param(torch.nn.BatchNorm2d, {"bias": False}, (3, 4, 5, 5), id="torch-2d-gamma-only"),
]


@pytest.mark.parametrize(("cls", "kwargs", "shape"), FAMILIES)
def test_round_trip_keeps_every_value(cls: type, kwargs: dict[str, object], shape: tuple[int, ...]) -> None:
    bn = cls(shape[1], **kwargs)
    with torch.no_grad():
        for _ in range(3):
            bn.train()(torch.randn(shape) * 2 - 1)
    bn.eval()
    frozen = to_frozen(bn)
    x = torch.randn(shape)
    torch.testing.assert_close(frozen(x), bn(x), rtol=1e-5, atol=2e-6)
    family = "bnlab" if isinstance(bn, bnlab.BatchNorm2d) else "torch"
    back = from_frozen(frozen, family)
    assert type(back) is type(bn) and back.momentum == bn.momentum and back.eps == bn.eps
    assert back.affine == bn.affine and (back.bias is None) == (bn.bias is None) and not back.training
    for (k1, v1), (k2, v2) in zip(bn.state_dict().items(), back.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2), k1
    assert all(p.requires_grad for p in back.parameters())


def test_convert_to_frozen_and_back_on_a_model() -> None:
    model = bnlab.convert(_model()).eval()
    frozen = bnlab.convert(model, to="frozen")
    assert [type(m).__name__ for m in frozen.modules() if "Norm" in type(m).__name__] == [
        "FrozenBatchNorm2d", "FrozenBatchNorm1d"]
    x = torch.randn(4, 3, 6, 6)
    torch.testing.assert_close(frozen(x), model(x), rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(frozen.train()(x), model(x), rtol=1e-5, atol=2e-6)  # frozen in train mode too
    back = bnlab.convert(frozen.eval(), to="bnlab", backend="reference")
    assert isinstance(back[1], bnlab.BatchNorm2d) and back[1].backend == "reference"
    assert isinstance(bnlab.convert(frozen, to="torch")[5], torch.nn.BatchNorm1d)
    assert isinstance(model[1], bnlab.BatchNorm2d)  # not mutated


def test_convert_to_frozen_inplace_and_of_a_single_layer() -> None:
    model = _model().eval()
    same = bnlab.convert(model, to="frozen", inplace=True)
    assert same is model and isinstance(model[1], bnlab.nn.FrozenBatchNorm2d)
    layer = bnlab.convert(torch.nn.BatchNorm1d(3), to="frozen")
    assert isinstance(layer, bnlab.nn.FrozenBatchNorm1d)


def test_convert_to_frozen_refuses_layers_without_statistics() -> None:
    with pytest.raises(ValueError, match="track_running_stats=False"):
        bnlab.convert(torch.nn.Sequential(torch.nn.BatchNorm1d(3, track_running_stats=False)), to="frozen")
    with pytest.raises(ValueError, match="backend applies to to='bnlab' or 'sync' only"):
        bnlab.convert(_model(), to="frozen", backend="native")


def test_running_and_update_moves_the_buffers_as_torchs_training_step_on_every_backend(backend: str) -> None:
    # The path that normalizes with the running statistics and then folds the batch's into them: each backend's
    # statistics phase and its own running update (the cpu backend's C update included) must move the buffers
    # exactly as torch's training step would, while the output comes from the statistics as they were.
    bn = freeze(bnlab.BatchNorm2d(4), normalize_with="running", update_stats=True, train_affine=None).eval()
    bn.backend = backend
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
        bn.running_var.copy_(torch.tensor([1.5, 0.5, 4.0, 1.0]))
    x = torch.randn(6, 4, 5, 5) * 3 + 1
    expected_y = _reference(bn, x, batch_stats=False)
    torch_mean, torch_var = bn.running_mean.clone(), bn.running_var.clone()
    torch.nn.functional.batch_norm(x, torch_mean, torch_var, training=True, momentum=0.1)
    y = bn(x)
    torch.testing.assert_close(y, expected_y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bn.running_mean, torch_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(bn.running_var, torch_var, rtol=1e-6, atol=1e-6)
    assert int(bn.num_batches_tracked) == 1
