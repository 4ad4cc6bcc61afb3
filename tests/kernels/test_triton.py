"""The Triton backend: its availability rules, and its kernels against the reference.

Without a GPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1, CPU tensors): a marked subset of the
core cases (float32/bfloat16/float16 and both launch paths; the interpreter runs each program as Python, too slow
for the whole core suite). With a GPU the same cases run on CUDA; without one those skip. One process runs triton
either interpreted or compiled, whichever imported it first, so on a GPU machine the two kinds run in two
processes (``-k 'not cuda'`` with TRITON_INTERPRET=1, ``-k 'not interpreter'`` without): benchmarks/gpu_check.sh.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from typing import NamedTuple

import pytest
import torch

from bnlab.kernels import get_backend
from bnlab.kernels.triton import plan
from bnlab.reference import algorithm1 as a1
from cases import make_input, run_fused, step_tensors
from tolerances import FLOOR, KERNEL_FLOOR, assert_as_accurate_as_torch, max_error

REFERENCE = get_backend("reference")

# Not imported here: the interpreter only works if triton is first imported with TRITON_INTERPRET=1 set.
pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                       reason="the triton extra is not installed (pip install -e '.[triton]')"),
    pytest.mark.usefixtures("nan_fill"),  # outputs start as NaN: an element a kernel never writes fails the test
]

CASES = [
    pytest.param((6, 4), "contiguous", id="1d-N6-C4-one-pass"),
    pytest.param((4, 3, 5, 6), "contiguous", id="NCHW-one-pass"),
    pytest.param((4, 6, 5, 3), "channels_last", id="channels_last-one-pass"),
    pytest.param((8, 3, 30, 40), "contiguous", id="NCHW-split"),  # M = 9600: split reduction + merge
    pytest.param((8, 5, 30, 20), "channels_last", id="channels_last-split"),
    pytest.param((2000, 70), "contiguous", id="1d-split"),
]
# (shape, layout, offset, spread): M not a multiple of the tile, so the last tile of a split is partly masked, and a
# mean that dwarfs the spread, so masked lanes that added anything to the moments (even −K for the shift K the
# split path subtracts) would wreck the variance.
RAGGED_OFFSET_CASES = [
    pytest.param((8, 3, 30, 41), "contiguous", 1e4, 1.0, id="NCHW-split-ragged-1e4"),
    pytest.param((8, 3, 30, 40), "contiguous", 1e6, 1e-2, id="NCHW-split-ragged-1e6"),  # 9600 = 9·1024 + 384
    pytest.param((8, 5, 30, 21), "channels_last", 1e4, 1.0, id="channels_last-split-ragged-1e4"),
    pytest.param((2001, 70), "contiguous", 1e4, 1.0, id="1d-split-ragged-1e4"),
    pytest.param((5, 3, 7, 9), "contiguous", 1e4, 1.0, id="NCHW-one-pass-1e4"),
]
MODES = [
    pytest.param("identity", "input", False, id="bn"),
    pytest.param("relu", "input", True, id="relu+res"),
    pytest.param("silu", "input", False, id="silu"),
    pytest.param("leaky_relu", "output", True, id="leaky-out+res"),
    pytest.param("elu", "output", False, id="elu-out"),
]


def _triton_mode() -> str | None:
    """How triton was first imported in this process, "interpreted" or "compiled" (None: not yet). Its language
    is built once, at that import, by TRITON_INTERPRET: one process cannot run both kinds of case."""
    if "triton" not in sys.modules:
        return None
    from triton.runtime.jit import JITFunction

    return "compiled" if isinstance(sys.modules["triton"].language.sum, JITFunction) else "interpreted"


@pytest.fixture(params=["interpreter", "cuda"])
def device(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("no CUDA GPU here: the GPU run of these tests needs one (benchmarks/gpu_check.sh)")
        if _triton_mode() == "interpreted":
            pytest.skip("triton runs interpreted in this process, so these cases would not test the GPU kernels; "
                        "run them in a process of their own: pytest tests/kernels/test_triton.py -k 'not "
                        "interpreter' with TRITON_INTERPRET unset (benchmarks/gpu_check.sh does)")
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        yield "cuda"
        return
    if _triton_mode() == "compiled":
        pytest.skip("triton was imported without TRITON_INTERPRET=1 in this process; its interpreter needs the "
                    "variable set before the first import (TRITON_INTERPRET=1 pytest ... -k 'not cuda')")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    yield "cpu"


def test_cpu_needs_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    reason = get_backend("triton").unavailable_reason(torch.device("cpu"), torch.float32)
    assert reason is not None and "TRITON_INTERPRET=1" in reason
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert get_backend("triton").unavailable_reason(torch.device("cpu"), torch.float32) is None
    assert "float64" in get_backend("triton").unavailable_reason(torch.device("cpu"), torch.float64)


def test_plans_are_cached_and_cover_both_paths() -> None:
    assert plan(4, 24, False, 4).one_pass and not plan(3, 9600, False, 4).one_pass
    split = plan(3, 9600, False, 4)
    assert split.splits * split.m_per_split >= 9600 > (split.splits - 1) * split.m_per_split
    assert plan(3, 9600, False, 4) is split  # lru_cache: no re-planning on the critical path


def test_the_interpreter_plans_for_few_programs_even_beside_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from bnlab.kernels.triton import INTERPRETER_PROGRAMS, gpu_programs, programs_wanted

    sm_count = type("Properties", (), {"multi_processor_count": 132})()
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: sm_count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    gpu_programs.cache_clear()
    try:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert programs_wanted(torch.device("cuda", 0)) == INTERPRETER_PROGRAMS
        assert programs_wanted(torch.device("cpu")) == INTERPRETER_PROGRAMS
        monkeypatch.delenv("TRITON_INTERPRET")
        assert programs_wanted(torch.device("cuda", 0)) == 4 * 132
    finally:
        gpu_programs.cache_clear()  # forget the made-up GPU


# Shapes whose grids would overflow CUDA's limits with the M blocks on axis 1 (65,535 programs there, 2³¹ − 1 on
# axis 0): checked on meta tensors with the kernels replaced by recorders, so nothing launches or allocates.
HUGE_CASES = [
    pytest.param((512, 64, 112, 112), "channels_last", id="channels_last-stem-100k-m-blocks"),
    pytest.param((5_000_000, 64), "contiguous", id="1d-5M-rows-78k-m-blocks"),
    pytest.param((4096, 300_000, 2), "contiguous", id="NCL-300k-channels-75k-c-blocks"),
]
CUDA_GRID_LIMITS = (2**31 - 1, 65_535, 65_535)


KERNELS = ("_forward_one_pass", "_stats_partial", "_stats_merge", "_normalize", "_backward_one_pass",
           "_grad_partial", "_grad_merge", "_grad_input")


class Launch(NamedTuple):
    kernel: str
    grid: tuple[int, ...]
    device: torch.device | None  # the device the launch was guarded onto (None: outside any guard)


@pytest.fixture
def launches(monkeypatch: pytest.MonkeyPatch) -> list[Launch]:
    """Replace every Triton kernel with a recorder: ``kernel[grid](...)`` records the launch instead of running it."""
    import bnlab.kernels.triton.backend as backend_module
    from bnlab.kernels.triton import kernels

    recorded: list[Launch] = []
    guard: list[torch.device] = []

    @contextlib.contextmanager
    def launching_on(device: torch.device) -> Iterator[None]:
        guard.append(device)
        yield
        guard.pop()

    class Recorder:
        def __init__(self, name: str) -> None:
            self.name = name

        def __getitem__(self, grid: tuple[int, ...]):
            return lambda *args, **kwargs: recorded.append(Launch(self.name, grid, guard[-1] if guard else None))

    for name in KERNELS:
        monkeypatch.setattr(kernels, name, Recorder(name))
    monkeypatch.setattr(backend_module, "launching_on", launching_on)
    return recorded


def _run_all_passes(x: torch.Tensor) -> None:
    c = torch.empty(x.shape[1], device=x.device)
    tb = get_backend("triton")
    out = tb.forward_train(x, c, c, 1e-5)
    tb.backward(torch.empty_like(x), x, out.mean, out.invstd, c)
    tb.forward_eval(x, c, c, c, c, 1e-5)


@pytest.mark.parametrize(("shape", "layout"), HUGE_CASES)
def test_launch_grids_stay_within_gpu_limits(launches, shape, layout) -> None:
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    _run_all_passes(torch.empty(shape, device="meta", memory_format=fmt))  # meta: nothing is allocated
    assert {launch.kernel for launch in launches} >= {"_stats_partial", "_normalize", "_grad_partial", "_grad_input"}
    for launch in launches:
        assert all(n <= limit for n, limit in zip(launch.grid, CUDA_GRID_LIMITS, strict=False)), launch


@pytest.mark.parametrize(("shape", "layout"), [CASES[1], CASES[3]])
def test_every_launch_is_guarded_onto_the_inputs_device(launches, shape, layout) -> None:
    x = make_input(shape, layout).to("meta")
    _run_all_passes(x)
    assert len(launches) >= 3 and all(launch.device == x.device for launch in launches), launches


def test_the_launch_guard_switches_to_the_inputs_gpu() -> None:
    from bnlab.kernels.triton import launching_on

    guard = launching_on(torch.device("cuda", 1))  # built, not entered: entering needs the GPU
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    assert not isinstance(launching_on(torch.device("cpu")), torch.cuda.device)


def test_runs_on_cuda1_while_cuda0_is_current() -> None:
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA GPUs: the input on cuda:1 while cuda:0 is current")
    x = make_input((8, 3, 30, 40), "contiguous").to("cuda:1")
    out = get_backend("triton").forward_train(x, None, None, 1e-5)
    y_torch = torch.nn.functional.batch_norm(x, None, None, training=True)
    assert torch.cuda.current_device() == 0 and out.y.device == x.device
    assert max_error(out.y, y_torch) < 1e-4


def _inputs(shape, layout, residual, dtype, device):
    x = make_input(shape, layout, dtype).to(device)
    r = make_input(shape, layout, dtype).to(device) if residual else None
    w = ((torch.rand(shape[1]) + 0.5) * torch.where(torch.arange(shape[1]) % 2 == 0, 1.0, -1.0)).to(device)
    return x, r, w, torch.randn(shape[1]).to(device), make_input(shape, "contiguous", dtype).to(device)


@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, id="float32"),
                                   pytest.param(torch.bfloat16, id="bfloat16")])
@pytest.mark.parametrize(("shape", "layout"), CASES)
@pytest.mark.parametrize(("activation", "save", "residual"), MODES)
def test_triton_matches_reference(device, dtype, shape, layout, activation, save, residual) -> None:
    if save == "output" and dtype == torch.bfloat16:
        pytest.skip("save='output' recovers x̂ from y rounded to bfloat16's 8 bits (an error of ulp(y)/|γ|, "
                    "times 1/slope for leaky_relu): its kernels are checked in float32")
    x, r, w, b, g = _inputs(shape, layout, residual, dtype, device)
    out, grads = run_fused(get_backend("triton"), x, r, w, b, g, activation, save)
    cpu = [t.cpu() if t is not None else None for t in (x, r, w, b, g)]
    exact_out, exact = run_fused(REFERENCE, *[t.double() if t is not None else None for t in cpu],
                                 activation, save)
    at_dtype_out, at_dtype = run_fused(REFERENCE, *cpu, activation, save)
    assert out.y.dtype == dtype and out.y.stride() == x.stride()
    for what, ours, mid, ref in (("y", out.y, at_dtype_out.y, exact_out.y), ("mean", out.mean, None, exact_out.mean),
                                 ("var", out.var, None, exact_out.var), ("dx", grads.dx, at_dtype.dx, exact.dx),
                                 ("dw", grads.dweight, at_dtype.dweight, exact.dweight),
                                 ("db", grads.dbias, at_dtype.dbias, exact.dbias),
                                 ("dr", grads.dresidual, at_dtype.dresidual, exact.dresidual)):
        if ref is None:
            continue
        scale = max(1.0, ref.abs().max().item())
        # save="output" recovers x̂ from a y rounded to dtype, and bfloat16 sums round differently in another
        # summation order: twice the usual slack there.
        slack = 2 if save == "output" or dtype != torch.float32 else 1
        bound = slack * ((2 * max_error(mid, ref) if mid is not None else 0.0) + KERNEL_FLOOR[dtype] * scale)
        bound = max(bound, KERNEL_FLOOR[torch.float32] * scale * (ref.numel() ** 0.5))
        assert max_error(ours.cpu(), ref) <= bound, f"{what}: {max_error(ours.cpu(), ref):.3g} > {bound:.3g}"


@pytest.mark.parametrize(("shape", "layout", "offset", "spread"), RAGGED_OFFSET_CASES)
def test_triton_statistics_on_ragged_tiles_with_large_offsets(device, shape, layout, offset, spread) -> None:
    x = (offset + spread * torch.randn(shape, dtype=torch.float64)).float()
    x = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
    out = get_backend("triton").forward_train(x.to(device), None, None, 1e-5)
    exact = a1.forward_train(x.double())
    y_torch = torch.nn.functional.batch_norm(x, None, None, training=True)
    assert_as_accurate_as_torch(out.y.cpu(), y_torch, exact.y, torch.float32)
    assert max_error(out.mean.cpu(), exact.mean) <= 4 * FLOOR[torch.float32] * offset
    rel_var_err = ((out.var.cpu().double() - exact.var) / exact.var).abs().max().item()
    assert rel_var_err < 1e-3, f"relative variance error {rel_var_err:.3g}"


def _odd_size1_strides(shape: tuple[int, ...], layout: str) -> torch.Tensor:
    """Dense values of ``shape`` (last dimension of size 1) whose size-1 dimension has a stride no dense layout
    gives it: is_contiguous() ignores the strides of size-1 dimensions, so such a tensor counts as contiguous
    (or channels_last) as it is, and a kernel that took its step along s from stride(-1) would read out of bounds.
    """
    if layout == "channels_last":  # (N, C, H, 1) stored as N, H, C; the stride of W is C + 1 instead of C
        C, H = shape[1], shape[2]
        return torch.randn(torch.Size(shape).numel()).as_strided(shape, (H * C, 1, C, C + 1))
    # (..., L, 1) made by transposing (..., 1, L): the stride of the last dimension is L instead of 1
    return torch.randn(*shape[:-2], 1, shape[-2]).transpose(-1, -2)


ODD_STRIDE_CASES = [
    pytest.param((4, 3, 5, 1), "contiguous", id="NCHW-W1-one-pass"),
    pytest.param((64, 3, 80, 1), "contiguous", id="NCHW-W1-split"),
    pytest.param((2, 3, 4, 5, 1), "contiguous", id="NCDHW-W1"),
    pytest.param((2, 6, 5, 1), "channels_last", id="channels_last-W1"),
]


@pytest.mark.parametrize(("shape", "layout"), ODD_STRIDE_CASES)
def test_triton_ignores_the_strides_of_size1_dims(device, shape, layout) -> None:
    # x, the residual and ∂ℓ/∂y all with the odd strides, against the same values stored densely: same kernels,
    # same data, so the results must be bit-identical (the dense run itself is checked against the reference).
    x, r, g = (_odd_size1_strides(shape, layout).to(device) for _ in range(3))
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    assert x.is_contiguous(memory_format=fmt) and x.stride() != x.clone(memory_format=fmt).stride()
    dense = [t.clone(memory_format=fmt) for t in (x, r, g)]
    w, b = torch.randn(shape[1]).to(device), torch.randn(shape[1]).to(device)
    tb = get_backend("triton")
    odd_run = run_fused(tb, x, r, w, b, g, "relu", "input")
    dense_run = run_fused(tb, dense[0], dense[1], w, b, dense[2], "relu", "input")
    for a, c in zip(step_tensors(odd_run), step_tensors(dense_run), strict=True):
        assert torch.equal(a, c)
    rm, rv = torch.randn(shape[1]).to(device), (torch.rand(shape[1]) + 0.5).to(device)
    assert torch.equal(tb.forward_eval(x, rm, rv, w, b, 1e-5, r, "relu", 0.0),
                       tb.forward_eval(dense[0], rm, rv, w, b, 1e-5, dense[1], "relu", 0.0))


@pytest.mark.parametrize(("shape", "layout"), [CASES[0], CASES[3], CASES[4]])
def test_triton_eval_and_determinism(device, shape, layout) -> None:
    x, r, w, b, g = _inputs(shape, layout, True, torch.float32, device)
    tb = get_backend("triton")
    first, second = run_fused(tb, x, r, w, b, g, "relu", "input"), run_fused(tb, x, r, w, b, g, "relu", "input")
    for a, c in zip(step_tensors(first), step_tensors(second), strict=True):
        assert torch.equal(a, c), "two runs must be bit-identical (no atomics)"
    rm, rv = torch.randn(shape[1]).to(device), (torch.rand(shape[1]) + 0.5).to(device)
    y = tb.forward_eval(x, rm, rv, w, b, 1e-5, r, "relu", 0.0)
    xd, rd, rmd, rvd, wd, bd = (t.cpu().double() for t in (x, r, rm, rv, w, b))
    ref = REFERENCE.forward_eval(xd, rmd, rvd, wd, bd, 1e-5, rd, "relu", 0.0)
    assert max_error(y.cpu(), ref) < 1e-5
    assert torch.equal(tb.forward_eval(x, rm, rv, None, None, 1e-5).cpu(),
                       tb.forward_eval(x, rm, rv, None, None, 1e-5, None, "identity", 0.0).cpu())


@pytest.mark.parametrize("dtype", [pytest.param(torch.float16, id="float16")])
def test_triton_through_the_module(device, dtype) -> None:
    import bnlab

    x = make_input((4, 3, 5, 6), "contiguous", dtype).to(device).requires_grad_()
    ours = bnlab.BatchNorm2d(3, backend="triton").to(device)
    theirs = torch.nn.BatchNorm2d(3).to(device)
    y, y_t = ours(x), theirs(x.detach().float()).to(dtype)
    assert max_error(y, y_t) < 1e-2
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    torch.testing.assert_close(ours.running_mean, theirs.running_mean, rtol=1e-3, atol=1e-3)
    assert os.environ.get("TRITON_INTERPRET") == ("1" if device == "cpu" else os.environ.get("TRITON_INTERPRET"))
