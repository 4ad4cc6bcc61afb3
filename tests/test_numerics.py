"""Numerically robust statistics: large offsets must not cancel catastrophically (no E[x²] − E[x]²)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import bnlab
from bnlab.reference import algorithm1 as a1
from tolerances import max_error

# (offset, spread, shape): the mean dwarfs the spread, so a one-pass E[x²] − E[x]² in float32 loses everything.
HARD_INPUTS = [
    pytest.param(1e4, 1.0, (64, 8, 16, 16), id="1e4+N(0,1)"),
    pytest.param(1e6, 1e-2, (64, 8, 16, 16), id="1e6+N(0,1e-2)"),
    pytest.param(1e4, 1.0, (4096, 16), id="1d-1e4+N(0,1)"),
    # M = 15555 is a multiple of no tile size: a backend's last tile (or vector) is partly masked.
    pytest.param(1e4, 1.0, (61, 8, 15, 17), id="ragged-1e4+N(0,1)"),
]


@pytest.mark.parametrize(("offset", "spread", "shape"), HARD_INPUTS)
def test_statistics_error_no_worse_than_twice_torchs(backend: str, offset: float, spread: float,
                                                     shape: tuple[int, ...]) -> None:
    x64 = offset + spread * torch.randn(shape, dtype=torch.float64)
    x = x64.float()  # the float32 input both libraries see
    exact = a1.forward_train(x.double())
    rm, rv = torch.zeros(shape[1]), torch.ones(shape[1])
    ours_rm, ours_rv = rm.clone(), rv.clone()
    y = bnlab.functional.batch_norm(x, ours_rm, ours_rv, training=True, momentum=1.0, backend=backend)
    theirs_rm, theirs_rv = rm.clone(), rv.clone()
    y_torch = F.batch_norm(x, theirs_rm, theirs_rv, training=True, momentum=1.0)
    m = x.numel() // shape[1]
    exact_unbiased = exact.var * m / (m - 1)
    for what, ours, theirs, ref in (
        ("output", y, y_torch, exact.y),
        ("running_mean", ours_rm, theirs_rm, exact.mean),
        ("running_var", ours_rv, theirs_rv, exact_unbiased),
    ):
        ours_err, torch_err = max_error(ours, ref), max_error(theirs, ref)
        scale = ref.abs().max().item()
        assert ours_err <= 2 * torch_err + 1e-6 * scale, f"{what}: {ours_err:.3g} vs torch {torch_err:.3g}"
    # The variance itself must be right to a few float32 ulps of the mean, not off by orders of magnitude.
    rel_var_err = ((ours_rv.double() - exact_unbiased).abs() / exact_unbiased).max().item()
    assert rel_var_err < 0.05, f"relative variance error {rel_var_err:.3g}"


def test_naive_one_pass_formula_would_fail_this_test() -> None:
    # The test above can fail: E[x²] − E[x]² in float32 on 1e4 + N(0,1) is wrong by far more than 5%.
    x = 1e4 + torch.randn(64, 8, 16, 16)
    dims = (0, 2, 3)
    naive = (x.square().mean(dims) - x.mean(dims).square()).double()
    exact = x.double().var(dims, correction=0)
    assert ((naive - exact).abs() / exact).max().item() > 0.05
