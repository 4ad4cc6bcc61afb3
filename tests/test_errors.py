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


def test_integer_input() -> None:
    with pytest.raises(RuntimeError, match=r"floating-point input.*int64.*input.float"):
        bnlab.functional.batch_norm(torch.ones(2, 3, dtype=torch.long), torch.zeros(3), torch.ones(3))


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
