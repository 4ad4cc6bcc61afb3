"""The fused calls of the contract (a residual, an activation, save="input"/"output"): the reference's hand-written
backward against autograd, and every backend that runs on this CPU (``triton`` in tests/kernels/test_triton.py)
against the reference."""

from __future__ import annotations

import pytest
import torch

from bnlab.kernels import available_backends, get_backend
from bnlab.reference.fused import ACTIVATIONS, activate
from cases import make_input, run_fused, step_tensors
from tolerances import KERNEL_FLOOR, max_error

REFERENCE = get_backend("reference")

FUSED_CASES = [
    pytest.param((6, 4), "contiguous", id="1d-N6-C4"),
    pytest.param((3, 5, 7), "contiguous", id="1d-NCL"),
    pytest.param((4, 3, 5, 6), "contiguous", id="2d-NCHW"),
    pytest.param((4, 6, 5, 3), "channels_last", id="2d-channels_last"),
    pytest.param((2, 3, 2, 3, 4), "channels_last", id="3d-channels_last"),
]
MODES = [  # (activation, save, residual): each activation with and without a residual; every invertible one saved
    pytest.param("identity", "input", False, id="identity"),
    pytest.param("relu", "input", True, id="relu+res"),
    pytest.param("leaky_relu", "input", False, id="leaky"),
    pytest.param("silu", "input", True, id="silu+res"),
    pytest.param("elu", "input", False, id="elu"),
    pytest.param("identity", "output", True, id="identity-out+res"),
    pytest.param("leaky_relu", "output", True, id="leaky-out+res"),
    pytest.param("elu", "output", False, id="elu-out"),
]
FUSED_BACKENDS = [n for n in available_backends("cpu") if n not in ("reference", "triton")]


def autograd_reference(x, residual, weight, bias, grad_y, activation, slope=0.1):
    """Float64 autograd through torch's own ops: the yardstick for the hand-written backward."""
    leaves = [t.double().detach().requires_grad_() if t is not None else None for t in (x, residual, weight, bias)]
    xd, rd, wd, bd = leaves
    z = torch.nn.functional.batch_norm(xd, None, None, wd, bd, True, 0.0, 1e-5)
    y = activate(z if rd is None else z + rd, activation, slope)
    y.backward(grad_y.double())
    return y.detach(), xd.grad, None if rd is None else rd.grad, wd.grad, bd.grad


def _inputs(shape, layout, residual, dtype=torch.float32):
    x = make_input(shape, layout, dtype)
    r = make_input(shape, layout, dtype) if residual else None
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    # γ of both signs, kept away from zero (save="output" divides by it; γ = 0 has its own test).
    w = (torch.rand(shape[1], dtype=acc) + 0.5) * torch.where(torch.arange(shape[1]) % 2 == 0, 1.0, -1.0).to(acc)
    b = torch.randn(shape[1], dtype=acc)
    return x, r, w, b, make_input(shape, "contiguous", dtype)


@pytest.mark.parametrize(("shape", "layout"), FUSED_CASES)
@pytest.mark.parametrize(("activation", "save", "residual"), MODES)
def test_reference_backward_matches_autograd(shape, layout, activation, save, residual) -> None:
    x, r, w, b, g = _inputs(shape, layout, residual, torch.float64)
    out, grads = run_fused(REFERENCE, x, r, w, b, g, activation, save)
    y, dx, dr, dw, db = autograd_reference(x, r, w, b, g, activation)
    for what, ours, exact in (("y", out.y, y), ("dx", grads.dx, dx), ("dw", grads.dweight, dw),
                              ("db", grads.dbias, db), ("dr", grads.dresidual, dr)):
        if exact is not None:
            assert max_error(ours, exact) < 1e-9, what


@pytest.mark.usefixtures("nan_fill")
@pytest.mark.parametrize("name", FUSED_BACKENDS)
@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, id="float32"),
                                   pytest.param(torch.bfloat16, id="bfloat16")])
@pytest.mark.parametrize(("shape", "layout"), FUSED_CASES)
@pytest.mark.parametrize(("activation", "save", "residual"), MODES)
def test_fused_backend_matches_reference(name, dtype, shape, layout, activation, save, residual) -> None:
    x, r, w, b, g = _inputs(shape, layout, residual, dtype)
    impl = get_backend(name)
    out, grads = run_fused(impl, x, r, w, b, g, activation, save)
    y, dx, dr, dw, db = autograd_reference(x, r, w, b, g, activation)
    assert out.y.dtype == dtype and out.y.stride() == x.stride(), "dtype and memory format are kept"
    # Low precision: compare to what the float64 math gives from the rounded forward (the reference at dtype).
    ref_out, ref_grads = run_fused(REFERENCE, x, r, w, b, g, activation, save)
    for what, ours, at_dtype, exact in (("y", out.y, ref_out.y, y), ("dx", grads.dx, ref_grads.dx, dx),
                                        ("dw", grads.dweight, ref_grads.dweight, dw),
                                        ("db", grads.dbias, ref_grads.dbias, db),
                                        ("dr", grads.dresidual, ref_grads.dresidual, dr)):
        if exact is None:
            continue
        scale = max(1.0, exact.abs().max().item())
        bound = 2 * max_error(at_dtype, exact) + KERNEL_FLOOR[dtype] * scale
        assert max_error(ours, exact) <= bound, f"{what}: {max_error(ours, exact):.3g} > {bound:.3g}"


@pytest.mark.parametrize("name", FUSED_BACKENDS)
def test_fused_backend_is_deterministic(name) -> None:
    x, r, w, b, g = _inputs((8, 16, 20, 20), "channels_last", True)
    first = run_fused(get_backend(name), x, r, w, b, g, "leaky_relu", "input")
    second = run_fused(get_backend(name), x, r, w, b, g, "leaky_relu", "input")
    for a, c in zip(step_tensors(first), step_tensors(second), strict=True):
        assert torch.equal(a, c)


def test_activation_names_are_the_kernel_codes() -> None:
    assert ACTIVATIONS == ("identity", "relu", "leaky_relu", "silu", "elu")  # bnlab_cpu.cpp and kernels.py agree
