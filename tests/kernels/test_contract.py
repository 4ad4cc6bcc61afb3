"""Every backend's three contract calls, judged against the float64 reference and against PyTorch."""

from __future__ import annotations

import pytest
import torch

from bnlab.kernels import get_backend, memory_format_of
from bnlab.reference import algorithm1 as a1
from bnlab.reference import algorithm2 as a2
from cases import SHAPES, make_input
from conftest import cpu_backend_ids, require
from tolerances import assert_as_accurate_as_torch

BACKENDS = [name for name in cpu_backend_ids() if ":" not in name]
DTYPES = [
    pytest.param(torch.float32, id="float32"),
    pytest.param(torch.float64, id="float64"),
    pytest.param(torch.bfloat16, id="bfloat16"),
    pytest.param(torch.float16, id="float16"),
]


def _params(channels: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    acc = a1.accumulation_dtype(dtype)
    return torch.randn(channels, dtype=acc), torch.randn(channels, dtype=acc)


@pytest.mark.usefixtures("nan_fill")
@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "layout"), SHAPES)
def test_forward_train(name: str, dtype: torch.dtype, shape: tuple[int, ...], layout: str) -> None:
    require(name, dtype)
    x = make_input(shape, layout, dtype)
    weight, bias = _params(shape[1], dtype)
    out = get_backend(name).forward_train(x, weight, bias, 1e-5)
    exact = a1.forward_train(x.double(), weight.double(), bias.double(), 1e-5)
    theirs = torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, 1e-5)
    assert out.y.dtype == dtype and out.y.shape == x.shape
    # The memory format memory_format_of gives x: channels_last kept; any other strides come out contiguous.
    assert out.y.is_contiguous(memory_format=memory_format_of(x)), "outputs take the input's memory format"
    if layout == "channels_last":
        assert memory_format_of(out.y) == memory_format_of(x), "channels_last must be preserved"
    acc = a1.accumulation_dtype(dtype)
    assert out.mean.dtype == out.invstd.dtype == out.var.dtype == acc
    assert_as_accurate_as_torch(out.y, theirs[0], exact.y, dtype, "y")
    assert_as_accurate_as_torch(out.mean, theirs[1], exact.mean, torch.float32 if acc != torch.float64 else acc)
    assert_as_accurate_as_torch(out.invstd, theirs[2], exact.invstd, torch.float32 if acc != torch.float64 else acc)
    torch.testing.assert_close(out.var.double(), exact.var, rtol=1e-5 if acc != torch.float64 else 1e-12, atol=1e-6)


@pytest.mark.usefixtures("nan_fill")
@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "layout"), SHAPES)
@pytest.mark.parametrize("affine", [pytest.param(True, id="affine"), pytest.param(False, id="no-weight")])
def test_backward(name: str, dtype: torch.dtype, shape: tuple[int, ...], layout: str, affine: bool) -> None:
    require(name, dtype)
    x = make_input(shape, layout, dtype)
    weight = _params(shape[1], dtype)[0] if affine else None
    grad_y = make_input(shape, "contiguous", dtype)
    backend = get_backend(name)
    stats = backend.forward_train(x, weight, None, 1e-5)
    got = backend.backward(grad_y, x, stats.mean, stats.invstd, weight)
    exact = a1.backward_paper(grad_y.double(), x.double(), None if weight is None else weight.double())
    theirs = torch.ops.aten.native_batch_norm_backward(
        grad_y, x, weight, None, None, stats.mean, stats.invstd, True, 1e-5, [True, True, True])
    assert got.dx.dtype == dtype and got.dx.shape == x.shape
    if layout == "channels_last":
        assert memory_format_of(got.dx) == memory_format_of(x)
    acc = a1.accumulation_dtype(dtype)
    assert got.dweight.dtype == got.dbias.dtype == acc
    assert_as_accurate_as_torch(got.dx, theirs[0], exact.dx, dtype, "dx")
    stat_dtype = torch.float64 if acc == torch.float64 else torch.float32
    # Parameter gradients are sums over m values: scale the floor with them.
    assert_as_accurate_as_torch(got.dweight, theirs[1].to(acc), exact.dgamma, stat_dtype, "dweight")
    assert_as_accurate_as_torch(got.dbias, theirs[2].to(acc), exact.dbeta, stat_dtype, "dbias")


@pytest.mark.usefixtures("nan_fill")
@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "layout"), SHAPES)
def test_forward_eval(name: str, dtype: torch.dtype, shape: tuple[int, ...], layout: str) -> None:
    require(name, dtype)
    x = make_input(shape, layout, dtype)
    acc = a1.accumulation_dtype(dtype)
    weight, bias = _params(shape[1], dtype)
    mean, var = torch.randn(shape[1], dtype=acc), torch.rand(shape[1], dtype=acc) + 0.2
    y = get_backend(name).forward_eval(x, mean, var, weight, bias, 1e-5)
    exact = a2.forward_inference(x.double(), mean.double(), var.double(), weight.double(), bias.double(), 1e-5)
    theirs = torch.native_batch_norm(x, weight, bias, mean, var, False, 0.0, 1e-5)[0]
    assert y.dtype == dtype
    if layout == "channels_last":
        assert memory_format_of(y) == memory_format_of(x)
    assert_as_accurate_as_torch(y, theirs, exact, dtype, "eval y")


@pytest.mark.parametrize("name", BACKENDS)
def test_inputs_are_not_modified(name: str) -> None:
    x = make_input((4, 3, 5, 5), "channels_last")
    weight, bias = _params(3, torch.float32)
    before = [t.clone() for t in (x, weight, bias)]
    backend = get_backend(name)
    out = backend.forward_train(x, weight, bias, 1e-5)
    grad_y = torch.randn_like(x)
    grad_before = grad_y.clone()
    backend.backward(grad_y, x, out.mean, out.invstd, weight)
    backend.forward_eval(x, out.mean, out.var, weight, bias, 1e-5)
    for t, b in zip((x, weight, bias, grad_y), (*before, grad_before), strict=True):
        assert torch.equal(t, b)
