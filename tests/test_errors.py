"""The same errors as torch, with messages at least as clear: each mistake raises torch's exception type."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import bnlab


def _both(call, *args, **kwargs):  # type: ignore[no-untyped-def]
    """Run a call with bnlab and with torch; return both exceptions (each must raise)."""
    errors = []
    for fn in (bnlab.functional.batch_norm, F.batch_norm):
        with pytest.raises(Exception) as info:
            call(fn, *args, **kwargs)
        errors.append(info.value)
    return errors


@pytest.mark.parametrize(("shape", "expected"), [
    pytest.param((1, 3), "got input size torch.Size([1, 3])", id="1d-N1"),
    pytest.param((1, 3, 1), "got input size torch.Size([1, 3, 1])", id="1d-N1-L1"),
    pytest.param((1, 4, 1, 1), "got input size torch.Size([1, 4, 1, 1])", id="2d-N1-1x1"),
])
def test_one_value_per_channel_in_training(backend: str, shape: tuple[int, ...], expected: str) -> None:
    module = {2: bnlab.BatchNorm1d, 3: bnlab.BatchNorm1d, 4: bnlab.BatchNorm2d}[len(shape)](shape[1],
                                                                                           backend=backend)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training") as info:
        module(torch.randn(shape))
    assert expected in str(info.value) and "eval()" in str(info.value)  # says how to fix it
    assert int(module.num_batches_tracked) == 0  # a call that raises changes nothing (torch would count it)
    module.eval()
    module(torch.randn(shape))  # eval mode needs no batch statistics


def test_wrong_number_of_channels(backend: str) -> None:
    module = bnlab.BatchNorm2d(4, backend=backend)
    with pytest.raises(RuntimeError, match="running_mean should contain 3 elements not 4") as info:
        module(torch.randn(2, 3, 5, 5))
    assert "num_features=3" in str(info.value)
    with pytest.raises(RuntimeError, match="should contain 3 elements not 4"):
        torch.nn.BatchNorm2d(4)(torch.randn(2, 3, 5, 5))  # torch raises the same type


@pytest.mark.parametrize(("cls", "shape", "expected"), [
    pytest.param(bnlab.BatchNorm1d, (2, 3, 4, 5), r"expected 2D or 3D input \(got 4D input", id="1d-given-4d"),
    pytest.param(bnlab.BatchNorm2d, (2, 3, 4), r"expected 4D input \(got 3D input", id="2d-given-3d"),
    pytest.param(bnlab.BatchNorm3d, (2, 3, 4, 5), r"expected 5D input \(got 4D input", id="3d-given-4d"),
    pytest.param(bnlab.BatchNorm1d, (3,), r"expected 2D or 3D input \(got 1D input", id="1d-given-1d"),
])
def test_wrong_rank(cls: type, shape: tuple[int, ...], expected: str) -> None:
    with pytest.raises(ValueError, match=expected) as info:
        cls(3)(torch.randn(shape))
    assert "(N, C" in str(info.value)  # names the expected layout


@pytest.mark.parametrize(("name", "position"), [
    pytest.param("running_var", 2, id="running_var"),
    pytest.param("weight", 3, id="weight"),
    pytest.param("bias", 4, id="bias"),
])
def test_mismatched_buffer_sizes(name: str, position: int) -> None:
    args = [torch.randn(4, 3), torch.zeros(3), torch.ones(3), torch.ones(3), torch.zeros(3)]
    args[position] = torch.ones(5)
    ours, theirs = _both(lambda fn: fn(*args, training=True))
    assert type(ours) is type(theirs) is RuntimeError
    assert f"{name} should contain 3 elements not 5" in str(ours)


def test_eval_without_running_statistics() -> None:
    ours, theirs = _both(lambda fn: fn(torch.randn(4, 3), None, None, training=False))
    assert type(ours) is type(theirs) is RuntimeError
    assert "running_mean must be defined in evaluation mode" in str(ours) and "training=True" in str(ours)


def test_input_without_channel_dimension() -> None:
    ours, theirs = _both(lambda fn: fn(torch.randn(3), torch.zeros(3), torch.ones(3)))
    assert type(ours) is type(theirs) is RuntimeError
    assert "at least 2 dimensions" in str(ours) and "unsqueeze(0)" in str(ours)


@pytest.mark.parametrize("dtype", [pytest.param(torch.long, id="int64"), pytest.param(torch.complex64, id="complex")])
def test_non_float_input(dtype: torch.dtype) -> None:
    ours, theirs = _both(lambda fn: fn(torch.ones(2, 3, dtype=dtype), torch.zeros(3), torch.ones(3)))
    assert type(ours) is type(theirs) is NotImplementedError
    assert "floating-point input" in str(ours) and "input.float()" in str(ours)


@pytest.mark.parametrize(("x_dtype", "param_dtype"), [
    pytest.param(torch.float32, torch.float16, id="float32-input-half-layer"),
    pytest.param(torch.float16, torch.bfloat16, id="half-input-bfloat16-layer"),
    pytest.param(torch.float64, torch.float32, id="float64-input-float32-layer"),
])
def test_dtype_combinations_torch_refuses(x_dtype: torch.dtype, param_dtype: torch.dtype) -> None:
    module = bnlab.BatchNorm1d(3).to(param_dtype)
    with pytest.raises(RuntimeError, match=r"convert the layer with .to") as info:
        module(torch.randn(4, 3, dtype=x_dtype))
    assert str(param_dtype).removeprefix("torch.") in str(info.value)
    with pytest.raises(RuntimeError):
        torch.nn.BatchNorm1d(3).to(param_dtype)(torch.randn(4, 3, dtype=x_dtype))


def test_running_statistics_that_require_grad() -> None:
    rm = torch.zeros(3, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"running_mean requires grad.*detach\(\)"):
        bnlab.functional.batch_norm(torch.randn(4, 3), rm, torch.ones(3), training=False)


def test_failed_call_leaves_module_state_alone(backend: str) -> None:
    module = bnlab.BatchNorm2d(4, backend=backend)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(RuntimeError):
        module(torch.randn(2, 3, 5, 5))
    for key, value in module.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize(("eps", "training", "expected"), [
    pytest.param(0.0, True, "eps must be positive during training, but got 0.0", id="zero-in-training"),
    pytest.param(-1e-5, True, "eps must be positive during training", id="negative-in-training"),
    pytest.param(-1e-5, False, "eps must be non-negative, but got -1e-05", id="negative-in-eval"),
])
def test_eps_must_be_positive(eps: float, training: bool, expected: str) -> None:
    ours, theirs = _both(lambda fn: fn(torch.randn(4, 3), torch.zeros(3), torch.ones(3), training=training, eps=eps))
    assert type(ours) is type(theirs) is ValueError
    assert expected in str(ours)
    module = bnlab.BatchNorm1d(3, eps=eps).train(training)
    with pytest.raises(ValueError, match="eps must be"):
        module(torch.randn(4, 3))
    assert int(module.num_batches_tracked) == 0


def test_eps_zero_is_allowed_with_running_statistics() -> None:
    x, mean, var = torch.randn(4, 3), torch.randn(3), torch.rand(3) + 0.5
    y = bnlab.functional.batch_norm(x, mean, var, training=False, eps=0.0)
    torch.testing.assert_close(y, F.batch_norm(x, mean, var, training=False, eps=0.0))


# Two mistakes in one call: torch reports one value per channel first (in Python), then ε, then each buffer and
# parameter in turn (rm, rv, weight, bias), then requires_grad, then "both or neither" running buffers, then dtypes.
_F64 = {"dtype": torch.float64}
TWO_MISTAKES = [
    pytest.param((1, 3), (torch.zeros(5), torch.ones(5)), {}, True, 1e-5, id="one-value+channels"),
    pytest.param((4, 3), (torch.zeros(5), torch.ones(5)), {}, True, 0.0, id="eps+channels"),
    pytest.param((4, 3), (torch.zeros(3, **_F64), torch.ones(3, **_F64)), {}, True, 0.0, id="eps+dtype"),
    pytest.param((1, 3), (None, None), {}, True, 0.0, id="one-value+eps"),
    pytest.param((4, 3), (None, None), {"weight": torch.ones(5)}, False, 1e-5, id="missing-in-eval+channels"),
    pytest.param((4, 3), (torch.zeros(5), None), {}, False, 1e-5, id="channels+missing-in-eval"),
    pytest.param((4, 3), (torch.zeros(3), None), {}, True, 0.0, id="one-buffer+eps"),
    pytest.param((4, 3), (torch.zeros(5), None), {}, True, 1e-5, id="one-buffer+channels"),
    pytest.param((4, 3), (torch.zeros(3, **_F64), None), {}, True, 1e-5, id="one-buffer+dtype"),
    pytest.param((4, 3), (torch.zeros(3), torch.ones(5)), {"weight": torch.ones(7)}, True, 1e-5,
                 id="running_var+weight-channels"),
    pytest.param((4, 3), (torch.zeros(3, **_F64), torch.ones(3, **_F64)), {"weight": torch.ones(7)}, True, 1e-5,
                 id="weight-channels+dtype"),
    pytest.param((4, 3), (torch.zeros(3, requires_grad=True, **_F64), torch.ones(3, **_F64)), {}, False, 1e-5,
                 id="requires-grad+dtype"),
]


@pytest.mark.parametrize(("shape", "buffers", "params", "training", "eps"), TWO_MISTAKES)
def test_with_two_mistakes_torchs_exception_comes_first(shape, buffers, params, training, eps) -> None:
    errors = []
    for fn in (bnlab.functional.batch_norm, F.batch_norm):
        with pytest.raises(Exception) as info:
            fn(torch.randn(shape), *buffers, **params, training=training, eps=eps)
        errors.append(info.value)
    ours, theirs = errors
    assert type(ours) is type(theirs), f"{type(ours).__name__}: {ours} / torch {type(theirs).__name__}: {theirs}"
    if "differentiable" not in str(theirs):  # torch's autograd words it its own way; the type is what matters
        assert str(ours).startswith(str(theirs).split(":")[0].split(" (")[0][:40]), (str(ours), str(theirs))


@pytest.mark.parametrize("training", [pytest.param(True, id="train"), pytest.param(False, id="eval")])
def test_an_empty_batch_is_not_checked_beyond_eps(backend: str, training: bool) -> None:
    # torch returns an empty output for an empty batch whatever the dtypes, channel counts or missing buffers.
    x = torch.randn(0, 3, 4).half()
    for buffers in ((torch.zeros(3, **_F64), torch.ones(3, **_F64)), (torch.zeros(5), torch.ones(5)), (None, None)):
        y = bnlab.functional.batch_norm(x, *buffers, torch.ones(3, **_F64), training=training, backend=backend)
        assert y.shape == x.shape and y.dtype == x.dtype
        assert F.batch_norm(x, *buffers, torch.ones(3, **_F64), training=training).shape == x.shape
    module = bnlab.BatchNorm1d(3, backend=backend).double().train(training)
    before = module.running_mean.clone()
    assert module(x).shape == x.shape  # a float16 batch into a float64 layer: no dtype check, as in torch
    assert torch.equal(module.running_mean, before)
    with pytest.raises(ValueError, match="eps must be positive"):
        bnlab.functional.batch_norm(x, None, None, training=True, eps=0.0, backend=backend)


def test_one_running_buffer_in_training_is_refused_by_every_backend(backend: str) -> None:
    x = torch.randn(8, 3) * 3 + 1
    for buffers in ((torch.zeros(3), None), (None, torch.ones(3))):
        given = next(b for b in buffers if b is not None)
        before = given.clone()
        with pytest.raises(ValueError, match="must either both be None or neither be None"):
            bnlab.functional.batch_norm(x, *buffers, training=True, backend=backend)
        assert torch.equal(given, before), "a refused call updates nothing"
        with pytest.raises(ValueError, match="must either both be None or neither be None"):
            F.batch_norm(x, *buffers, training=True)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _assert_unchanged(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    for key, value in module.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} changed in a call that raised"


@pytest.mark.parametrize("momentum", [pytest.param(0.1, id="momentum0.1"), pytest.param(None, id="cumulative")])
def test_an_explicit_backend_that_cannot_run_changes_nothing(monkeypatch: pytest.MonkeyPatch, momentum) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # triton then cannot run on CPU tensors
    module = bnlab.BatchNorm2d(3, momentum=momentum, backend="triton")
    before = _state(module)
    with pytest.raises(bnlab.BackendUnavailableError, match="TRITON_INTERPRET"):
        module(torch.randn(4, 3, 5, 5))
    _assert_unchanged(module, before)


def test_a_bad_environment_backend_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BNLAB_BACKEND", "no-such-backend")
    module = bnlab.nn.BatchNormAct2d(3, momentum=None, activation="leaky_relu", save="output")
    before = _state(module)
    with pytest.raises(ValueError, match=r"unknown batch-norm backend 'no-such-backend' \(from \$BNLAB_BACKEND\)"):
        module(torch.randn(4, 3, 5, 5))
    _assert_unchanged(module, before)


def test_fused_arguments_changed_after_construction_are_refused_before_counting(backend: str) -> None:
    module = bnlab.nn.BatchNormAct2d(3, activation="leaky_relu", save="output", backend=backend)
    module.activation = "relu"  # save="output" cannot invert relu
    before = _state(module)
    with pytest.raises(ValueError, match="invertible"):
        module(torch.randn(4, 3, 5, 5))
    _assert_unchanged(module, before)


@pytest.mark.parametrize("training", [pytest.param(True, id="train"), pytest.param(False, id="eval")])
def test_zero_channels_give_an_empty_output_on_every_backend(backend: str, training: bool) -> None:
    # torch's functional form returns an empty output; native used to raise from ATen after counting the batch.
    module = bnlab.BatchNorm1d(0, backend=backend).train(training)
    x = torch.randn(4, 0, 3, requires_grad=True)
    y = module(x)
    assert y.shape == (4, 0, 3)
    y.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    assert int(module.num_batches_tracked) == int(training)  # counted like any batch (as an empty one is)
