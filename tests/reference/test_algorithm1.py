"""Algorithm 1 as written: forward against hand-computed float64 values, the three backwards against autograd."""

from __future__ import annotations

import pytest
import torch

from bnlab.reference import algorithm1 as a1
from cases import SHAPES, make_input


def test_forward_on_a_batch_computed_by_hand() -> None:
    # Channel 0 holds 1, 2, 3, 4: μ = 2.5, σ² = 1.25 (biased); channel 1 is constant 7: σ² = 0, x̂ = 0.
    x = torch.tensor([[1.0, 7.0], [2.0, 7.0], [3.0, 7.0], [4.0, 7.0]], dtype=torch.float64)
    gamma = torch.tensor([2.0, 3.0], dtype=torch.float64)
    beta = torch.tensor([0.5, -1.0], dtype=torch.float64)
    r = a1.forward_train(x, gamma, beta, eps=0.0 + 1e-5)
    assert r.mean.tolist() == [2.5, 7.0]
    assert r.var.tolist() == [1.25, 0.0]
    expected0 = [(v - 2.5) / (1.25 + 1e-5) ** 0.5 * 2.0 + 0.5 for v in (1.0, 2.0, 3.0, 4.0)]
    torch.testing.assert_close(r.y[:, 0], torch.tensor(expected0, dtype=torch.float64), rtol=1e-14, atol=0)
    assert r.y[:, 1].tolist() == [-1.0] * 4  # x̂ = 0 so y = β


@pytest.mark.parametrize(("shape", "layout"), SHAPES)
def test_forward_statistics_are_per_channel_and_biased(shape: tuple[int, ...], layout: str) -> None:
    x = make_input(shape, layout, torch.float64)
    r = a1.forward_train(x)
    flat = x.transpose(0, 1).reshape(shape[1], -1)  # (C, m)
    torch.testing.assert_close(r.mean, flat.mean(1))
    torch.testing.assert_close(r.var, flat.var(1, correction=0))
    torch.testing.assert_close(r.invstd, (flat.var(1, correction=0) + 1e-5).rsqrt())
    # x̂ has zero mean and (almost) unit variance per channel.
    xhat = r.xhat.transpose(0, 1).reshape(shape[1], -1)
    torch.testing.assert_close(xhat.mean(1), torch.zeros(shape[1], dtype=torch.float64), atol=1e-12, rtol=0)


@pytest.mark.parametrize(("shape", "layout"), SHAPES)
@pytest.mark.parametrize("affine", [pytest.param(True, id="affine"), pytest.param(False, id="no-affine")])
def test_three_backward_forms_agree_with_autograd(shape: tuple[int, ...], layout: str, affine: bool) -> None:
    x = make_input(shape, layout, torch.float64).requires_grad_()
    gamma = torch.randn(shape[1], dtype=torch.float64, requires_grad=True) if affine else None
    beta = torch.randn(shape[1], dtype=torch.float64, requires_grad=True) if affine else None
    r = a1.forward_train(x, gamma, beta)
    dy = torch.randn_like(r.y)
    inputs = [x] + ([gamma, beta] if affine else [])
    auto = torch.autograd.grad(r.y, inputs, dy)  # autograd is the judge of the hand-written formulas

    paper = a1.backward_paper(dy, x.detach(), gamma)
    darknet = a1.backward_darknet(dy, x.detach(), gamma)
    compact = a1.backward_compact(dy, x.detach(), r.mean.detach(), r.invstd.detach(), gamma)
    for name, g in (("paper", paper), ("darknet", darknet), ("compact", compact)):
        torch.testing.assert_close(g.dx, auto[0], rtol=1e-9, atol=1e-11, msg=f"{name} dx")
        if affine:
            torch.testing.assert_close(g.dgamma, auto[1], rtol=1e-9, atol=1e-11, msg=f"{name} dgamma")
            torch.testing.assert_close(g.dbeta, auto[2], rtol=1e-9, atol=1e-11, msg=f"{name} dbeta")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_input_gives_float32_statistics(dtype: torch.dtype) -> None:
    x = make_input((8, 4, 5), "contiguous", dtype)
    r = a1.forward_train(x)
    assert r.y.dtype == dtype
    assert r.mean.dtype == r.var.dtype == r.invstd.dtype == torch.float32
    exact = a1.forward_train(x.double())
    torch.testing.assert_close(r.mean.double(), exact.mean, rtol=1e-6, atol=1e-6)
    g = a1.backward_paper(torch.ones_like(x), x, torch.ones(4))
    assert g.dx.dtype == dtype and g.dgamma.dtype == torch.float32


def test_gradient_of_constant_upstream_is_zero() -> None:
    # Σ_i ∂x̂_j/∂x_i... : a constant ∂ℓ/∂y is absorbed by β, so ∂ℓ/∂x must vanish.
    x = make_input((6, 3, 4), "contiguous", torch.float64)
    for g in (a1.backward_paper(torch.ones_like(x), x), a1.backward_darknet(torch.ones_like(x), x)):
        assert g.dx.abs().max().item() < 1e-12
