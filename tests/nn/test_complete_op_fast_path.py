"""The layers' fast path (nn/batchnorm.py, ``complete_op_fast_path``): ATen's complete op first, bnlab's checks only
when it fails. A good call must equal torch's module without running the checks; a bad call must still get bnlab's
message, torch's exception type, and leave the layer as it was."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import bnlab
from bnlab.kernels import BackendUnavailableError
from bnlab.nn import batchnorm as bn_module

MODES = [pytest.param(False, id="eval"), pytest.param(True, id="train")]


def _no_checks(*args: object, **kwargs: object) -> None:
    raise AssertionError("the fast path ran bnlab's argument checks on a good call")


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("training", MODES)
@pytest.mark.parametrize(("cls", "shape"), [
    pytest.param(bnlab.BatchNorm1d, (256, 512), id="1d-256x512"),
    pytest.param(bnlab.BatchNorm1d, (2, 4), id="1d-2x4"),
    pytest.param(bnlab.BatchNorm2d, (4, 3, 5, 5), id="2d"),
])
@pytest.mark.parametrize("backend", ["auto", "native"])
def test_a_good_call_runs_without_the_checks(monkeypatch: pytest.MonkeyPatch, cls: type, shape: tuple[int, ...],
                                             training: bool, backend: str) -> None:
    theirs = getattr(torch.nn, cls.__name__)(shape[1]).train(training)
    ours = cls(shape[1], backend=backend).train(training)
    with torch.no_grad():  # running statistics that differ from the start, so eval reads them
        theirs.running_mean.uniform_(-1, 1)
        theirs.running_var.uniform_(0.5, 2)
        theirs.weight.uniform_(0.5, 1.5)
        theirs.bias.uniform_(-1, 1)
    ours.load_state_dict(theirs.state_dict())
    monkeypatch.setattr(bn_module, "check_batch_norm_args", _no_checks)
    x = torch.randn(shape)
    for _ in range(2):
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)  # the same ATen kernel
    for key, value in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], value, rtol=0, atol=0, msg=key)


BAD_CALLS: list[object] = [
    pytest.param(lambda: (bnlab.BatchNorm2d(4), torch.randn(2, 3, 5, 5)), RuntimeError, "num_features=3",
                 id="wrong-channels"),
    pytest.param(lambda: (bnlab.BatchNorm1d(3), torch.randn(4, 3, dtype=torch.float64)), RuntimeError,
                 "convert the layer with .to", id="float64-input-float32-layer"),
    pytest.param(lambda: (bnlab.BatchNorm1d(3).half(), torch.randn(4, 3)), RuntimeError,
                 "convert the layer with .to", id="float32-input-half-layer"),
    pytest.param(lambda: (bnlab.BatchNorm1d(3), torch.ones(4, 3, dtype=torch.long)), NotImplementedError,
                 "input.float()", id="int64-input"),
]


@pytest.mark.parametrize("training", MODES)
@pytest.mark.parametrize(("make", "error", "hint"), BAD_CALLS)
def test_a_bad_call_gets_bnlabs_message_and_changes_nothing(make: Callable[[], tuple[torch.nn.Module, torch.Tensor]],
                                                            error: type, hint: str, training: bool) -> None:
    module, x = make()
    module.train(training)
    before = _state(module)
    with pytest.raises(error) as info:
        module(x)
    assert hint in str(info.value)  # bnlab's message (ATen's says neither what to do nor which layer)
    for key, value in module.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0, equal_nan=True, msg=key)


@pytest.mark.parametrize("training", MODES)
def test_running_statistics_that_require_grad_are_still_refused(training: bool) -> None:
    # ATen would differentiate through them; bnlab refuses, on the fast path's layers too.
    module = bnlab.BatchNorm1d(3).train(training)
    module.running_mean.requires_grad_(True)
    with pytest.raises(RuntimeError, match=r"running_mean requires grad.*detach\(\)"):
        module(torch.randn(4, 3))
    assert int(module.num_batches_tracked) == 0


def test_an_error_the_checks_do_not_know_stands(monkeypatch: pytest.MonkeyPatch) -> None:
    # A failure of the kernel itself (not of the arguments) is re-raised as it was, not replaced.
    module = bnlab.BatchNorm1d(3, backend="native").eval()

    def failing_kernel(*args: object, **kwargs: object) -> torch.Tensor:
        raise RuntimeError("out of memory in the kernel")

    monkeypatch.setattr(type(bnlab.kernels.get_backend("native")), "complete_batch_norm", failing_kernel)
    with pytest.raises(RuntimeError, match="out of memory in the kernel"):
        module(torch.randn(4, 3))


@pytest.mark.parametrize("momentum", [pytest.param(None, id="cumulative"), pytest.param(0.1, id="momentum")])
def test_the_batch_is_counted_once_per_training_call(momentum: float | None) -> None:
    theirs, ours = torch.nn.BatchNorm1d(3, momentum=momentum), bnlab.BatchNorm1d(3, momentum=momentum)
    for _ in range(3):
        x = torch.randn(8, 3)
        theirs(x), ours(x)
    assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 3
    torch.testing.assert_close(ours.running_var, theirs.running_var, rtol=0, atol=0)


def test_a_backend_that_cannot_run_leaves_the_layers_checks_their_order() -> None:
    # Triton takes no float64: the shortcut must not answer first with the generic argument check. The layer's own
    # small-batch message (naming it and the remedies) comes first, as on the full path; with small_batch='running'
    # the batch is legal and the backend's refusal is the error.
    layer = bnlab.BatchNorm1d(3, backend="triton").double()
    with pytest.raises(ValueError, match=r"^BatchNorm1d: .*Remedies"):
        layer(torch.randn(1, 3, dtype=torch.float64))
    layer = bnlab.BatchNorm1d(3, backend="triton", small_batch="running").double()
    with pytest.raises(BackendUnavailableError, match="triton"):
        layer(torch.randn(1, 3, dtype=torch.float64))
    assert int(layer.num_batches_tracked) == 0
