"""The ``triton`` backend: batch norm (fused with a residual and an activation) as Triton kernels, for the GPU.

Where it runs: on CUDA when ``triton`` imports; on CPU tensors only under Triton's interpreter
(``TRITON_INTERPRET=1``), which is how CI tests these kernels against the reference without a GPU.
Dtypes: float32, float16, bfloat16 (statistics and arithmetic in float32); float64 is left to ``native``.

Launch plans are chosen per shape by :func:`plan` (cached; no autotuning on the caller's critical path):
channel blocks follow the contiguous dimension (wide blocks of channels for channels_last, long runs of M for
NCHW), and the training passes either read each channel block once (it fits in registers) or split M over
several programs whose partial results are merged in a fixed order, so two runs give bit-identical results.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
import os
from typing import Any, NamedTuple

import torch
from torch import Tensor

from bnlab.kernels.base import TrainForward, memory_format_of
from bnlab.kernels.fused import ACTIVATION_CODES, FusedBackward, FusedKernelsBackend

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_ONE_PASS_MAX = 8192  # values per program (BLOCK_C × BLOCK_M) that still fit in registers for the one-pass path
_TILE = 4096  # values per program tile in the split path and the elementwise passes
_GRID_AXIS1_MAX = 65_535  # CUDA's limit on grid axes 1 and 2


@functools.lru_cache(maxsize=1)
def _triton_import_error() -> str | None:
    # Looked up, not imported: importing triton on a CPU-only machine before TRITON_INTERPRET=1 is set would
    # build its language in compiled mode, and the interpreter could not run in that process afterwards.
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed; pip install triton (or bnlab[triton])"
    return None


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") == "1"


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


class Plan(NamedTuple):
    """How a (C, M, layout) problem is launched: tile sizes and the three grids its kernels take.

    The M tiles of the elementwise passes go on grid axis 0, where CUDA allows 2³¹ − 1 programs (a channels_last
    512×64×112×112 batch has 100,352 of them); axis 1 allows only 65,535, which :func:`plan` keeps the channel
    blocks under (and the splits, on axis 1 of the statistics passes, number at most ``programs_wanted``).
    """

    block_c: int  # channels per program
    block_m: int  # M values per tile of the statistics passes (all of M, rounded up, on the one-pass path)
    one_pass: bool
    splits: int  # programs along M in the split statistics passes
    m_per_split: int
    c_blocks: int
    tile_m: int  # M values per program of the elementwise passes (_normalize, _grad_input)
    m_tiles: int

    @property
    def channel_grid(self) -> tuple[int]:
        return (self.c_blocks,)

    @property
    def split_grid(self) -> tuple[int, int]:
        return (self.c_blocks, self.splits)

    @property
    def tile_grid(self) -> tuple[int, int]:
        return (self.m_tiles, self.c_blocks)


@functools.lru_cache(maxsize=1024)
def plan(C: int, M: int, channels_contiguous: bool, programs_wanted: int) -> Plan:
    """The launch plan of a shape, cached per shape.

    channels_contiguous (channels_last, or (N, C)): a tile spans up to 64 adjacent channels, so loads are
    coalesced along C; otherwise (NCHW) a tile is a few channels × a long run of M.
    """
    block_c = min(_next_pow2(C), 64) if channels_contiguous else min(_next_pow2(C), 4 if M >= 1024 else 16)
    # Wider channel blocks where C would need more than grid axis 1 takes (NCHW with C > 262,140).
    block_c = max(block_c, _next_pow2(math.ceil(C / _GRID_AXIS1_MAX)))
    c_blocks = math.ceil(C / block_c)
    tile_m = min(_next_pow2(M), max(16, _TILE // block_c))
    tiles = (c_blocks, tile_m, math.ceil(M / tile_m))
    if block_c * _next_pow2(M) <= _ONE_PASS_MAX:
        return Plan(block_c, _next_pow2(M), True, 1, M, *tiles)
    block_m = max(16, _TILE // block_c)
    # Enough (channel block, split) programs to fill the machine, each with at least a few tiles of work.
    splits = max(1, min(math.ceil(M / (4 * block_m)), math.ceil(programs_wanted / c_blocks)))
    m_per_split = math.ceil(math.ceil(M / splits) / block_m) * block_m
    return Plan(block_c, block_m, False, math.ceil(M / m_per_split), m_per_split, *tiles)


_INTERPRETER_PROGRAMS = 4


def _programs_wanted(device: torch.device) -> int:
    """How many programs a split pass should launch: enough to fill the GPU, few under the interpreter.

    The interpreter runs each program as a Python loop whatever the machine, so its count ignores any GPU present.
    """
    if device.type != "cuda" or _interpreting():
        return _INTERPRETER_PROGRAMS
    return _gpu_programs(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=16)
def _gpu_programs(device_index: int) -> int:
    return 4 * torch.cuda.get_device_properties(device_index).multi_processor_count


class _View:
    """A problem seen as (N, C, S), every tensor of it dense in the memory format the outputs will have.

    ``strides`` (sN, sC, sS) are those of that format, (C·S, S, 1) or (S·C, 1, C), the same for x, the residual,
    ∂ℓ/∂y and the outputs once arranged (:meth:`arrange`). They are derived, never read off a tensor: ``is_contiguous``
    ignores the strides of size-1 dimensions, so a tensor that needs no copy may still report any stride there
    (``randn(4, 3, 1, 5).transpose(2, 3)`` has stride 5 on its last dimension), and the kernels must not use it.
    """

    def __init__(self, x: Tensor) -> None:
        self.fmt = memory_format_of(x)
        self.N, self.C = x.shape[0], x.shape[1]
        self.S = math.prod(x.shape[2:])
        self.M = self.N * self.S
        channels_last = self.fmt != torch.contiguous_format
        self.strides = (self.S * self.C, 1, self.C) if channels_last else (self.C * self.S, self.S, 1)

    def arrange(self, t: Tensor) -> Tensor:
        return t.contiguous(memory_format=self.fmt)

    def plan(self, device: torch.device) -> Plan:
        channels_contiguous = self.strides[1] == 1  # channels_last, or no spatial dimensions (S = 1)
        return plan(self.C, self.M, channels_contiguous, _programs_wanted(device))


class TritonBackend(FusedKernelsBackend):
    name = "triton"
    summary = ("Triton kernels for the GPU: one-pass statistics on chip or split with a deterministic merge, "
               "fused residual + activation; CPU only under TRITON_INTERPRET=1")

    def unavailable_reason(self, device: torch.device, dtype: torch.dtype) -> str | None:
        if dtype not in _DTYPES:
            return f"the Triton kernels take float32, float16 or bfloat16 inputs, got {dtype}"
        if device.type == "cpu" and not _interpreting():
            return "Triton kernels run on CUDA; on CPU only under the interpreter (set TRITON_INTERPRET=1)"
        if device.type not in ("cpu", "cuda"):
            return f"Triton kernels run on CUDA, not {device.type}"
        return _triton_import_error()

    def priority(self, device: torch.device, dtype: torch.dtype) -> int:
        # On the GPU these kernels make fewer passes than ATen's; under the interpreter they are a test vehicle.
        return 30 if device.type == "cuda" else -10

    # ------------------------------------------------------- fused (plain batch norm: FusedKernelsBackend)
    def fused_forward_train(self, x: Tensor, residual: Tensor | None, weight: Tensor | None, bias: Tensor | None,
                            eps: float, activation: str, negative_slope: float) -> TrainForward:
        from bnlab.kernels.triton import kernels as k

        view = _View(x)
        x = view.arrange(x)
        res = None if residual is None else view.arrange(residual)
        y = torch.empty_like(x, memory_format=view.fmt)
        # Separate tensors: outputs of a custom op may not alias one another.
        mean, invstd, var = (torch.empty(view.C, dtype=torch.float32, device=x.device) for _ in range(3))
        p = view.plan(x.device)
        flags = _flags(activation, res, weight, bias)
        w, b = _param(weight, x), _param(bias, x)
        common = (view.C, view.S, view.M, *view.strides)
        with _launching_on(x.device):
            if p.one_pass:
                k._forward_one_pass[p.channel_grid](x, _or(res, x), y, w, b, mean, invstd, var, *common, eps,
                                                    negative_slope, **flags, BLOCK_C=p.block_c, BLOCK_M=p.block_m)
                return TrainForward(y, mean, invstd, var)
            partial = torch.empty(2, p.splits, view.C, dtype=torch.float32, device=x.device)
            counts = torch.empty(p.splits, dtype=torch.float32, device=x.device)
            k._stats_partial[p.split_grid](x, counts, partial[0], partial[1], *common, p.m_per_split,
                                           BLOCK_C=p.block_c, BLOCK_M=p.block_m)
            k._stats_merge[p.channel_grid](x, counts, partial[0], partial[1], mean, invstd, var, view.C,
                                           view.strides[1], p.splits, eps, BLOCK_C=p.block_c)
            k._normalize[p.tile_grid](x, _or(res, x), y, w, b, mean, invstd, *common, negative_slope, **flags,
                                      BLOCK_C=p.block_c, BLOCK_M=p.tile_m)
        return TrainForward(y, mean, invstd, var)

    def fused_backward(self, grad_y: Tensor, saved: Tensor, residual: Tensor | None, weight: Tensor | None,
                       bias: Tensor | None, mean: Tensor, invstd: Tensor, activation: str, negative_slope: float,
                       from_output: bool, need_dresidual: bool) -> FusedBackward:
        from bnlab.kernels.triton import kernels as k

        view = _View(saved)
        saved, grad_y = view.arrange(saved), view.arrange(grad_y)
        res = None if residual is None else view.arrange(residual)
        dx = torch.empty_like(saved, memory_format=view.fmt)
        dres = torch.empty_like(saved, memory_format=view.fmt) if need_dresidual else None
        dweight, dbias = (torch.empty(view.C, dtype=torch.float32, device=saved.device) for _ in range(2))
        p = view.plan(saved.device)
        flags = {**_flags(activation, res, weight, bias), "FROM_OUTPUT": from_output}
        w, b = _param(weight, saved), _param(bias, saved)
        mean, invstd = mean.contiguous(), invstd.contiguous()
        common = (view.C, view.S, view.M, *view.strides)
        with _launching_on(saved.device):
            if p.one_pass:
                k._backward_one_pass[p.channel_grid](grad_y, saved, _or(res, saved), dx, _or(dres, dx), w, b, mean,
                                                     invstd, dweight, dbias, *common, negative_slope, **flags,
                                                     WRITE_DRES=dres is not None, BLOCK_C=p.block_c,
                                                     BLOCK_M=p.block_m)
                return FusedBackward(dx, dres, dweight, dbias)
            partial = torch.empty(2, p.splits, view.C, dtype=torch.float32, device=saved.device)
            k._grad_partial[p.split_grid](grad_y, saved, _or(res, saved), w, b, mean, invstd, partial[0],
                                          partial[1], *common, negative_slope, p.m_per_split, **flags,
                                          BLOCK_C=p.block_c, BLOCK_M=p.block_m)
            k._grad_merge[p.channel_grid](partial[0], partial[1], dweight, dbias, view.C, p.splits,
                                          BLOCK_C=p.block_c)
            k._grad_input[p.tile_grid](grad_y, saved, _or(res, saved), dx, _or(dres, dx), w, b, mean, invstd,
                                       dweight, dbias, *common, negative_slope, **flags,
                                       WRITE_DRES=dres is not None, BLOCK_C=p.block_c, BLOCK_M=p.tile_m)
        return FusedBackward(dx, dres, dweight, dbias)

    def fused_forward_eval(self, x: Tensor, residual: Tensor | None, running_mean: Tensor, running_var: Tensor,
                           weight: Tensor | None, bias: Tensor | None, eps: float, activation: str,
                           negative_slope: float) -> Tensor:
        from bnlab.kernels.triton import kernels as k

        view = _View(x)
        x = view.arrange(x)
        res = None if residual is None else view.arrange(residual)
        y = torch.empty_like(x, memory_format=view.fmt)
        mean = running_mean.float().contiguous()
        invstd = torch.rsqrt(running_var.float() + eps)  # (C,): a negligible op beside the elementwise pass
        p = view.plan(x.device)
        with _launching_on(x.device):
            k._normalize[p.tile_grid](x, _or(res, x), y, _param(weight, x), _param(bias, x), mean, invstd, view.C,
                                      view.S, view.M, *view.strides, negative_slope,
                                      **_flags(activation, res, weight, bias), BLOCK_C=p.block_c, BLOCK_M=p.tile_m)
        return y


def _launching_on(device: torch.device) -> contextlib.AbstractContextManager[object]:
    # Triton launches on the current CUDA device, which need not be the input's (x on cuda:1 while cuda:0 is
    # current); on the CPU (the interpreter) there is nothing to switch.
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _flags(activation: str, res: Tensor | None, weight: Tensor | None, bias: Tensor | None) -> dict[str, Any]:
    return {"ACT": ACTIVATION_CODES[activation], "HAS_RES": res is not None, "HAS_W": weight is not None,
            "HAS_B": bias is not None}


def _param(t: Tensor | None, like: Tensor) -> Tensor:
    # A (C,) float32 parameter, or a dummy pointer when absent (the kernel's HAS_W / HAS_B flag skips it).
    return t.float().contiguous() if t is not None else like.new_empty(1, dtype=torch.float32)


def _or(t: Tensor | None, fallback: Tensor) -> Tensor:
    # An absent optional tensor is passed as some valid pointer; its constexpr flag keeps the kernel off it.
    return fallback if t is None else t
