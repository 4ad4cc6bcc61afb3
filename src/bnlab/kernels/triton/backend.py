"""The ``triton`` backend's host side: the four phases and the one-pass paths as launches of :mod:`.kernels`.

Where it runs: on CUDA when ``triton`` imports; on CPU tensors only under Triton's interpreter
(``TRITON_INTERPRET=1``). Dtypes: float32, float16, bfloat16 (statistics and arithmetic in float32); float64 is
left to ``native``. Phases: ``_stats_partial`` + ``_stats_merge`` (stats; masked statistics go to torch ops),
``_normalize`` (elemt), ``_grad_partial`` + ``_grad_merge`` (backward_reduce), ``_grad_input`` (backward_elemt);
the one-pass kernels serve a whole training step when a channel block fits in registers.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
from typing import Any

import torch
from torch import Tensor

from bnlab._stats import Moments
from bnlab.kernels import composed
from bnlab.kernels._layout import NCSView
from bnlab.kernels.base import Backend, GradSums, TrainBackward, TrainForward, empty_moments
from bnlab.kernels.triton.plan import Plan, interpreting, plan, programs_wanted
from bnlab.reference.fused import ACTIVATION_CODES, ELU_MIN_SLOPE

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@functools.lru_cache(maxsize=1)
def _triton_import_error() -> str | None:
    # Looked up, not imported: importing triton on a CPU-only machine before TRITON_INTERPRET=1 is set would
    # build its language in compiled mode, and the interpreter could not run in that process afterwards.
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed; pip install triton (or bnlab[triton])"
    return None


def _plan(view: NCSView, device: torch.device) -> Plan:
    return plan(view.C, view.M, view.strides[1] == 1, programs_wanted(device))


class TritonBackend(Backend):
    name = "triton"
    summary = ("Triton kernels for the GPU: one-pass statistics on chip or split with a deterministic merge, "
               "fused residual + activation; CPU only under TRITON_INTERPRET=1")
    environment = ("TRITON_INTERPRET",)

    def unavailable_reason(self, device: torch.device, dtype: torch.dtype) -> str | None:
        if dtype not in _DTYPES:
            return f"the Triton kernels take float32, float16 or bfloat16 inputs, got {dtype}"
        if device.type == "cpu" and not interpreting():
            return "Triton kernels run on CUDA; on CPU only under the interpreter (set TRITON_INTERPRET=1)"
        if device.type not in ("cpu", "cuda"):
            return f"Triton kernels run on CUDA, not {device.type}"
        return _triton_import_error()

    def priority(self, device: torch.device, dtype: torch.dtype) -> int:
        # On the GPU these kernels make fewer passes than ATen's; under the interpreter they are a test vehicle.
        return 30 if device.type == "cuda" else -10

    # ------------------------------------------------------------------------------------------- phases
    def stats(self, x: Tensor, mask: Tensor | None = None) -> Moments:
        if mask is not None:
            return composed.stats(x, mask)  # padded batches: torch ops, not a kernel of their own
        view = NCSView(x)
        if view.M == 0:
            return empty_moments(x)
        from bnlab.kernels.triton import kernels as k

        x = view.arrange(x)
        p = _plan(view, x.device)
        mean, invstd, var = (torch.empty(view.C, dtype=torch.float32, device=x.device) for _ in range(3))
        with launching_on(x.device):
            self._split_stats(k, x, view, p, mean, invstd, var, 1.0)  # ε only feeds invstd, unused here
        return Moments(torch.full_like(mean, float(view.M)), mean, var * view.M)

    @staticmethod
    def _split_stats(k: Any, x: Tensor, view: NCSView, p: Plan, mean: Tensor, invstd: Tensor, var: Tensor,
                     eps: float) -> None:
        # Partial (count, mean, M2) per (channel block, split), merged in split order: deterministic.
        partial = torch.empty(2, p.splits, view.C, dtype=torch.float32, device=x.device)
        counts = torch.empty(p.splits, dtype=torch.float32, device=x.device)
        k._stats_partial[p.split_grid](x, counts, partial[0], partial[1], view.C, view.S, view.M, *view.strides,
                                       p.m_per_split, BLOCK_C=p.block_c, BLOCK_M=p.block_m)
        k._stats_merge[p.channel_grid](x, counts, partial[0], partial[1], mean, invstd, var, view.C,
                                       view.strides[1], p.splits, eps, BLOCK_C=p.block_c)

    def elemt(self, x: Tensor, mean: Tensor, invstd: Tensor, weight: Tensor | None, bias: Tensor | None,
              residual: Tensor | None = None, activation: str = "identity",
              negative_slope: float = 0.01) -> Tensor:
        from bnlab.kernels.triton import kernels as k

        view = NCSView(x)
        x = view.arrange(x)
        res = None if residual is None else view.arrange(residual)
        y = view.empty(x)
        p = _plan(view, x.device)
        with launching_on(x.device):
            k._normalize[p.tile_grid](x, _or(res, x), y, _param(weight, x), _param(bias, x), _param(mean, x),
                                      _param(invstd, x), _param(None, x), view.C, view.S, view.M, *view.strides,
                                      negative_slope,
                                      **_flags(activation, res, weight, bias), SMALLEST=False, BLOCK_C=p.block_c,
                                      BLOCK_M=p.tile_m)
        return y

    def backward_reduce(self, grad_y: Tensor, saved: Tensor, mean: Tensor, invstd: Tensor, weight: Tensor | None,
                        bias: Tensor | None, residual: Tensor | None = None, activation: str = "identity",
                        negative_slope: float = 0.01, from_output: bool = False) -> GradSums:
        from bnlab.kernels.triton import kernels as k

        view = NCSView(saved)
        saved, grad_y = view.arrange(saved), view.arrange(grad_y)
        res = None if residual is None else view.arrange(residual)
        sum_dz_xhat, sum_dz = (torch.empty(view.C, dtype=torch.float32, device=saved.device) for _ in range(2))
        p = _plan(view, saved.device)
        with launching_on(saved.device):
            self._grad_sums(k, grad_y, saved, res, weight, bias, mean, invstd, view, p, activation, negative_slope,
                            from_output, sum_dz_xhat, sum_dz)
        return GradSums(sum_dz, sum_dz_xhat)

    @staticmethod
    def _grad_sums(k: Any, grad_y: Tensor, saved: Tensor, res: Tensor | None, weight: Tensor | None,
                   bias: Tensor | None, mean: Tensor, invstd: Tensor, view: NCSView, p: Plan, activation: str,
                   negative_slope: float, from_output: bool, dweight: Tensor, dbias: Tensor) -> None:
        # Partial Σdz and Σdz·x̂ per (channel block, split), summed in split order: deterministic.
        partial = torch.empty(2, p.splits, view.C, dtype=torch.float32, device=saved.device)
        k._grad_partial[p.split_grid](grad_y, saved, _or(res, saved), _param(weight, saved), _param(bias, saved),
                                      _param(mean, saved), _param(invstd, saved), partial[0], partial[1], view.C,
                                      view.S, view.M, *view.strides, negative_slope, p.m_per_split,
                                      **_flags(activation, res, weight, bias), FROM_OUTPUT=from_output,
                                      BLOCK_C=p.block_c, BLOCK_M=p.block_m)
        k._grad_merge[p.channel_grid](partial[0], partial[1], dweight, dbias, view.C, p.splits, BLOCK_C=p.block_c)

    def backward_elemt(self, grad_y: Tensor, saved: Tensor, mean: Tensor, invstd: Tensor, weight: Tensor | None,
                       bias: Tensor | None, sums: GradSums, count: Tensor | float,
                       residual: Tensor | None = None, activation: str = "identity", negative_slope: float = 0.01,
                       from_output: bool = False, need_dresidual: bool = False) -> tuple[Tensor, Tensor | None]:
        from bnlab.kernels.triton import kernels as k

        view = NCSView(saved)
        saved, grad_y = view.arrange(saved), view.arrange(grad_y)
        res = None if residual is None else view.arrange(residual)
        sum_dz, sum_dz_xhat = sums
        if isinstance(count, Tensor):  # per-channel counts: divide on the device, and let the kernel divide by 1
            sum_dz, sum_dz_xhat, count = sum_dz / count, sum_dz_xhat / count, 1.0
        dx = view.empty(saved)
        dres = view.empty(saved) if need_dresidual else None
        p = _plan(view, saved.device)
        with launching_on(saved.device):
            self._grad_input(k, grad_y, saved, res, dx, dres, weight, bias, mean, invstd, _param(sum_dz_xhat, saved),
                             _param(sum_dz, saved), float(count), view, p, activation, negative_slope, from_output)
        return dx, dres

    @staticmethod
    def _grad_input(k: Any, grad_y: Tensor, saved: Tensor, res: Tensor | None, dx: Tensor, dres: Tensor | None,
                    weight: Tensor | None, bias: Tensor | None, mean: Tensor, invstd: Tensor, dweight: Tensor,
                    dbias: Tensor, count: float, view: NCSView, p: Plan, activation: str, negative_slope: float,
                    from_output: bool) -> None:
        k._grad_input[p.tile_grid](grad_y, saved, _or(res, saved), dx, _or(dres, dx), _param(weight, saved),
                                   _param(bias, saved), _param(mean, saved), _param(invstd, saved), dweight, dbias,
                                   view.C, view.S, view.M, *view.strides, negative_slope, count,
                                   **_flags(activation, res, weight, bias), FROM_OUTPUT=from_output,
                                   WRITE_DRES=dres is not None, BLOCK_C=p.block_c, BLOCK_M=p.tile_m)

    # ----------------------------------------------------------------------------------- one-pass paths
    def forward_train(self, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float,
                      residual: Tensor | None = None, activation: str = "identity", negative_slope: float = 0.01,
                      check_output: bool = False) -> TrainForward:
        from bnlab.kernels.triton import kernels as k

        view = NCSView(x)
        x = view.arrange(x)
        res = None if residual is None else view.arrange(residual)
        y = view.empty(x)
        # Separate tensors: outputs of a custom op may not alias one another.
        mean, invstd, var = (torch.empty(view.C, dtype=torch.float32, device=x.device) for _ in range(3))
        p = _plan(view, x.device)
        smallest = check_output and activation == "elu"
        programs = p.c_blocks if p.one_pass else p.m_tiles * p.c_blocks
        lo = torch.empty(programs if smallest else 1, dtype=torch.float32, device=x.device)
        flags = _flags(activation, res, weight, bias)
        w, b = _param(weight, x), _param(bias, x)
        common = (view.C, view.S, view.M, *view.strides)
        with launching_on(x.device):
            if p.one_pass:
                k._forward_one_pass[p.channel_grid](x, _or(res, x), y, w, b, mean, invstd, var, lo, *common, eps,
                                                    negative_slope, **flags, SMALLEST=smallest, BLOCK_C=p.block_c,
                                                    BLOCK_M=p.block_m)
            else:
                self._split_stats(k, x, view, p, mean, invstd, var, eps)
                k._normalize[p.tile_grid](x, _or(res, x), y, w, b, mean, invstd, lo, *common, negative_slope,
                                          **flags, SMALLEST=smallest, BLOCK_C=p.block_c, BLOCK_M=p.tile_m)
        invertible = None
        if check_output:
            # Decided on the device from what the kernels wrote (no second pass over y); the caller reads it.
            ok = torch.ones((), dtype=torch.bool, device=x.device)
            if weight is not None:
                ok = ok & (weight != 0).all()
            invertible = ok & (lo.min() + 1 >= ELU_MIN_SLOPE) if smallest else ok
        return TrainForward(y, mean, invstd, var, invertible)

    def backward(self, grad_y: Tensor, saved: Tensor, mean: Tensor, invstd: Tensor, weight: Tensor | None,
                 bias: Tensor | None = None, residual: Tensor | None = None, activation: str = "identity",
                 negative_slope: float = 0.01, from_output: bool = False,
                 need_dresidual: bool = False) -> TrainBackward:
        from bnlab.kernels.triton import kernels as k

        view = NCSView(saved)
        saved, grad_y = view.arrange(saved), view.arrange(grad_y)
        res = None if residual is None else view.arrange(residual)
        dx = view.empty(saved)
        dres = view.empty(saved) if need_dresidual else None
        dweight, dbias = (torch.empty(view.C, dtype=torch.float32, device=saved.device) for _ in range(2))
        p = _plan(view, saved.device)
        flags = {**_flags(activation, res, weight, bias), "FROM_OUTPUT": from_output}
        w, b = _param(weight, saved), _param(bias, saved)
        mu, rstd = _param(mean, saved), _param(invstd, saved)
        with launching_on(saved.device):
            if p.one_pass:
                k._backward_one_pass[p.channel_grid](grad_y, saved, _or(res, saved), dx, _or(dres, dx), w, b, mu,
                                                     rstd, dweight, dbias, view.C, view.S, view.M, *view.strides,
                                                     negative_slope, **flags, WRITE_DRES=dres is not None,
                                                     BLOCK_C=p.block_c, BLOCK_M=p.block_m)
            else:
                self._grad_sums(k, grad_y, saved, res, weight, bias, mean, invstd, view, p, activation,
                                negative_slope, from_output, dweight, dbias)
                self._grad_input(k, grad_y, saved, res, dx, dres, weight, bias, mean, invstd, dweight, dbias,
                                 float(view.M), view, p, activation, negative_slope, from_output)
        return TrainBackward(dx, dweight, dbias, dres)

    def forward_eval(self, x: Tensor, running_mean: Tensor, running_var: Tensor, weight: Tensor | None,
                     bias: Tensor | None, eps: float, residual: Tensor | None = None, activation: str = "identity",
                     negative_slope: float = 0.01) -> Tensor:
        # 1/√(Var + ε) is a (C,) op beside the elementwise pass.
        return self.elemt(x, running_mean.float(), torch.rsqrt(running_var.float() + eps), weight, bias, residual,
                          activation, negative_slope)


def launching_on(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """The context a launch runs in: the input's GPU (Triton launches on the current CUDA device, which need not
    be the input's), or nothing on the CPU (the interpreter)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _flags(activation: str, res: Tensor | None, weight: Tensor | None, bias: Tensor | None) -> dict[str, Any]:
    return {"ACT": ACTIVATION_CODES[activation], "HAS_RES": res is not None, "HAS_W": weight is not None,
            "HAS_B": bias is not None}


def _param(t: Tensor | None, like: Tensor) -> Tensor:
    # A (C,) float32 vector, or a dummy pointer when absent (the kernel's HAS_W / HAS_B flag skips it).
    return t.float().contiguous() if t is not None else like.new_empty(1, dtype=torch.float32)


def _or(t: Tensor | None, fallback: Tensor) -> Tensor:
    # An absent optional tensor is passed as some valid pointer; its constexpr flag keeps the kernel off it.
    return fallback if t is None else t
