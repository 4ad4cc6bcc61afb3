"""small_batch= and non_finite= on every bnlab batch-norm module (bnlab.nn.policy): defaults are torch's."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch

import bnlab
from bnlab.nn import policy as policy_module

# Every trainable family member over (N, C) input, with its own constructor arguments.
FAMILY: list = [
    pytest.param(lambda **k: bnlab.BatchNorm1d(3, **k), id="BatchNorm1d"),
    pytest.param(lambda **k: bnlab.nn.BatchNormAct1d(3, activation="relu", **k), id="BatchNormAct1d"),
    pytest.param(lambda **k: bnlab.nn.BatchRenorm1d(3, **k), id="BatchRenorm1d"),
    pytest.param(lambda **k: bnlab.nn.GhostBatchNorm1d(3, 2, **k), id="GhostBatchNorm1d"),
]
Make = Callable[..., torch.nn.Module]


def _state(layer: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in layer.state_dict().items()}


def _unchanged(layer: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, before[k]) for k, v in layer.state_dict().items())


def _with_stats(layer: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        layer.running_var.copy_(torch.tensor([2.0, 0.5, 1.5]))
    return layer


@pytest.mark.parametrize("make", FAMILY)
def test_one_value_per_channel_raises_naming_the_layer_and_the_remedies(make: Make) -> None:
    layer = make()
    before = _state(layer)
    with pytest.raises(ValueError, match=rf"{type(layer).__name__}: Expected more than 1 value per channel.*"
                                         r"small_batch='running'"):
        layer(torch.randn(1, 3))
    assert _unchanged(layer, before)


@pytest.mark.parametrize("make", FAMILY)
def test_small_batch_running_normalizes_with_the_running_statistics(make: Make) -> None:
    layer = _with_stats(make(small_batch="running"))
    before = _state(layer)
    x = torch.randn(1, 3)
    y = layer(x)
    assert _unchanged(layer, before)  # running statistics and counter untouched
    expected = layer.eval()(x)
    torch.testing.assert_close(y, expected)
    layer.train()(torch.randn(4, 3))  # a batch of 4 still trains and updates
    assert int(layer.num_batches_tracked) == 1


def test_small_batch_running_without_running_statistics_still_raises() -> None:
    layer = bnlab.BatchNorm1d(3, track_running_stats=False, small_batch="running")
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        layer(torch.randn(1, 3))


def _nan_batch() -> torch.Tensor:
    x = torch.randn(4, 3)
    x[2, 1] = float("nan")
    return x


@pytest.mark.parametrize("make", FAMILY)
def test_default_propagates_non_finite_statistics_as_torch(make: Make) -> None:
    layer = make()
    layer(_nan_batch())
    assert torch.isnan(layer.running_mean[1]) and int(layer.num_batches_tracked) == 1


@pytest.mark.parametrize("make", FAMILY)
def test_skip_update_leaves_the_running_statistics_counts_and_warns_once(make: Make) -> None:
    layer = _with_stats(make(non_finite="skip_update"))
    before = _state(layer)
    with pytest.warns(RuntimeWarning, match="skipped the running-statistics update"):
        layer(_nan_batch())
    assert _unchanged(layer, before) and int(layer.batches_skipped) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per layer
        layer(_nan_batch())
        x = torch.randn(4, 3)
        layer(x)  # a finite batch updates as usual
    assert int(layer.batches_skipped) == 2 and int(layer.num_batches_tracked) == 1
    assert torch.isfinite(layer.running_mean).all() and not torch.equal(layer.running_mean, before["running_mean"])


def test_skip_update_with_a_mask_and_inf_values() -> None:
    layer = bnlab.BatchNorm1d(3, non_finite="skip_update")
    before = _state(layer)
    x = torch.randn(2, 3, 5)
    x[0, 2, 1] = float("inf")
    with pytest.warns(RuntimeWarning):
        layer(x, torch.ones(2, 5, dtype=torch.bool))
    assert _unchanged(layer, before)


@pytest.mark.parametrize("make", FAMILY)
def test_non_finite_error_names_the_layer_and_changes_nothing(make: Make) -> None:
    layer = make(non_finite="error")
    before = _state(layer)
    with pytest.raises(FloatingPointError, match=rf"{type(layer).__name__}: this batch's statistics are not finite"):
        layer(_nan_batch())
    assert _unchanged(layer, before)


def test_the_default_path_builds_no_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    # The default (propagate) adds nothing to a call: no copies of the buffers, nothing read on the host.
    def refuse(*args: object) -> None:
        raise AssertionError("an UpdateGuard was built on the default path")

    for module in (bnlab.nn.batchnorm, bnlab.nn.variant):
        monkeypatch.setattr(module, "UpdateGuard", refuse)
    bnlab.BatchNorm2d(3)(torch.randn(2, 3, 4, 4))
    bnlab.nn.BatchRenorm2d(3)(torch.randn(2, 3, 4, 4))


def test_skip_update_under_torch_compile_needs_no_graph_break() -> None:
    torch._dynamo.reset()
    layer = _with_stats(bnlab.BatchNorm1d(3, non_finite="skip_update", backend="reference"))
    before = _state(layer)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    compiled(_nan_batch())
    assert _unchanged(layer, before) and int(layer.batches_skipped) == 1
    compiled(torch.randn(4, 3))
    assert int(layer.num_batches_tracked) == 1


@pytest.mark.parametrize(("kwargs", "message"), [
    pytest.param({"small_batch": "skip"}, "small_batch must be one of", id="small_batch"),
    pytest.param({"non_finite": "ignore"}, "non_finite must be one of", id="non_finite"),
])
def test_bad_policies_are_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bnlab.BatchNorm2d(3, **kwargs)


def test_policies_show_in_repr_and_do_not_survive_conversion_to_torch() -> None:
    layer = bnlab.BatchNorm2d(3, small_batch="running", non_finite="skip_update")
    assert "small_batch='running', non_finite='skip_update'" in repr(layer)
    assert "small_batch" not in repr(bnlab.BatchNorm2d(3))
    plain = bnlab.convert(layer, to="torch")
    assert type(plain) is torch.nn.BatchNorm2d and "small_batch" not in vars(plain)
    assert policy_module.SMALL_BATCH[0] == "error" and policy_module.NON_FINITE[0] == "propagate"
