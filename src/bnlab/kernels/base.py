"""The backend contract: three calls every batch-norm backend answers.

A backend computes; it never touches running statistics, autograd or argument checking. Those live above it,
in :mod:`bnlab.ops` (autograd and the ``torch.library`` custom ops), :mod:`bnlab.functional` (checks,
dispatch) and :mod:`bnlab._stats` (the running-statistics update). That keeps a new backend to three
functions plus a statement of where it can run.

What the caller guarantees to every call:

- ``x`` has shape (N, C, *) with at least two dimensions and at least one element, a floating dtype
  (float16, bfloat16, float32 or float64), and any strides (contiguous, channels_last or neither);
- ``weight``, ``bias``, ``running_mean``, ``running_var`` are None (weight and bias only) or tensors of shape
  (C,) on x's device in the accumulation dtype: float64 for float64 input, float32 otherwise;
- ``grad_y`` has x's shape and dtype and any strides (autograd may hand over an expanded tensor).

What a backend guarantees back:

- ``y`` and ``dx`` have x's shape and dtype and the memory format :func:`memory_format_of` gives for x
  (channels_last input gives channels_last output);
- statistics and parameter gradients have shape (C,) in the accumulation dtype: statistics are accumulated in
  at least float32 whatever the input dtype, and never as E[x²] − E[x]² in the input precision;
- no element of an output is left unwritten and no input is modified.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class TrainForward(NamedTuple):
    """The training forward pass: the output and the per-channel statistics of this mini-batch."""

    y: Tensor  # BN(x), shape and dtype of x
    mean: Tensor  # μ_B, (C,)
    invstd: Tensor  # 1/√(σ²_B + ε), (C,): with mean, all the backward pass needs
    var: Tensor  # σ²_B, biased, (C,): only for the running-statistics update in bnlab._stats


class TrainBackward(NamedTuple):
    """The training backward pass: ∂ℓ/∂x, ∂ℓ/∂γ and ∂ℓ/∂β (γ = 1 when the layer has no weight)."""

    dx: Tensor
    dweight: Tensor
    dbias: Tensor


def memory_format_of(x: Tensor) -> torch.memory_format:
    """The memory format outputs take: channels_last (3d) when x is stored that way, else contiguous."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if x.dim() == 5 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


class Backend(ABC):
    """One implementation of batch norm. Subclasses set ``name`` and ``summary`` and answer the calls below."""

    name: str = ""
    summary: str = ""

    #: True when the backend's library already provides all of ``F.batch_norm`` as one call: autograd, double
    #: backward and the running-statistics update in PyTorch's convention (the one bnlab._stats implements).
    #: Eager mode then calls :meth:`complete_batch_norm` instead of the three calls below, because on small
    #: layers the Python around those calls costs more than the kernels.
    provides_complete_op: bool = False

    @abstractmethod
    def unavailable_reason(self, device: torch.device, dtype: torch.dtype) -> str | None:
        """None when this backend can run on ``device`` for inputs of ``dtype``, else why it cannot."""

    def priority(self, device: torch.device, dtype: torch.dtype) -> int:
        """How strongly ``backend="auto"`` prefers this backend here: the highest available one wins.

        A backend ranks above ``native`` only where the benchmarks show it faster.
        """
        return 0

    def auto_min_numel(self, device: torch.device, dtype: torch.dtype, training: bool, fused: bool = False,
                       channels_last: bool = False) -> int:
        """``"auto"`` passes this backend over for inputs with fewer elements than this (for this kind of call).

        For a backend that is faster than ``native`` on large layers but not on small ones, where the Python
        around its kernels (autograd, argument handling) costs more than it saves, or not faster at all for some
        calls (``sys.maxsize``). ``fused``: the call also adds a residual or applies an activation
        (``bnlab.fused``), work that ``native`` does in separate passes; ``channels_last``: a 4D or 5D input in
        that memory format. 0: no minimum.
        """
        return 0

    @abstractmethod
    def forward_train(self, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> TrainForward:
        """Normalize x with its own mini-batch statistics (Algorithm 1)."""

    @abstractmethod
    def backward(self, grad_y: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor,
                 invstd: Tensor) -> TrainBackward:
        """Gradients of the training forward pass, from the saved μ_B and 1/√(σ²_B + ε)."""

    @abstractmethod
    def forward_eval(self, x: Tensor, running_mean: Tensor, running_var: Tensor, weight: Tensor | None,
                     bias: Tensor | None, eps: float) -> Tensor:
        """Normalize x with population statistics (Algorithm 2): γ/√(Var+ε)·x + (β − γE[x]/√(Var+ε))."""

    def complete_batch_norm(self, x: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                            weight: Tensor | None, bias: Tensor | None, training: bool, momentum: float,
                            eps: float) -> Tensor:
        """All of ``F.batch_norm`` in one call; only for backends with ``provides_complete_op``."""
        raise NotImplementedError(f"backend {self.name!r} does not provide a complete batch-norm op")
