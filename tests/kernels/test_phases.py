"""The phase-level contract: every backend's stats, elemt, backward_reduce and backward_elemt against the float64
reference, the statistics of two parts merging into those of the whole (an empty part too), and the two backward
phases run the way synchronized batch norm runs them (sums of several parts, the global count)."""

from __future__ import annotations

import pytest
import torch

from bnlab._stats import Moments, batch_moments, merge_moments
from bnlab.kernels import GradSums, get_backend
from bnlab.reference import fused as ref
from cases import SHAPES, make_input
from conftest import cpu_backend_ids, require
from tolerances import FLOOR, KERNEL_FLOOR, max_error

BACKENDS = [name for name in cpu_backend_ids() if ":" not in name]
DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float64, id="float64"),
          pytest.param(torch.bfloat16, id="bfloat16")]
ACTS = [  # (activation, residual, from_output)
    pytest.param("identity", False, False, id="plain"),
    pytest.param("relu", True, False, id="relu+res"),
    pytest.param("silu", False, False, id="silu"),
    pytest.param("leaky_relu", True, True, id="leaky-from-output+res"),
    pytest.param("elu", False, True, id="elu-from-output"),
]


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _stat_floor(dtype: torch.dtype) -> float:
    # Statistics and sums are accumulated in float32 (float64): judged at that precision, whatever the input.
    return KERNEL_FLOOR[_acc(dtype)]


def _assert_moments(got: Moments, exact: Moments, dtype: torch.dtype, what: str = "") -> None:
    acc = _acc(dtype)
    assert got.count.dtype == got.mean.dtype == got.m2.dtype == acc, what
    torch.testing.assert_close(got.count.double(), exact.count, rtol=0, atol=0, msg=f"{what} count")
    scale = max(1.0, exact.mean.abs().max().item()) if exact.mean.numel() else 1.0
    assert max_error(got.mean, exact.mean) <= _stat_floor(dtype) * scale, f"{what} mean"
    m2_scale = max(1.0, exact.m2.abs().max().item()) if exact.m2.numel() else 1.0
    assert max_error(got.m2, exact.m2) <= _stat_floor(dtype) * m2_scale * 4, f"{what} m2"


@pytest.mark.usefixtures("nan_fill")
@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "layout"), SHAPES)
def test_stats_phase(name: str, dtype: torch.dtype, shape: tuple[int, ...], layout: str) -> None:
    require(name, dtype)
    x = make_input(shape, layout, dtype)
    _assert_moments(get_backend(name).stats(x), batch_moments(x, dtype=torch.float64), dtype)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize(("split", "layout"), [
    pytest.param(3, "contiguous", id="halves"),
    pytest.param(0, "contiguous", id="empty-first"),
    pytest.param(7, "channels_last", id="empty-second"),
    pytest.param(1, "channels_last", id="one-sample-first"),
])
def test_statistics_of_two_parts_merge_into_those_of_the_whole(name: str, split: int, layout: str) -> None:
    require(name, torch.float32)
    x = make_input((7, 5, 4, 3), layout) * 3 + 10  # a mean that dwarfs the spread
    backend = get_backend(name)
    first, second = backend.stats(x[:split]), backend.stats(x[split:])
    exact = batch_moments(x, dtype=torch.float64)
    for merged in (merge_moments(first, second), merge_moments(second, first)):  # either order
        _assert_moments(merged, exact, torch.float32, f"split at {split}")
    empty = backend.stats(x[:0])
    assert empty.count.abs().sum() == empty.mean.abs().sum() == empty.m2.abs().sum() == 0
    whole = backend.stats(x)
    for merged in (merge_moments(empty, whole), merge_moments(whole, empty)):  # the empty part is the identity
        for a, b in zip(merged, whole, strict=True):
            assert torch.equal(a, b)


MASKED = [
    pytest.param((6, 4, 9), "some", id="some-masked"),
    pytest.param((3, 2, 5), "none", id="all-valid"),
    pytest.param((4, 3, 6), "all", id="all-masked"),
    pytest.param((5, 3, 1), "some", id="L1"),
]


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize(("shape", "masked"), MASKED)
def test_masked_statistics(name: str, shape: tuple[int, ...], masked: str) -> None:
    require(name, torch.float32)
    x = make_input(shape, "contiguous") * 2 + 5
    if masked == "none":
        mask = torch.ones(shape[0], shape[2], dtype=torch.bool)
    elif masked == "all":
        mask = torch.zeros(shape[0], shape[2], dtype=torch.bool)
    else:
        mask = torch.rand(shape[0], shape[2]) > 0.4
        mask[0, 0] = True
    got = get_backend(name).stats(x, mask)
    # The same values without the masked ones: (N, C, L) → (C, values) → the statistics of what is left.
    kept = x.permute(1, 0, 2)[:, mask].double()  # (C, valid)
    count = torch.full((shape[1],), float(mask.sum()), dtype=torch.float64)
    mean = kept.mean(1) if kept.shape[1] else torch.zeros(shape[1], dtype=torch.float64)
    m2 = (kept - mean[:, None]).square().sum(1)
    _assert_moments(got, Moments(count, mean, m2), torch.float32, masked)
    assert torch.isfinite(got.mean).all() and torch.isfinite(got.m2).all()


def test_a_mask_of_the_wrong_shape_is_refused() -> None:
    x = torch.randn(4, 3, 5)
    for name in ("reference", "native"):
        with pytest.raises(ValueError, match=r"mask must be a boolean"):
            get_backend(name).stats(x, torch.ones(4, 6, dtype=torch.bool))


def _params(channels: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    acc = _acc(dtype)
    # γ of both signs, kept away from 0 (from_output divides by it)
    weight = (torch.rand(channels, dtype=acc) + 0.5) * torch.where(torch.arange(channels) % 2 == 0, 1.0, -1.0).to(acc)
    return weight, torch.randn(channels, dtype=acc)


def _elemt_inputs(shape: tuple[int, ...], layout: str, dtype: torch.dtype, residual: bool):
    x = make_input(shape, layout, dtype)
    r = make_input(shape, layout, dtype) if residual else None
    weight, bias = _params(shape[1], dtype)
    acc = _acc(dtype)
    mean, invstd = torch.randn(shape[1], dtype=acc), torch.rand(shape[1], dtype=acc) + 0.5
    return x, r, weight, bias, mean, invstd


@pytest.mark.usefixtures("nan_fill")
@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "layout"), SHAPES[3:8])
@pytest.mark.parametrize(("activation", "residual", "from_output"), ACTS)
def test_elemt_phase(name: str, dtype: torch.dtype, shape: tuple[int, ...], layout: str, activation: str,
                     residual: bool, from_output: bool) -> None:
    require(name, dtype)
    x, r, w, b, mean, invstd = _elemt_inputs(shape, layout, dtype, residual)
    y = get_backend(name).elemt(x, mean, invstd, w, b, r, activation, 0.1)
    exact = ref.normalize(x, mean, invstd, w, b, r, activation, 0.1)[0]
    assert y.dtype == dtype and y.shape == x.shape
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    at_dtype = exact.to(dtype)  # the float64 result rounded once: the best a kernel can give
    scale = max(1.0, exact.abs().max().item())
    assert max_error(y, exact) <= 2 * max_error(at_dtype, exact) + KERNEL_FLOOR[dtype] * scale


def _backward_inputs(shape: tuple[int, ...], layout: str, dtype: torch.dtype, residual: bool, activation: str,
                     from_output: bool):
    x = make_input(shape, layout, dtype)
    r = make_input(shape, layout, dtype) if residual else None
    weight, bias = _params(shape[1], dtype)
    g = make_input(shape, "contiguous", dtype)
    reference = get_backend("reference")
    out = reference.forward_train(x, weight, bias, 1e-5, r, activation, 0.1)
    saved = out.y if from_output else x
    return saved, r, weight, bias, g, out.mean, out.invstd


@pytest.mark.usefixtures("nan_fill")
@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "layout"), SHAPES[3:8])
@pytest.mark.parametrize(("activation", "residual", "from_output"), ACTS)
def test_backward_phases(name: str, dtype: torch.dtype, shape: tuple[int, ...], layout: str, activation: str,
                         residual: bool, from_output: bool) -> None:
    require(name, dtype)
    if from_output and dtype == torch.bfloat16:
        pytest.skip("from_output recovers x̂ from y rounded to 8 bits; checked in float32 and float64")
    saved, r, w, b, g, mean, invstd = _backward_inputs(shape, layout, dtype, residual, activation, from_output)
    backend = get_backend(name)
    sums = backend.backward_reduce(g, saved, mean, invstd, w, b, r, activation, 0.1, from_output)
    dz, xhat = ref.grad_and_xhat(g, saved, mean, invstd, w, b, r, activation, 0.1, from_output)
    exact_sums = ref.reduce_grads(dz, xhat)
    acc = _acc(dtype)
    for what, got, exact in zip(("sum_dz", "sum_dz_xhat"), sums, exact_sums, strict=True):
        assert got.dtype == acc
        scale = max(1.0, exact.abs().max().item())
        # Sums over m values: the floor grows with √m, as in the contract tests.
        bound = FLOOR[acc] * scale * 4 * (saved.numel() / saved.shape[1]) ** 0.5
        assert max_error(got, exact) <= bound, what
    count = saved.numel() // saved.shape[1]
    dx, dres = backend.backward_elemt(g, saved, mean, invstd, w, b, sums, count, r, activation, 0.1, from_output,
                                      residual)
    exact_dx = ref.input_grad(dz, xhat, invstd, w, *exact_sums, count)
    assert dx.dtype == dtype and dx.shape == saved.shape
    if layout == "channels_last":
        assert dx.stride() == saved.stride(), "dx takes the saved tensor's memory format"
    scale = max(1.0, exact_dx.abs().max().item())
    assert max_error(dx, exact_dx) <= 2 * max_error(exact_dx.to(dtype), exact_dx) + KERNEL_FLOOR[dtype] * scale
    if residual:
        assert dres is not None and max_error(dres, dz) <= 2 * max_error(dz.to(dtype), dz) + KERNEL_FLOOR[dtype]
    else:
        assert dres is None


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize(("activation", "residual", "from_output"), ACTS)
def test_phases_compose_as_synchronized_batch_norm_uses_them(name: str, activation: str, residual: bool,
                                                              from_output: bool) -> None:
    # Two "processes" each hold half a batch: moments merged, the two sums added, each backward_elemt given the
    # global count. The result must be the one-pass training step on the whole batch (in float64, or float32 with
    # float32's tolerance where the backend has no float64).
    dtype = torch.float64 if get_backend(name).unavailable_reason(torch.device("cpu"), torch.float64) is None \
        else torch.float32
    tol = {"rtol": 1e-9, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}
    backend = get_backend(name)
    x = make_input((6, 4, 5, 5), "contiguous", dtype)
    r = make_input((6, 4, 5, 5), "contiguous", dtype) if residual else None
    w, b = _params(4, dtype)
    g = make_input((6, 4, 5, 5), "contiguous", dtype)
    whole = backend.forward_train(x, w, b, 1e-5, r, activation, 0.1)
    grads = backend.backward(g, whole.y if from_output else x, whole.mean, whole.invstd, w, b, r, activation, 0.1,
                             from_output, residual)
    parts = [slice(0, 2), slice(2, 6)]
    moments = merge_moments(*(backend.stats(x[p]) for p in parts))
    mean, var = moments.mean, moments.m2 / moments.count
    invstd = torch.rsqrt(var + 1e-5)
    ys = [backend.elemt(x[p], mean, invstd, w, b, None if r is None else r[p], activation, 0.1) for p in parts]
    torch.testing.assert_close(torch.cat(ys), whole.y, **tol)
    saved = [(y if from_output else x[p]) for y, p in zip(ys, parts, strict=True)]
    reduced = [backend.backward_reduce(g[p], s, mean, invstd, w, b, None if r is None else r[p], activation, 0.1,
                                       from_output) for s, p in zip(saved, parts, strict=True)]
    total = GradSums(*(a + c for a, c in zip(*reduced, strict=True)))  # the all-reduce
    torch.testing.assert_close(total.sum_dz, grads.dbias, **tol)
    torch.testing.assert_close(total.sum_dz_xhat, grads.dweight, **tol)
    count = moments.count  # per channel, as a tensor: the global count
    dxs = [backend.backward_elemt(g[p], s, mean, invstd, w, b, total, count, None if r is None else r[p],
                                  activation, 0.1, from_output, residual) for s, p in zip(saved, parts, strict=True)]
    torch.testing.assert_close(torch.cat([d for d, _ in dxs]), grads.dx, **tol)
    if residual:
        torch.testing.assert_close(torch.cat([d for _, d in dxs]), grads.dresidual, **tol)
