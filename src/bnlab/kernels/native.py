"""The ``native`` backend: PyTorch's own ATen batch-norm kernels behind bnlab's contract.

It is the baseline every other backend is measured against, and runs wherever PyTorch does. ATen's SyncBatchNorm
primitives (``torch.batch_norm_stats``, ``batch_norm_elemt``, ``batch_norm_backward_reduce``,
``batch_norm_backward_elemt``) exist for CUDA only in torch 2.13, so the phases are ATen's one-pass statistics
(``torch.batch_norm_update_stats``) and torch ops at the accumulation dtype (:mod:`bnlab.kernels.composed`). The
one-pass paths are ATen's ``native_batch_norm`` and its backward; a residual and an activation are added as
PyTorch's unfused sequence would add them (BN, then ``+ r``, then the activation, each in x's dtype).
"""

from __future__ import annotations

import torch
from torch import Tensor

from bnlab._shapes import FLOAT_DTYPES, accumulation_dtype, memory_format_of, values_per_channel
from bnlab._stats import Moments
from bnlab.kernels import composed
from bnlab.kernels.base import Backend, GradSums, TrainBackward, TrainForward, empty_moments
from bnlab.reference.fused import activate, output_determines_input


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

    # ------------------------------------------------------------------------------------------- phases
    def stats(self, x: Tensor, mask: Tensor | None = None) -> Moments:
        if mask is not None:
            return composed.stats(x, mask)
        m = values_per_channel(x)
        if m == 0:
            return empty_moments(x)
        acc = accumulation_dtype(x.dtype)
        # Scratch running buffers make ATen accumulate in acc even for half inputs; it returns μ_B and the biased
        # σ²_B from one pass over x.
        scratch = torch.zeros(2, x.shape[1], dtype=acc, device=x.device)
        mean, var = torch.batch_norm_update_stats(x, scratch[0], scratch[1], 1.0)
        count = torch.full_like(mean, float(m))
        return Moments(count, mean, var * m)

    def elemt(self, x: Tensor, mean: Tensor, invstd: Tensor, weight: Tensor | None, bias: Tensor | None,
              residual: Tensor | None = None, activation: str = "identity",
              negative_slope: float = 0.01) -> Tensor:
        return composed.elemt(x, mean, invstd, weight, bias, residual, activation, negative_slope)

    def backward_reduce(self, grad_y: Tensor, saved: Tensor, mean: Tensor, invstd: Tensor, weight: Tensor | None,
                        bias: Tensor | None, residual: Tensor | None = None, activation: str = "identity",
                        negative_slope: float = 0.01, from_output: bool = False) -> GradSums:
        return composed.backward_reduce(grad_y, saved, mean, invstd, weight, bias, residual, activation,
                                        negative_slope, from_output)

    def backward_elemt(self, grad_y: Tensor, saved: Tensor, mean: Tensor, invstd: Tensor, weight: Tensor | None,
                       bias: Tensor | None, sums: GradSums, count: Tensor | float,
                       residual: Tensor | None = None, activation: str = "identity", negative_slope: float = 0.01,
                       from_output: bool = False, need_dresidual: bool = False) -> tuple[Tensor, Tensor | None]:
        return composed.backward_elemt(grad_y, saved, mean, invstd, weight, bias, sums, count, residual, activation,
                                       negative_slope, from_output, need_dresidual)

    # ----------------------------------------------------------------------------------- one-pass paths
    def forward_train(self, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float,
                      residual: Tensor | None = None, activation: str = "identity", negative_slope: float = 0.01,
                      check_output: bool = False) -> TrainForward:
        channels, acc = x.shape[1], accumulation_dtype(x.dtype)
        # Scratch running buffers at momentum 1 receive μ_B and the unbiased variance from the same pass over
        # x that normalizes it; ATen returns 1/√(σ²+ε) but not σ²_B itself, which the running update needs.
        scratch_mean, scratch_var = torch.zeros(2, channels, dtype=acc, device=x.device)
        y, mean, invstd = torch.native_batch_norm(x, weight, bias, scratch_mean, scratch_var, True, 1.0, eps)
        m = values_per_channel(x)
        var = scratch_var * ((m - 1) / m)  # back to the biased σ²_B of the contract
        y = _then_residual_and_activation(y, residual, activation, negative_slope)
        invertible = output_determines_input(y, weight, activation) if check_output else None
        return TrainForward(y, mean, invstd, var, invertible)  # already float32 (float64): the scratch set it

    def backward(self, grad_y: Tensor, saved: Tensor, mean: Tensor, invstd: Tensor, weight: Tensor | None,
                 bias: Tensor | None = None, residual: Tensor | None = None, activation: str = "identity",
                 negative_slope: float = 0.01, from_output: bool = False,
                 need_dresidual: bool = False) -> TrainBackward:
        if from_output:  # no ATen kernel starts from the output
            return super().backward(grad_y, saved, mean, invstd, weight, bias, residual, activation,
                                    negative_slope, from_output, need_dresidual)
        grad_z = grad_y
        if activation != "identity":  # the activation's backward first, as autograd would run torch's sequence
            slope = composed.activation_grad_from_x(saved, mean, invstd, weight, bias, residual, activation,
                                                    negative_slope)
            grad_z = (grad_y * slope).to(saved.dtype).contiguous(memory_format=memory_format_of(saved))
        dx, dweight, dbias = torch.ops.aten.native_batch_norm_backward(
            grad_z, saved, weight, None, None, mean, invstd, True, 0.0, [True, True, True]
        )
        acc = accumulation_dtype(saved.dtype)
        if dweight.dtype != acc:  # ATen gives parameter gradients in x's dtype when there is no weight
            dweight, dbias = dweight.to(acc), dbias.to(acc)
        dres = None
        if need_dresidual:
            # ∂ℓ/∂r = ∂ℓ/∂z; a copy where that is grad_y itself (outputs of a custom op may not alias its inputs).
            dres = grad_z if grad_z is not grad_y else grad_y.clone(memory_format=memory_format_of(saved))
        return TrainBackward(dx, dweight, dbias, dres)

    def forward_eval(self, x: Tensor, running_mean: Tensor, running_var: Tensor, weight: Tensor | None,
                     bias: Tensor | None, eps: float, residual: Tensor | None = None, activation: str = "identity",
                     negative_slope: float = 0.01) -> Tensor:
        y = torch.native_batch_norm(x, weight, bias, running_mean, running_var, False, 0.0, eps)[0]
        return _then_residual_and_activation(y, residual, activation, negative_slope)

    def complete_batch_norm(self, x: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                            weight: Tensor | None, bias: Tensor | None, training: bool, momentum: float,
                            eps: float) -> Tensor:
        # The cuDNN switch as F.batch_norm reads it (torch.backends.cudnn.enabled, without the module lookups).
        return torch.batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps,
                                torch._C._get_cudnn_enabled())


def _then_residual_and_activation(y: Tensor, residual: Tensor | None, activation: str,
                                  negative_slope: float) -> Tensor:
    # PyTorch's own unfused sequence after BN: ``+ r`` and the activation, each in x's dtype.
    if residual is not None:
        y = y + residual
    return activate(y, activation, negative_slope) if activation != "identity" else y

