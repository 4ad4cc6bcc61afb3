"""The ``reference`` backend: the float64 formulas of :mod:`bnlab.reference` behind the backend contract.

Slow (several passes, float64 temporaries) but the yardstick: any float dtype, any device, every line readable.
Every phase computes in float64 from start to end and rounds once, to the contract's dtypes, on the way out;
plain and fused calls go through the same functions (plain is the identity activation with no residual).
"""

from __future__ import annotations

import torch
from torch import Tensor

from bnlab._shapes import FLOAT_DTYPES, accumulation_dtype, memory_format_of, working_dtype
from bnlab._stats import Moments, batch_moments
from bnlab.kernels.base import Backend, GradSums, TrainBackward, TrainForward, empty_moments
from bnlab.reference import fused as ref


class ReferenceBackend(Backend):
    name = "reference"
    summary = "the paper's Algorithms 1 and 2 in plain torch ops (bnlab.reference), float64 throughout; slow"

    def unavailable_reason(self, device: torch.device, dtype: torch.dtype) -> str | None:
        if dtype not in FLOAT_DTYPES:
            return f"batch norm needs a floating-point input, got {dtype}"
        return None

    # ------------------------------------------------------------------------------------------- phases
    def stats(self, x: Tensor, mask: Tensor | None = None) -> Moments:
        if x.numel() == 0 and mask is None:
            return empty_moments(x)
        acc = accumulation_dtype(x.dtype)
        return Moments(*(t.to(acc) for t in batch_moments(x, mask, dtype=working_dtype(x))))

    def elemt(self, x: Tensor, mean: Tensor, invstd: Tensor, weight: Tensor | None, bias: Tensor | None,
              residual: Tensor | None = None, activation: str = "identity",
              negative_slope: float = 0.01) -> Tensor:
        y = ref.normalize(x, mean, invstd, weight, bias, residual, activation, negative_slope)[0]
        return _like(y, x)

    def backward_reduce(self, grad_y: Tensor, saved: Tensor, mean: Tensor, invstd: Tensor, weight: Tensor | None,
                        bias: Tensor | None, residual: Tensor | None = None, activation: str = "identity",
                        negative_slope: float = 0.01, from_output: bool = False) -> GradSums:
        dz, xhat = ref.grad_and_xhat(grad_y, saved, mean, invstd, weight, bias, residual, activation,
                                     negative_slope, from_output)
        acc = accumulation_dtype(saved.dtype)
        return GradSums(*(t.to(acc) for t in ref.reduce_grads(dz, xhat)))

    def backward_elemt(self, grad_y: Tensor, saved: Tensor, mean: Tensor, invstd: Tensor, weight: Tensor | None,
                       bias: Tensor | None, sums: GradSums, count: Tensor | float,
                       residual: Tensor | None = None, activation: str = "identity", negative_slope: float = 0.01,
                       from_output: bool = False, need_dresidual: bool = False) -> tuple[Tensor, Tensor | None]:
        dz, xhat = ref.grad_and_xhat(grad_y, saved, mean, invstd, weight, bias, residual, activation,
                                     negative_slope, from_output)
        dx = ref.input_grad(dz, xhat, invstd, weight, sums.sum_dz, sums.sum_dz_xhat, count)
        return _like(dx, saved), (_like(dz, saved) if need_dresidual else None)

    # ------------------------------------------- whole passes: float64 statistics all the way through
    def forward_train(self, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float,
                      residual: Tensor | None = None, activation: str = "identity", negative_slope: float = 0.01,
                      check_output: bool = False) -> TrainForward:
        r = ref.forward_train(x, weight, bias, eps, residual, activation, negative_slope)
        acc = accumulation_dtype(x.dtype)
        y = _like(r.y, x)
        invertible = ref.output_determines_input(y, weight, activation) if check_output else None
        return TrainForward(y, r.mean.to(acc), r.invstd.to(acc), r.var.to(acc), invertible)

    def backward(self, grad_y: Tensor, saved: Tensor, mean: Tensor, invstd: Tensor, weight: Tensor | None,
                 bias: Tensor | None = None, residual: Tensor | None = None, activation: str = "identity",
                 negative_slope: float = 0.01, from_output: bool = False,
                 need_dresidual: bool = False) -> TrainBackward:
        g = ref.backward(grad_y, saved, mean, invstd, weight, bias, residual, activation, negative_slope,
                         from_output)
        acc = accumulation_dtype(saved.dtype)
        dres = _like(g.dresidual, saved) if need_dresidual and g.dresidual is not None else None
        return TrainBackward(_like(g.dx, saved), g.dweight.to(acc), g.dbias.to(acc), dres)

    def forward_eval(self, x: Tensor, running_mean: Tensor, running_var: Tensor, weight: Tensor | None,
                     bias: Tensor | None, eps: float, residual: Tensor | None = None, activation: str = "identity",
                     negative_slope: float = 0.01) -> Tensor:
        y = ref.forward_eval(x, running_mean, running_var, weight, bias, eps, residual, activation, negative_slope)
        return _like(y, x)


def _like(t: Tensor, x: Tensor) -> Tensor:
    # Rounded once to x's dtype, in x's memory format (float64 arithmetic follows grad_y's strides otherwise).
    return t.to(x.dtype).contiguous(memory_format=memory_format_of(x))
