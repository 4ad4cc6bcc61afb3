"""The ``cpu`` backend: bnlab's own C++/OpenMP kernels (``bnlab_cpu.cpp``), fused BN + residual + activation.

Compiled on first use (:mod:`bnlab.kernels.cpu.build`) and called through ctypes. Where no compiler is found or
the build fails, the backend reports itself unavailable with the reason, which is logged once; ``"auto"`` then
falls back to ``native``.

Layouts: contiguous (N, C, *) and channels_last / channels_last_3d are used as they are; any other strides are
made contiguous first (one extra copy). Dtypes: float32, float64, bfloat16, float16; statistics in float32
(float64 for float64 input), merged with Chan's formula.
"""

from __future__ import annotations

import math
import sys

import torch
from torch import Tensor

from bnlab.kernels.base import FLOAT_DTYPES, TrainForward, memory_format_of
from bnlab.kernels.cpu import build
from bnlab.kernels.fused import ACTIVATION_CODES, FusedBackward, FusedKernelsBackend
from bnlab.reference.algorithm1 import accumulation_dtype

_DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}
_NCS, _CL = 0, 1
# Below this many elements a layer runs on one thread: waking the OpenMP team costs more than it saves.
_PARALLEL_MIN_NUMEL = 1 << 15
# Training inputs smaller than this go to native under "auto": measured crossover of forward+backward on this
# machine (benchmarks.run, 2 threads): (8, 32, 16, 16) = 65k values is slower than ATen, (256, 512) = 131k about
# even, 1.6M values and up faster.
_AUTO_MIN_NUMEL_TRAIN = 1 << 18
# "auto" ranks this backend above native for these dtypes only: the benchmark (benchmarks/results) shows it
# faster there. bfloat16, float16 and float64 are supported but not chosen automatically: bfloat16 training
# measured 0.9x of ATen's (benchmarks/results/cpu-full.md), its forward pass being the slower half.
_PREFERRED_DTYPES = (torch.float32,)


class _Geometry:
    """How a tensor is handed to the kernels: (N, C, S) and the layout, with the buffer in that layout."""

    __slots__ = ("C", "N", "S", "fmt", "layout")

    def __init__(self, x: Tensor) -> None:
        self.fmt = memory_format_of(x)
        self.N, self.C = x.shape[0], x.shape[1]
        self.S = math.prod(x.shape[2:])
        # (N, C) is channels-last with one value per row; so are channels_last and channels_last_3d tensors.
        self.layout = _CL if (x.dim() == 2 or self.fmt != torch.contiguous_format) else _NCS

    def arrange(self, t: Tensor) -> Tensor:
        """t in the layout the kernels read (a no-op when it already is)."""
        return t.contiguous(memory_format=self.fmt)

    def threads(self) -> int:
        return 1 if self.N * self.C * self.S < _PARALLEL_MIN_NUMEL else torch.get_num_threads()


def _ptr(t: Tensor | None) -> int | None:
    # Every tensor passed this way is held in a local by the caller: a temporary could be freed before the call.
    return None if t is None else t.data_ptr()


def _vecs(*ts: Tensor | None) -> list[Tensor | None]:
    """Per-channel vectors, contiguous (they are (C,) parameters: a no-op unless someone passed a view)."""
    return [None if t is None else t.contiguous() for t in ts]


def _check(status: int, call: str) -> None:
    if status != 0:
        raise RuntimeError(f"bnlab cpu kernel {call} failed with status {status}")


class CpuBackend(FusedKernelsBackend):
    name = "cpu"
    summary = ("bnlab's C++/OpenMP kernels, compiled on first use: single-pass statistics, channel blocking, "
               "fused residual + activation")

    def unavailable_reason(self, device: torch.device, dtype: torch.dtype) -> str | None:
        if device.type != "cpu":
            return f"runs on CPU only, not {device.type}"
        if dtype not in FLOAT_DTYPES:
            return f"batch norm needs a floating-point input, got {dtype}"
        if build.load() is None:
            return f"the C++ kernels could not be built: {build.failure_reason()}"
        return None

    def priority(self, device: torch.device, dtype: torch.dtype) -> int:
        return 20 if device.type == "cpu" and dtype in _PREFERRED_DTYPES else 0

    def auto_min_numel(self, device: torch.device, dtype: torch.dtype, training: bool, fused: bool = False,
                       channels_last: bool = False) -> int:
        # From benchmarks/results/cpu-quick.md. Wins: fused calls (BN + residual + activation in one pass against
        # native's three) and NCHW training (ATen's statistics pass is scalar there), above the crossover below
        # which the Python around the kernels costs more than they save. Not: plain eval, one affine pass that
        # ATen does as well (forward_eval calls it), and plain channels_last training, where ATen's vectorized
        # kernel is as close to the byte floor as ours (0.9x of it).
        if fused:
            return _AUTO_MIN_NUMEL_TRAIN
        return _AUTO_MIN_NUMEL_TRAIN if training and not channels_last else sys.maxsize

    @staticmethod
    def _lib():  # type: ignore[no-untyped-def]
        lib = build.load()
        if lib is None:
            raise RuntimeError(f"the cpu backend is unavailable: {build.failure_reason()}")
        return lib

    # ------------------------------------- plain batch norm (training: the fused kernels, FusedKernelsBackend)
    def forward_eval(self, x: Tensor, running_mean: Tensor, running_var: Tensor, weight: Tensor | None,
                     bias: Tensor | None, eps: float) -> Tensor:
        # Inference BN alone is one affine pass, read x and write y, with nothing to fuse or save: ATen's kernel
        # does exactly that (and measured about 10% faster than ours on NCHW), so it is used here.
        return torch.native_batch_norm(x, weight, bias, running_mean, running_var, False, 0.0, eps)[0]

    # ---------------------------------------------------------------------------------------------- fused
    def fused_forward_train(self, x: Tensor, residual: Tensor | None, weight: Tensor | None, bias: Tensor | None,
                            eps: float, activation: str, negative_slope: float) -> TrainForward:
        geo = _Geometry(x)
        x = geo.arrange(x)
        res = None if residual is None else geo.arrange(residual)
        acc = accumulation_dtype(x.dtype)
        y = torch.empty_like(x, memory_format=geo.fmt)
        # Three separate tensors: outputs of a custom op may not alias one another.
        mean, invstd, var = (torch.empty(geo.C, dtype=acc) for _ in range(3))
        w, b = _vecs(weight, bias)
        status = self._lib().bnlab_forward_train(
            _DTYPE_CODES[x.dtype], x.data_ptr(), _ptr(res), y.data_ptr(), _ptr(w), _ptr(b), geo.N, geo.C, geo.S,
            geo.layout, eps, ACTIVATION_CODES[activation], negative_slope, mean.data_ptr(), invstd.data_ptr(),
            var.data_ptr(), geo.threads())
        _check(status, "forward_train")
        return TrainForward(y, mean, invstd, var)

    def fused_backward(self, grad_y: Tensor, saved: Tensor, residual: Tensor | None, weight: Tensor | None,
                       bias: Tensor | None, mean: Tensor, invstd: Tensor, activation: str, negative_slope: float,
                       from_output: bool, need_dresidual: bool) -> FusedBackward:
        geo = _Geometry(saved)
        saved, grad_y = geo.arrange(saved), geo.arrange(grad_y)
        res = None if residual is None else geo.arrange(residual)
        acc = accumulation_dtype(saved.dtype)
        dx = torch.empty_like(saved, memory_format=geo.fmt)
        dres = torch.empty_like(saved, memory_format=geo.fmt) if need_dresidual else None
        dweight, dbias = (torch.empty(geo.C, dtype=acc) for _ in range(2))
        w, b, mu, rstd = _vecs(weight, bias, mean, invstd)
        status = self._lib().bnlab_backward(
            _DTYPE_CODES[saved.dtype], grad_y.data_ptr(), saved.data_ptr(), _ptr(res), _ptr(w), _ptr(b),
            _ptr(mu), _ptr(rstd), geo.N, geo.C, geo.S,
            geo.layout, ACTIVATION_CODES[activation], negative_slope, int(from_output), dx.data_ptr(), _ptr(dres),
            dweight.data_ptr(), dbias.data_ptr(), geo.threads())
        _check(status, "backward")
        return FusedBackward(dx, dres, dweight, dbias)

    def fused_forward_eval(self, x: Tensor, residual: Tensor | None, running_mean: Tensor, running_var: Tensor,
                           weight: Tensor | None, bias: Tensor | None, eps: float, activation: str,
                           negative_slope: float) -> Tensor:
        geo = _Geometry(x)
        x = geo.arrange(x)
        res = None if residual is None else geo.arrange(residual)
        y = torch.empty_like(x, memory_format=geo.fmt)
        rm, rv, w, b = _vecs(running_mean, running_var, weight, bias)
        status = self._lib().bnlab_forward_eval(
            _DTYPE_CODES[x.dtype], x.data_ptr(), _ptr(res), y.data_ptr(), _ptr(rm), _ptr(rv), _ptr(w), _ptr(b),
            geo.N, geo.C, geo.S,
            geo.layout, eps, ACTIVATION_CODES[activation], negative_slope, geo.threads())
        _check(status, "forward_eval")
        return y
