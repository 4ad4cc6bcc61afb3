"""The backend contract: batch norm as the phases PyTorch's SyncBatchNorm is built from, plus optional fast paths.

One operation covers plain batch norm and its fused form, act(BN(x) + r): plain batch norm is the case with no
residual and the identity activation. A backend answers four phase calls:

    stats(x, mask)                      → Moments (count, μ, M2) per channel       mergeable (bnlab._stats)
    elemt(x, μ, invstd, γ, β, r, act)   → y = act(γ·(x − μ)·invstd + β + r)
    backward_reduce(dy, s, μ, invstd, γ, β, r, act, from_output)   → GradSums (Σdz, Σdz·x̂) per channel
    backward_elemt(dy, s, μ, invstd, γ, β, sums, count, r, act, from_output) → (dx, dr)

where s is the tensor saved for backward (x, or y with ``from_output=True``) and dz = ∂ℓ/∂z = ∂ℓ/∂y · act'(z). A
training step is stats → (merge, transform) → elemt forward and backward_reduce → (all-reduce) → backward_elemt
backward; inference is elemt with the population statistics. Variants plug into the gaps: synchronized batch norm
all-reduces the moments and the two sums, ghost batch norm takes moments per ghost batch, batch renorm transforms
the moments, masked batch norm passes a mask to ``stats``. :mod:`bnlab.functional` writes the steps once.

A backend may add one-pass fast paths, :meth:`Backend.forward_train`, :meth:`Backend.backward` and
:meth:`Backend.forward_eval` (the ``cpu`` backend keeps a channel in cache between its phases); the defaults here
compose the phases. Each backend says where it can run; it never touches autograd or argument checks, which live
above it (:mod:`bnlab.functional`, :mod:`bnlab._autograd`), and changes running statistics only when asked to
through :meth:`Backend.update_running_stats`, whose default is :func:`bnlab._stats.update_running_stats` (a backend
may do the same arithmetic in one call of its own: the ``cpu`` backend's replaces four small torch ops).

What the caller guarantees to every call:

- ``x`` has shape (N, C, *) with at least two dimensions and at least one element (``stats`` also takes an empty
  batch), a float dtype (float16, bfloat16, float32 or float64), and any strides (contiguous, channels_last or
  neither); ``residual`` is None or has x's shape and dtype;
- per-channel tensors (``weight``, ``bias``, ``mean``, ``invstd``, running statistics, sums) are None (weight, bias)
  or (C,) tensors on x's device in the accumulation dtype: float64 for float64 input, float32 otherwise;
- ``grad_y`` has x's shape and dtype and any strides (autograd may hand over an expanded tensor);
- ``activation`` is one of :data:`bnlab.reference.fused.ACTIVATIONS`; ``from_output`` only with an invertible one.

What a backend guarantees back:

- ``y``, ``dx`` and ``dr`` have x's shape and dtype and the memory format :func:`memory_format_of` gives for x;
- statistics, sums and parameter gradients are (C,) in the accumulation dtype, accumulated in at least float32
  whatever the input dtype, and never as E[x²] − E[x]² in the input precision;
- no element of an output is left unwritten and no input is modified.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple

import torch
from torch import Tensor

from bnlab._shapes import FLOAT_DTYPES, memory_format_of, values_per_channel
from bnlab._stats import Moments, mean_var, update_running_stats
from bnlab.reference.fused import output_determines_input

__all__ = ["FLOAT_DTYPES", "Backend", "GradSums", "Moments", "TrainBackward", "TrainForward", "memory_format_of"]


class GradSums(NamedTuple):
    """What the backward pass needs of the whole batch, per channel; summed over processes in SyncBatchNorm."""

    sum_dz: Tensor  # Σ ∂ℓ/∂z, which is ∂ℓ/∂β
    sum_dz_xhat: Tensor  # Σ ∂ℓ/∂z · x̂, which is ∂ℓ/∂γ


class TrainForward(NamedTuple):
    """The training forward pass: the output and the per-channel statistics of this mini-batch."""

    y: Tensor  # act(BN(x) + r), shape, dtype and memory format of x
    mean: Tensor  # μ_B, (C,)
    invstd: Tensor  # 1/√(σ²_B + ε), (C,): with mean, all the backward pass needs
    var: Tensor  # σ²_B, biased, (C,): only for the running-statistics update in bnlab._stats
    #: Only when asked (``check_output=True``, for save="output"): whether y determines x̂ (no γ = 0, no ELU output
    #: at its saturation); a bool, or a 0-d bool tensor on x's device. None when not asked.
    invertible: Tensor | bool | None = None


class TrainBackward(NamedTuple):
    """The training backward pass: ∂ℓ/∂x, ∂ℓ/∂γ, ∂ℓ/∂β (γ = 1 when the layer has no weight) and ∂ℓ/∂r."""

    dx: Tensor
    dweight: Tensor
    dbias: Tensor
    dresidual: Tensor | None = None  # only when asked (need_dresidual)


class Backend(ABC):
    """One implementation of batch norm: the four phases, and where it can run.

    Subclasses set ``name`` and ``summary``, answer :meth:`unavailable_reason` and the phases, and may override
    the one-pass fast paths and the ``"auto"`` preferences.
    """

    name: str = ""
    summary: str = ""

    #: True when the backend's library already provides all of ``F.batch_norm`` as one call: autograd, double
    #: backward and the running-statistics update in PyTorch's convention (the one bnlab._stats implements).
    #: Eager plain calls then use :meth:`complete_batch_norm`, because on small layers the Python around the
    #: phases costs more than the kernels.
    provides_complete_op: bool = False

    #: Environment variables :meth:`unavailable_reason` reads: the registry keeps its answers per their values.
    environment: tuple[str, ...] = ()

    # ------------------------------------------------------------------------------------- where it runs
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
        around its kernels costs more than it saves, or not faster at all for some calls (``sys.maxsize``).
        ``fused``: the call also adds a residual or applies an activation, work that ``native`` does in separate
        passes; ``channels_last``: a 4D or 5D input in that memory format. 0: no minimum.
        """
        return 0

    # ------------------------------------------------------------------------------------------- phases
    @abstractmethod
    def stats(self, x: Tensor, mask: Tensor | None = None) -> Moments:
        """(count, μ, M2) per channel of x, in the accumulation dtype (an empty x gives zeros).

        ``mask``: None, or a boolean (N, L) tensor for an (N, C, L) input; only values where it is True count.
        """

    @abstractmethod
    def elemt(self, x: Tensor, mean: Tensor, invstd: Tensor, weight: Tensor | None, bias: Tensor | None,
              residual: Tensor | None = None, activation: str = "identity",
              negative_slope: float = 0.01) -> Tensor:
        """y = act(γ·(x − μ)·invstd + β + r), with any per-channel μ and invstd (the batch's or the population's)."""

    @abstractmethod
    def backward_reduce(self, grad_y: Tensor, saved: Tensor, mean: Tensor, invstd: Tensor, weight: Tensor | None,
                        bias: Tensor | None, residual: Tensor | None = None, activation: str = "identity",
                        negative_slope: float = 0.01, from_output: bool = False) -> GradSums:
        """(Σ dz, Σ dz·x̂) per channel, from the saved x (or y with ``from_output``)."""

    @abstractmethod
    def backward_elemt(self, grad_y: Tensor, saved: Tensor, mean: Tensor, invstd: Tensor, weight: Tensor | None,
                       bias: Tensor | None, sums: GradSums, count: Tensor | float,
                       residual: Tensor | None = None, activation: str = "identity", negative_slope: float = 0.01,
                       from_output: bool = False, need_dresidual: bool = False) -> tuple[Tensor, Tensor | None]:
        """(∂ℓ/∂x, ∂ℓ/∂r or None): dx = γ·invstd·(dz − Σdz/count − x̂·Σ(dz·x̂)/count), dr = dz.

        ``sums`` and ``count`` (values per channel, a number or a (C,) tensor) are those of the whole batch the
        statistics were taken over, which may be larger than this one (synchronized batch norm).
        """

    # ------------------------------------------------------------------------ one-pass paths (optional)
    def forward_train(self, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float,
                      residual: Tensor | None = None, activation: str = "identity", negative_slope: float = 0.01,
                      check_output: bool = False) -> TrainForward:
        """The training forward pass with the batch's own statistics (Algorithm 1): stats, then elemt.

        ``check_output``: also say whether y determines x̂ (``TrainForward.invertible``), for save="output".
        """
        mean, var = mean_var(self.stats(x))
        invstd = torch.rsqrt(var + eps)
        y = self.elemt(x, mean, invstd, weight, bias, residual, activation, negative_slope)
        invertible = output_determines_input(y, weight, activation) if check_output else None
        return TrainForward(y, mean, invstd, var, invertible)

    def backward(self, grad_y: Tensor, saved: Tensor, mean: Tensor, invstd: Tensor, weight: Tensor | None,
                 bias: Tensor | None = None, residual: Tensor | None = None, activation: str = "identity",
                 negative_slope: float = 0.01, from_output: bool = False,
                 need_dresidual: bool = False) -> TrainBackward:
        """Gradients of :meth:`forward_train`, from the saved tensor and μ_B, 1/√(σ²_B + ε): the two phases."""
        sums = self.backward_reduce(grad_y, saved, mean, invstd, weight, bias, residual, activation, negative_slope,
                                    from_output)
        dx, dres = self.backward_elemt(grad_y, saved, mean, invstd, weight, bias, sums, values_per_channel(saved),
                                       residual, activation, negative_slope, from_output, need_dresidual)
        return TrainBackward(dx, sums.sum_dz_xhat, sums.sum_dz, dres)

    def forward_eval(self, x: Tensor, running_mean: Tensor, running_var: Tensor, weight: Tensor | None,
                     bias: Tensor | None, eps: float, residual: Tensor | None = None, activation: str = "identity",
                     negative_slope: float = 0.01) -> Tensor:
        """Inference with population statistics (Algorithm 2): elemt with E[x] and 1/√(Var[x] + ε)."""
        return self.elemt(x, running_mean, torch.rsqrt(running_var + eps), weight, bias, residual, activation,
                          negative_slope)

    def update_running_stats(self, running_mean: Tensor | None, running_var: Tensor | None, batch_mean: Tensor,
                             batch_var: Tensor, values_per_channel: int | Tensor, factor: float | Tensor) -> None:
        """Fold one training call's μ_B and σ²_B into the running buffers, in place, as
        :func:`bnlab._stats.update_running_stats` does (its arguments; that function is the default)."""
        update_running_stats(running_mean, running_var, batch_mean, batch_var, values_per_channel, factor)

    def complete_batch_norm(self, x: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                            weight: Tensor | None, bias: Tensor | None, training: bool, momentum: float,
                            eps: float) -> Tensor:
        """All of ``F.batch_norm`` in one call; only for backends with ``provides_complete_op``."""
        raise NotImplementedError(f"backend {self.name!r} does not provide a complete batch-norm op")


def empty_moments(x: Tensor) -> Moments:
    """The moments of an empty batch (count 0): what every backend's ``stats`` answers for N·S = 0."""
    zeros = torch.zeros(x.shape[1], dtype=torch.float64 if x.dtype == torch.float64 else torch.float32,
                        device=x.device)
    return Moments(zeros, zeros.clone(), zeros.clone())
