"""bnlab.functional.batch_norm against torch.nn.functional.batch_norm, for every backend."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import bnlab
from bnlab.kernels import memory_format_of
from cases import SHAPES, SMALL_SHAPES, make_input
from conftest import require
from tolerances import assert_as_accurate_as_torch, assert_close_to_torch

MOMENTA = [pytest.param(0.0, id="momentum0"), pytest.param(0.1, id="momentum0.1"), pytest.param(1.0, id="momentum1")]
LOW_PRECISION = [pytest.param(torch.float16, id="float16"), pytest.param(torch.bfloat16, id="bfloat16")]


def _state(channels: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    return {
        "running_mean": torch.randn(channels, dtype=dtype),
        "running_var": torch.rand(channels, dtype=dtype) + 0.5,
        "weight": torch.randn(channels, dtype=dtype),
        "bias": torch.randn(channels, dtype=dtype),
    }


def _run(fn, x: torch.Tensor, state: dict[str, torch.Tensor], training: bool, affine: bool,
         momentum: float, grad_y: torch.Tensor, **kwargs: object):  # type: ignore[no-untyped-def]
    """Call a batch_norm on copies of everything; return the output, the input/parameter grads and the buffers."""
    s = {k: v.clone() for k, v in state.items()}
    x = x.detach().clone().requires_grad_()
    w = s["weight"].requires_grad_() if affine else None
    b = s["bias"].requires_grad_() if affine else None
    y = fn(x, s["running_mean"], s["running_var"], w, b, training, momentum, 1e-5, **kwargs)
    y.backward(grad_y)
    return y.detach(), x.grad, (w.grad if affine else None), (b.grad if affine else None), s


@pytest.mark.parametrize(("shape", "layout"), SHAPES)
@pytest.mark.parametrize("momentum", MOMENTA)
@pytest.mark.parametrize("affine", [pytest.param(True, id="affine"), pytest.param(False, id="no-affine")])
def test_training_matches_torch(backend: str, shape: tuple[int, ...], layout: str, momentum: float,
                                affine: bool) -> None:
    x = make_input(shape, layout)
    state = _state(shape[1])
    grad_y = torch.randn(shape)
    ours = _run(bnlab.functional.batch_norm, x, state, True, affine, momentum, grad_y, backend=backend)
    theirs = _run(F.batch_norm, x, state, True, affine, momentum, grad_y)
    exact = _run(F.batch_norm, x.double(), {k: v.double() for k, v in state.items()}, True, affine, momentum,
                 grad_y.double())
    names = ("y", "dx", "dweight", "dbias")
    for name, o, t, e in zip(names, ours[:4], theirs[:4], exact[:4], strict=True):
        if o is None:
            assert t is None
            continue
        assert_as_accurate_as_torch(o, t, e, torch.float32, name)
    if layout == "channels_last":
        assert memory_format_of(ours[0]) == memory_format_of(x)
        assert memory_format_of(ours[1]) == memory_format_of(x), "the input gradient keeps the layout too"
    for key in ("running_mean", "running_var"):
        assert_close_to_torch(ours[4][key], theirs[4][key], torch.float32, key)


@pytest.mark.parametrize(("shape", "layout"), SHAPES)
@pytest.mark.parametrize("affine", [pytest.param(True, id="affine"), pytest.param(False, id="no-affine")])
def test_eval_matches_torch(backend: str, shape: tuple[int, ...], layout: str, affine: bool) -> None:
    x = make_input(shape, layout)
    state = _state(shape[1])
    grad_y = torch.randn(shape)
    ours = _run(bnlab.functional.batch_norm, x, state, False, affine, 0.1, grad_y, backend=backend)
    theirs = _run(F.batch_norm, x, state, False, affine, 0.1, grad_y)
    exact = _run(F.batch_norm, x.double(), {k: v.double() for k, v in state.items()}, False, affine, 0.1,
                 grad_y.double())
    for name, o, t, e in zip(("y", "dx", "dweight", "dbias"), ours[:4], theirs[:4], exact[:4], strict=True):
        if o is not None:
            assert_as_accurate_as_torch(o, t, e, torch.float32, name)
    for key in ("running_mean", "running_var"):
        assert torch.equal(ours[4][key], state[key]), "eval mode must not touch running statistics"


@pytest.mark.parametrize(("shape", "layout"), SMALL_SHAPES)
@pytest.mark.parametrize("training", [pytest.param(True, id="train"), pytest.param(False, id="eval")])
def test_float64_matches_torch(backend: str, shape: tuple[int, ...], layout: str, training: bool) -> None:
    require(backend, torch.float64)
    x = make_input(shape, layout, torch.float64)
    state = _state(shape[1], torch.float64)
    grad_y = torch.randn(shape, dtype=torch.float64)
    ours = _run(bnlab.functional.batch_norm, x, state, training, True, 0.1, grad_y, backend=backend)
    theirs = _run(F.batch_norm, x, state, training, True, 0.1, grad_y)
    for o, t in zip(ours[:4], theirs[:4], strict=True):
        assert_close_to_torch(o, t, torch.float64)
    for key in ("running_mean", "running_var"):
        assert_close_to_torch(ours[4][key], theirs[4][key], torch.float64, key)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize(("shape", "layout"), SMALL_SHAPES)
@pytest.mark.parametrize("training", [pytest.param(True, id="train"), pytest.param(False, id="eval")])
def test_low_precision_input_with_float32_parameters(backend: str, dtype: torch.dtype, shape: tuple[int, ...],
                                                     layout: str, training: bool) -> None:
    x = make_input(shape, layout, dtype)
    state = _state(shape[1])  # float32 parameters and buffers: statistics accumulate in float32
    grad_y = torch.randn(shape).to(dtype)
    ours = _run(bnlab.functional.batch_norm, x, state, training, True, 0.1, grad_y, backend=backend)
    theirs = _run(F.batch_norm, x, state, training, True, 0.1, grad_y)
    exact = _run(F.batch_norm, x.double(), {k: v.double() for k, v in state.items()}, training, True, 0.1,
                 grad_y.double())
    assert ours[0].dtype == dtype and ours[1].dtype == dtype
    assert ours[2].dtype == torch.float32 and ours[4]["running_mean"].dtype == torch.float32
    assert_as_accurate_as_torch(ours[0], theirs[0], exact[0], dtype, "y")
    assert_as_accurate_as_torch(ours[1], theirs[1], exact[1], dtype, "dx")
    for name, o, t, e in zip(("dweight", "dbias"), ours[2:4], theirs[2:4], exact[2:4], strict=True):
        assert_as_accurate_as_torch(o, t, e, dtype, name)
    for key in ("running_mean", "running_var"):
        assert_close_to_torch(ours[4][key], theirs[4][key], torch.float32, key)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_low_precision_everywhere(backend: str, dtype: torch.dtype) -> None:
    # A module converted with .half(): parameters and buffers in the input's dtype, as torch allows.
    x = make_input((6, 4, 3, 3), "contiguous", dtype)
    state = _state(4, dtype)
    grad_y = torch.randn(x.shape).to(dtype)
    ours = _run(bnlab.functional.batch_norm, x, state, True, True, 0.1, grad_y, backend=backend)
    theirs = _run(F.batch_norm, x, state, True, True, 0.1, grad_y)
    exact = _run(F.batch_norm, x.double(), {k: v.double() for k, v in state.items()}, True, True, 0.1,
                 grad_y.double())
    assert ours[2].dtype == dtype and ours[4]["running_var"].dtype == dtype
    for name, o, t, e in zip(("y", "dx", "dweight", "dbias"), ours[:4], theirs[:4], exact[:4], strict=True):
        assert_as_accurate_as_torch(o, t, e, dtype, name)
    assert_close_to_torch(ours[4]["running_var"], theirs[4]["running_var"], dtype)


@pytest.mark.parametrize("training", [pytest.param(True, id="train"), pytest.param(False, id="eval")])
def test_empty_batch_behaves_as_in_torch(backend: str, training: bool) -> None:
    x = torch.randn(0, 3, 4, 4)
    state = _state(3)
    grad_y = torch.randn(0, 3, 4, 4)
    ours = _run(bnlab.functional.batch_norm, x, state, training, True, 0.1, grad_y, backend=backend)
    theirs = _run(F.batch_norm, x, state, training, True, 0.1, grad_y)
    assert ours[0].shape == (0, 3, 4, 4) and ours[1].shape == (0, 3, 4, 4)
    assert torch.equal(ours[2], theirs[2]) and torch.equal(ours[3], theirs[3])  # zero gradients
    for key in ("running_mean", "running_var"):
        assert torch.equal(ours[4][key], state[key]), "an empty batch has no statistics to average in"


def test_training_without_running_statistics(backend: str) -> None:
    x = make_input((8, 3, 5), "contiguous")
    y = bnlab.functional.batch_norm(x, None, None, training=True, backend=backend)
    torch.testing.assert_close(y, F.batch_norm(x, None, None, training=True), rtol=1e-5, atol=1e-5)


def test_defaults_are_torchs() -> None:
    import inspect

    ours = inspect.signature(bnlab.functional.batch_norm).parameters
    theirs = inspect.signature(F.batch_norm).parameters
    for name, p in theirs.items():
        assert ours[name].default == p.default, name
    assert ours["backend"].kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize("momentum", [pytest.param(None, id="None"), pytest.param("0.1", id="string")])
def test_momentum_must_be_a_number(momentum: object) -> None:
    with pytest.raises(TypeError, match="momentum must be a number"):
        bnlab.functional.batch_norm(torch.randn(4, 3), None, None, training=True, momentum=momentum)  # type: ignore[arg-type]
