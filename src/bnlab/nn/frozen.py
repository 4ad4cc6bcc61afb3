"""``FrozenBatchNorm1d/2d/3d``: batch norm reduced to the fixed affine map of Algorithm 2, line 11.

y = γ/√(Var[x] + ε) · x + (β − γ·E[x]/√(Var[x] + ε)), with E[x], Var[x], γ and β all held as *buffers*: nothing
is trained, nothing is updated, and the layer computes the same thing in ``.train()`` and ``.eval()``. This is
what detection and segmentation backbones use when their batches are too small for batch statistics.

The buffers and state_dict keys are those of ``torch.nn.BatchNorm*d`` (``weight``, ``bias``, ``running_mean``,
``running_var``, ``num_batches_tracked``), so a plain batch-norm state_dict loads into a frozen layer and back.
``num_batches_tracked`` is kept, unused, so that a conversion to and fro keeps every value; checkpoints older than
PyTorch 0.4.1 that lack it load with the count 0, as torch's own modules do. ``momentum`` is kept for the same
reason and is never used here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bnlab._checks import check_input_rank
from bnlab._shapes import INPUT_RANKS, per_channel
from bnlab.reference.algorithm2 import inference_affine

__all__ = ["FrozenBatchNorm1d", "FrozenBatchNorm2d", "FrozenBatchNorm3d", "FrozenBatchNormBase"]


class FrozenBatchNormBase(torch.nn.Module):
    """Batch norm with fixed statistics and affine parameters; see the module docstring.

    Args:
        num_features: C, the number of channels (dimension 1 of the input).
        eps: ε added to Var[x]. Default 1e-5.
        affine: whether γ and β exist (buffers); without them γ = 1 and β = 0. Default True.
        bias: whether β exists when ``affine`` (torch's ``bias=False`` batch norm has γ but no β). Default True.
        momentum: kept only so that a conversion back to a trainable layer restores it. Default 0.1.

    The statistics start as E[x] = 0, Var[x] = 1 and γ = 1, β = 0 (the identity map up to ε); load a
    state_dict or use :func:`bnlab.convert` with ``to="frozen"`` to fill them.
    """

    _bnlab_ranks: tuple[int, ...] = ()
    _version = 2  # the state_dict layout of torch's batch norm since 0.4.1 (with num_batches_tracked)

    weight: Tensor | None
    bias: Tensor | None
    running_mean: Tensor
    running_var: Tensor
    num_batches_tracked: Tensor

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True, *, bias: bool = True,
                 momentum: float | None = 0.1, device: Any = None, dtype: Any = None) -> None:
        super().__init__()
        if num_features <= 0:
            raise ValueError(f"num_features must be a positive number of channels, got {num_features}")
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.affine = affine
        self.momentum = momentum
        self.register_buffer("weight", torch.ones(num_features, **factory) if affine else None)
        self.register_buffer("bias", torch.zeros(num_features, **factory) if affine and bias else None)
        self.register_buffer("running_mean", torch.zeros(num_features, **factory))
        self.register_buffer("running_var", torch.ones(num_features, **factory))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))

    def scale_and_shift(self) -> tuple[Tensor, Tensor]:
        """The folded map, (C,) each in the accumulation dtype: γ/√(Var+ε) and β − γE[x]/√(Var+ε)."""
        scale, shift = inference_affine(self.running_mean, self.running_var, self.weight, self.bias, self.eps)
        return scale, shift

    def forward(self, input: Tensor) -> Tensor:
        check_input_rank(input, self._bnlab_ranks, type(self).__name__)
        if input.shape[1] != self.num_features:
            raise RuntimeError(
                f"{type(self).__name__}({self.num_features}) got an input of shape {tuple(input.shape)} with "
                f"{input.shape[1]} channels (dimension 1); build the layer with num_features={input.shape[1]}"
            )
        scale, shift = self.scale_and_shift()
        # One multiply-add in the input's dtype; the map itself was computed in float32 or float64.
        return input * per_channel(scale.to(input.dtype), input) + per_channel(shift.to(input.dtype), input)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any],
                              strict: bool, missing_keys: list[str], unexpected_keys: list[str],
                              error_msgs: list[str]) -> None:
        # Checkpoints written before PyTorch 0.4.1 have no num_batches_tracked: count 0, as torch does.
        key = prefix + "num_batches_tracked"
        if key not in state_dict:
            state_dict[key] = torch.zeros((), dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def __prepare_scriptable__(self) -> Any:
        # torch.jit.script calls this on every submodule: one clear refusal instead of a TorchScript parse error.
        raise RuntimeError(f"torch.jit.script cannot compile bnlab's {type(self).__name__} (TorchScript is "
                           f"deprecated and cannot compile bnlab's Python helpers); use torch.compile(model) instead")

    def extra_repr(self) -> str:
        text = f"{self.num_features}, eps={self.eps}"
        if not self.affine:
            text += ", affine=False"
        elif self.bias is None:
            text += ", bias=False"
        return text


class FrozenBatchNorm1d(FrozenBatchNormBase):
    """Frozen batch norm over (N, C) or (N, C, L) input; the frozen counterpart of ``BatchNorm1d``."""

    _bnlab_ranks = INPUT_RANKS[1]


class FrozenBatchNorm2d(FrozenBatchNormBase):
    """Frozen batch norm over (N, C, H, W) input; the frozen counterpart of ``BatchNorm2d``."""

    _bnlab_ranks = INPUT_RANKS[2]


class FrozenBatchNorm3d(FrozenBatchNormBase):
    """Frozen batch norm over (N, C, D, H, W) input; the frozen counterpart of ``BatchNorm3d``."""

    _bnlab_ranks = INPUT_RANKS[3]
