"""The ``native`` backend: PyTorch's own ATen batch-norm kernels behind bnlab's contract.

It is the baseline every other backend is measured against, and runs wherever PyTorch does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bnlab.kernels.base import FLOAT_DTYPES, Backend, TrainBackward, TrainForward
from bnlab.reference.algorithm1 import accumulation_dtype, values_per_channel


class NativeBackend(Backend):
    name = "native"
    summary = "PyTorch's ATen kernels (torch.native_batch_norm), on every device PyTorch supports"
    provides_complete_op = True

    def unavailable_reason(self, device: torch.device, dtype: torch.dtype) -> str | None:
        if dtype not in FLOAT_DTYPES:
            return f"batch norm needs a floating-point input, got {dtype}"
        return None

    def priority(self, device: torch.device, dtype: torch.dtype) -> int:
        return 10

    def forward_train(self, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> TrainForward:
        channels, acc = x.shape[1], accumulation_dtype(x.dtype)
        # Scratch running buffers at momentum 1 receive μ_B and the unbiased variance from the same pass over
        # x that normalizes it; ATen returns 1/√(σ²+ε) but not σ²_B itself, which the running update needs.
        scratch_mean, scratch_var = torch.zeros(2, channels, dtype=acc, device=x.device)
        y, mean, invstd = torch.native_batch_norm(x, weight, bias, scratch_mean, scratch_var, True, 1.0, eps)
        m = values_per_channel(x)
        var = scratch_var * ((m - 1) / m)  # back to the biased σ²_B of the contract
        return TrainForward(y, mean, invstd, var)  # already float32 (float64): the scratch buffers set it

    def backward(self, grad_y: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor,
                 invstd: Tensor) -> TrainBackward:
        acc = accumulation_dtype(x.dtype)
        dx, dweight, dbias = torch.ops.aten.native_batch_norm_backward(
            grad_y, x, weight, None, None, mean, invstd, True, 0.0, [True, True, True]
        )
        if dweight.dtype != acc:  # ATen gives parameter gradients in x's dtype when there is no weight
            dweight, dbias = dweight.to(acc), dbias.to(acc)
        return TrainBackward(dx, dweight, dbias)

    def forward_eval(self, x: Tensor, running_mean: Tensor, running_var: Tensor, weight: Tensor | None,
                     bias: Tensor | None, eps: float) -> Tensor:
        return torch.native_batch_norm(x, weight, bias, running_mean, running_var, False, 0.0, eps)[0]

    def complete_batch_norm(self, x: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                            weight: Tensor | None, bias: Tensor | None, training: bool, momentum: float,
                            eps: float) -> Tensor:
        return torch.batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps,
                                torch.backends.cudnn.enabled)
