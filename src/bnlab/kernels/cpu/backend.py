"""The ``cpu`` backend: bnlab's C++/OpenMP kernels (``bnlab_cpu.cpp``), fused BN + residual + activation.

Compiled on first use (:mod:`bnlab.kernels.cpu.build`) and called through ctypes. Where no compiler is found or
the build fails, the backend reports itself unavailable with the reason, which is logged once; ``"auto"`` then
falls back to ``native``.

Layouts: contiguous (N, C, *) and channels_last / channels_last_3d are used as they are; any other strides are
made contiguous first (one extra copy). Dtypes: float32, float64, bfloat16, float16; statistics in float32
(float64 for float64 input), merged with Chan's formula. Every phase has its kernel; the one-pass training forward
and backward keep a channel in cache between their two halves (NCS layout).
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any

import torch
from torch import Tensor

from bnlab._shapes import FLOAT_DTYPES, accumulation_dtype
from bnlab._stats import Moments
from bnlab.kernels._layout import NCSView
from bnlab.kernels.base import Backend, GradSums, TrainBackward, TrainForward, empty_moments
from bnlab.kernels.cpu import auto_rules, build
from bnlab.reference.fused import ACTIVATION_CODES, ELU_MIN_SLOPE

_DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}
# The dtypes bnlab_update_running takes for the running buffers and the batch statistics.
_RUNNING_CODES = {torch.float32: 0, torch.float64: 1}
_increment_version = torch.autograd.graph.increment_version
# Below this many elements a layer runs on one thread: waking the OpenMP team costs more than it saves.
_PARALLEL_MIN_NUMEL = 1 << 15


def _auto_call(dtype: torch.dtype, training: bool, fused: bool, channels_last: bool) -> tuple[str, str, str]:
    """The key of :data:`auto_rules.MIN_NUMEL` for a call."""
    call = ("fused_" if fused else "") + ("train" if training else "eval")
    return str(dtype).removeprefix("torch."), call, "nhwc" if channels_last else "nchw"


def _preferred(dtype: torch.dtype) -> bool:
    """Whether some kind of call of this dtype measured faster than native: then "auto" ranks this backend first
    (and auto_min_numel sends that dtype's other calls to native)."""
    return any(auto_rules.MIN_NUMEL.get(_auto_call(dtype, training, fused, cl)) is not None
               for training in (True, False) for fused in (True, False) for cl in (True, False))


def _ptr(t: Tensor | None) -> int | None:
    # Every tensor passed this way is held in a local by the caller: a temporary could be freed before the call.
    return None if t is None else t.data_ptr()


def _vecs(*ts: Tensor | None) -> list[Tensor | None]:
    """Per-channel vectors, contiguous (they are (C,) parameters: a no-op unless someone passed a view)."""
    return [None if t is None else t.contiguous() for t in ts]


def _check(status: int, call: str) -> None:
    if status != 0:
        raise RuntimeError(f"bnlab cpu kernel {call} failed with status {status}")


def _threads(view: NCSView) -> int:
    return 1 if view.N * view.C * view.S < _PARALLEL_MIN_NUMEL else torch.get_num_threads()


def _layout(view: NCSView) -> int:
    return 1 if view.channels_last else 0


_DECLARED: set[int] = set()


def _declare_phases(lib: Any) -> None:
    """ctypes signatures of the entry points added after the library's first ABI (build.py declares those)."""
    p, i64, i32, f64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double
    lib.bnlab_forward_train_checked.argtypes = [i32, p, p, p, p, p, i64, i64, i64, i32, f64, i32, f64, p, p, p, i32, p]
    lib.bnlab_stats.argtypes = [i32, p, p, i64, i64, i64, i32, p, p, p, i32]
    lib.bnlab_elemt.argtypes = [i32, p, p, p, p, p, p, p, i64, i64, i64, i32, i32, f64, i32]
    lib.bnlab_backward_reduce.argtypes = [i32, p, p, p, p, p, p, p, i64, i64, i64, i32, i32, f64, i32, p, p, i32]
    lib.bnlab_backward_elemt.argtypes = [i32, p, p, p, p, p, p, p, p, p, f64, i64, i64, i64, i32, i32, f64, i32, p, p,
                                         i32]
    lib.bnlab_update_running.argtypes = [i32, p, p, i32, p, p, i64, f64, f64]
    for fn in (lib.bnlab_forward_train_checked, lib.bnlab_stats, lib.bnlab_elemt, lib.bnlab_backward_reduce,
               lib.bnlab_backward_elemt, lib.bnlab_update_running):
        fn.restype = i32


class CpuBackend(Backend):
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
        return 20 if device.type == "cpu" and _preferred(dtype) else 0

    def auto_min_numel(self, device: torch.device, dtype: torch.dtype, training: bool, fused: bool = False,
                       channels_last: bool = False) -> int:
        # From the committed benchmark (src/bnlab/kernels/cpu/auto_rules.py, generated from
        # benchmarks/results/cpu-full.json; docs/performance.md): where cpu was not measured faster, never.
        if device.type != "cpu":
            return sys.maxsize
        threshold = auto_rules.MIN_NUMEL.get(_auto_call(dtype, training, fused, channels_last))
        return sys.maxsize if threshold is None else threshold

    @staticmethod
    def _lib() -> Any:
        lib = build.load()
        if lib is None:
            raise RuntimeError(f"the cpu backend is unavailable: {build.failure_reason()}")
        if id(lib) not in _DECLARED:
            _declare_phases(lib)
            _DECLARED.add(id(lib))
        return lib

    # ------------------------------------------------------------------------------------------- phases
    def stats(self, x: Tensor, mask: Tensor | None = None) -> Moments:
        view = NCSView(x)
        if view.M == 0:
            return empty_moments(x)
        x = view.arrange(x)
        flags = None
        if mask is not None:
            if mask.dtype != torch.bool or mask.shape != (view.N, view.S):
                raise ValueError(f"mask must be a boolean (N, L) = {(view.N, view.S)} tensor, got {mask.dtype} "
                                 f"{tuple(mask.shape)}")
            flags = mask.contiguous().view(torch.uint8)  # one byte per (n, s), in the order both layouts walk
        acc = accumulation_dtype(x.dtype)
        count, mean, m2 = (torch.empty(view.C, dtype=acc) for _ in range(3))
        status = self._lib().bnlab_stats(_DTYPE_CODES[x.dtype], x.data_ptr(), _ptr(flags), view.N, view.C, view.S,
                                         _layout(view), count.data_ptr(), mean.data_ptr(), m2.data_ptr(),
                                         _threads(view))
        _check(status, "stats")
        return Moments(count, mean, m2)

    def elemt(self, x: Tensor, mean: Tensor, invstd: Tensor, weight: Tensor | None, bias: Tensor | None,
              residual: Tensor | None = None, activation: str = "identity",
              negative_slope: float = 0.01) -> Tensor:
        view = NCSView(x)
        x = view.arrange(x)
        res = None if residual is None else view.arrange(residual)
        y = view.empty(x)
        mu, rstd, w, b = _vecs(mean, invstd, weight, bias)
        status = self._lib().bnlab_elemt(
            _DTYPE_CODES[x.dtype], x.data_ptr(), _ptr(res), y.data_ptr(), _ptr(mu), _ptr(rstd), _ptr(w), _ptr(b),
            view.N, view.C, view.S, _layout(view), ACTIVATION_CODES[activation], negative_slope, _threads(view))
        _check(status, "elemt")
        return y

    def backward_reduce(self, grad_y: Tensor, saved: Tensor, mean: Tensor, invstd: Tensor, weight: Tensor | None,
                        bias: Tensor | None, residual: Tensor | None = None, activation: str = "identity",
                        negative_slope: float = 0.01, from_output: bool = False) -> GradSums:
        view = NCSView(saved)
        saved, grad_y = view.arrange(saved), view.arrange(grad_y)
        res = None if residual is None else view.arrange(residual)
        acc = accumulation_dtype(saved.dtype)
        sum_dz, sum_dz_xhat = (torch.empty(view.C, dtype=acc) for _ in range(2))
        w, b, mu, rstd = _vecs(weight, bias, mean, invstd)
        status = self._lib().bnlab_backward_reduce(
            _DTYPE_CODES[saved.dtype], grad_y.data_ptr(), saved.data_ptr(), _ptr(res), _ptr(w), _ptr(b), _ptr(mu),
            _ptr(rstd), view.N, view.C, view.S, _layout(view), ACTIVATION_CODES[activation], negative_slope,
            int(from_output), sum_dz.data_ptr(), sum_dz_xhat.data_ptr(), _threads(view))
        _check(status, "backward_reduce")
        return GradSums(sum_dz, sum_dz_xhat)

    def backward_elemt(self, grad_y: Tensor, saved: Tensor, mean: Tensor, invstd: Tensor, weight: Tensor | None,
                       bias: Tensor | None, sums: GradSums, count: Tensor | float,
                       residual: Tensor | None = None, activation: str = "identity", negative_slope: float = 0.01,
                       from_output: bool = False, need_dresidual: bool = False) -> tuple[Tensor, Tensor | None]:
        view = NCSView(saved)
        saved, grad_y = view.arrange(saved), view.arrange(grad_y)
        res = None if residual is None else view.arrange(residual)
        sum_dz, sum_dz_xhat = sums
        if isinstance(count, Tensor):  # per-channel counts: divide here, and let the kernel divide by 1
            sum_dz, sum_dz_xhat, count = sum_dz / count, sum_dz_xhat / count, 1.0
        dx = view.empty(saved)
        dres = view.empty(saved) if need_dresidual else None
        w, b, mu, rstd, s1, s2 = _vecs(weight, bias, mean, invstd, sum_dz, sum_dz_xhat)
        status = self._lib().bnlab_backward_elemt(
            _DTYPE_CODES[saved.dtype], grad_y.data_ptr(), saved.data_ptr(), _ptr(res), _ptr(w), _ptr(b), _ptr(mu),
            _ptr(rstd), _ptr(s1), _ptr(s2), float(count), view.N, view.C, view.S, _layout(view),
            ACTIVATION_CODES[activation], negative_slope, int(from_output), dx.data_ptr(), _ptr(dres),
            _threads(view))
        _check(status, "backward_elemt")
        return dx, dres

    # ----------------------------------------------------------------------------------- one-pass paths
    def forward_train(self, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float,
                      residual: Tensor | None = None, activation: str = "identity", negative_slope: float = 0.01,
                      check_output: bool = False) -> TrainForward:
        view = NCSView(x)
        x = view.arrange(x)
        res = None if residual is None else view.arrange(residual)
        acc = accumulation_dtype(x.dtype)
        y = view.empty(x)
        # Three separate tensors: outputs of a custom op may not alias one another.
        mean, invstd, var = (torch.empty(view.C, dtype=acc) for _ in range(3))
        w, b = _vecs(weight, bias)
        args = (_DTYPE_CODES[x.dtype], x.data_ptr(), _ptr(res), y.data_ptr(), _ptr(w), _ptr(b), view.N, view.C,
                view.S, _layout(view), eps, ACTIVATION_CODES[activation], negative_slope, mean.data_ptr(),
                invstd.data_ptr(), var.data_ptr(), _threads(view))
        if not check_output:
            _check(self._lib().bnlab_forward_train(*args), "forward_train")
            return TrainForward(y, mean, invstd, var)
        # The kernel reports what save="output" must know while it writes y: no second pass, no tensor read.
        found = (ctypes.c_double * 2)()
        _check(self._lib().bnlab_forward_train_checked(*args, found), "forward_train")
        smallest, zero_gamma = found[0], found[1]
        invertible = zero_gamma == 0 and (activation != "elu" or smallest + 1 >= ELU_MIN_SLOPE)
        return TrainForward(y, mean, invstd, var, invertible)

    def backward(self, grad_y: Tensor, saved: Tensor, mean: Tensor, invstd: Tensor, weight: Tensor | None,
                 bias: Tensor | None = None, residual: Tensor | None = None, activation: str = "identity",
                 negative_slope: float = 0.01, from_output: bool = False,
                 need_dresidual: bool = False) -> TrainBackward:
        view = NCSView(saved)
        saved, grad_y = view.arrange(saved), view.arrange(grad_y)
        res = None if residual is None else view.arrange(residual)
        acc = accumulation_dtype(saved.dtype)
        dx = view.empty(saved)
        dres = view.empty(saved) if need_dresidual else None
        dweight, dbias = (torch.empty(view.C, dtype=acc) for _ in range(2))
        w, b, mu, rstd = _vecs(weight, bias, mean, invstd)
        status = self._lib().bnlab_backward(
            _DTYPE_CODES[saved.dtype], grad_y.data_ptr(), saved.data_ptr(), _ptr(res), _ptr(w), _ptr(b),
            _ptr(mu), _ptr(rstd), view.N, view.C, view.S, _layout(view), ACTIVATION_CODES[activation],
            negative_slope, int(from_output), dx.data_ptr(), _ptr(dres), dweight.data_ptr(), dbias.data_ptr(),
            _threads(view))
        _check(status, "backward")
        return TrainBackward(dx, dweight, dbias, dres)

    def update_running_stats(self, running_mean: Tensor | None, running_var: Tensor | None, batch_mean: Tensor,
                             batch_var: Tensor, values_per_channel: int | Tensor, factor: float | Tensor) -> None:
        # One ctypes call instead of four torch ops (about 10 µs less per training call on a small layer), rounded
        # as those ops round (bit-identical buffers). The common case only: a float momentum, an int count,
        # contiguous float32/float64 buffers; else the default.
        buffers = [t for t in (running_mean, running_var) if t is not None]
        if (isinstance(factor, Tensor) or isinstance(values_per_channel, Tensor) or values_per_channel < 2
                or not buffers or any(t.dtype not in _RUNNING_CODES or not t.is_contiguous() or t.requires_grad
                                      for t in buffers)
                or batch_mean.dtype not in _RUNNING_CODES or batch_var.dtype != batch_mean.dtype
                or not batch_mean.is_contiguous() or not batch_var.is_contiguous()
                or len({t.dtype for t in buffers}) != 1 or any(t.numel() != batch_mean.numel() for t in buffers)):
            super().update_running_stats(running_mean, running_var, batch_mean, batch_var, values_per_channel,
                                         factor)
            return
        bessel = values_per_channel / (values_per_channel - 1)
        status = self._lib().bnlab_update_running(
            _RUNNING_CODES[buffers[0].dtype], _ptr(running_mean), _ptr(running_var),
            _RUNNING_CODES[batch_mean.dtype], batch_mean.data_ptr(), batch_var.data_ptr(), batch_mean.numel(),
            float(factor), bessel)
        _check(status, "update_running")
        for t in buffers:  # written through a pointer: tell autograd, as an in-place torch op would
            _increment_version(t)

    def forward_eval(self, x: Tensor, running_mean: Tensor, running_var: Tensor, weight: Tensor | None,
                     bias: Tensor | None, eps: float, residual: Tensor | None = None, activation: str = "identity",
                     negative_slope: float = 0.01) -> Tensor:
        view = NCSView(x)
        x = view.arrange(x)
        res = None if residual is None else view.arrange(residual)
        y = view.empty(x)
        rm, rv, w, b = _vecs(running_mean, running_var, weight, bias)
        status = self._lib().bnlab_forward_eval(
            _DTYPE_CODES[x.dtype], x.data_ptr(), _ptr(res), y.data_ptr(), _ptr(rm), _ptr(rv), _ptr(w), _ptr(b),
            view.N, view.C, view.S, _layout(view), eps, ACTIVATION_CODES[activation], negative_slope,
            _threads(view))
        _check(status, "forward_eval")
        return y
