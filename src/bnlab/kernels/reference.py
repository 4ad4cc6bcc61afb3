"""The ``reference`` backend: the paper's formulas of :mod:`bnlab.reference`, unchanged, as a backend.

Slow (several passes, temporaries) but the yardstick: any float dtype, any device, every line readable.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bnlab.kernels.base import FLOAT_DTYPES, Backend, TrainBackward, TrainForward, memory_format_of
from bnlab.reference import algorithm1, algorithm2


class ReferenceBackend(Backend):
    name = "reference"
    summary = "the paper's Algorithms 1 and 2 in plain torch ops (bnlab.reference); slow, any device"

    def unavailable_reason(self, device: torch.device, dtype: torch.dtype) -> str | None:
        if dtype not in FLOAT_DTYPES:
            return f"batch norm needs a floating-point input, got {dtype}"
        return None

    def forward_train(self, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> TrainForward:
        r = algorithm1.forward_train(x, weight, bias, eps)
        return TrainForward(r.y, r.mean, r.invstd, r.var)

    def backward(self, grad_y: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor,
                 invstd: Tensor) -> TrainBackward:
        # The closed form from the saved statistics; tests hold it equal to the paper's term-by-term chain rule.
        g = algorithm1.backward_compact(grad_y, x, mean, invstd, weight)
        # dx follows grad_y's layout through the arithmetic; the contract wants x's.
        return TrainBackward(g.dx.contiguous(memory_format=memory_format_of(x)), g.dgamma, g.dbeta)

    def forward_eval(self, x: Tensor, running_mean: Tensor, running_var: Tensor, weight: Tensor | None,
                     bias: Tensor | None, eps: float) -> Tensor:
        return algorithm2.forward_inference(x, running_mean, running_var, weight, bias, eps)

