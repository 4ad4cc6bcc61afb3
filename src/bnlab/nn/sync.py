"""``SyncBatchNorm``: batch norm with statistics over the batches of every process, on any bnlab backend.

A training step arranges the backend's phases (docs/design.md, "Writing a variant over the phases") around one
collective per pass (docs/distributed.md):

    forward    local = backend.stats(x)                     (count, μ, M2) per channel of this rank's part
               all-gather of [header | local]               one collective (nn/sync_exchange.py)
               moments = merge_moments(rank 0, rank 1, ...)  exact (Chan), in rank order: the same on every rank
               y = backend.elemt(x, μ, 1/√(σ² + ε), γ, β, r, act)
    backward   sums = backend.backward_reduce(dy, x, μ, invstd, γ, β, r, act)   (Σdz, Σdz·x̂) of this part
               all-gather of [header | sums], summed in rank order              one collective
               dx, dr = backend.backward_elemt(dy, x, μ, invstd, γ, β, Σ over ranks, global count, r, act)
               ∂ℓ/∂γ, ∂ℓ/∂β = this rank's sums: DDP's gradient all-reduce adds them up over the ranks

so the result equals one-process batch norm on the concatenation of every rank's batch. A rank may hold one value
per channel, or none (its output and gradient are empty, and it still takes part). In eval mode, when
``torch.distributed`` is not initialised, when the group has one process, or on a rank outside ``process_group``,
the layer is plain bnlab batch norm and never communicates.

Activation checkpointing: a forward that the backward pass recomputes (:func:`bnlab._stats.is_recomputation`)
takes the global statistics its first run received (recognised by its local moments) instead of communicating,
and does not update the running statistics a second time.
"""

from __future__ import annotations

import collections
import itertools
from typing import Any

import torch
from torch import Tensor

from bnlab import _stats
from bnlab._checks import check_act_args, check_batch_norm_args, check_input_rank, check_residual
from bnlab._shapes import accumulation_dtype, memory_format_of
from bnlab.kernels import registry
from bnlab.kernels.base import Backend, GradSums, empty_moments
from bnlab.nn.batchnorm import BackendMixin, module_forward
from bnlab.nn.batchnorm_act import ActMixin
from bnlab.nn.policy import FOLLOW_MODE
from bnlab.nn.sync_exchange import BACKWARD, FORWARD, SyncBatchNormError, active_group, all_gather_rows, handshake

__all__ = ["DEFAULT_TIMEOUT", "SYNC_STATE", "AnyRank", "BatchNormActNd", "BatchNormNd", "SyncBatchNorm",
           "SyncBatchNormAct", "SyncBatchNormError", "TorchBatchNormNd", "init_sync_state"]

#: Seconds a rank waits for the others in one exchange before it raises (settable per layer: ``timeout``).
DEFAULT_TIMEOUT = 300.0
#: Forwards whose global statistics a layer keeps for recomputation (activation checkpointing), newest last.
_REPLAY_DEPTH = 32
#: Layer keys of layers built directly (convert() gives keys from the qualified names instead).
_next_key = itertools.count(1)


class AnyRank(tuple):
    """The input ranks a synchronized layer takes: any of at least 2 (iterates as 2..5 for messages)."""

    def __contains__(self, rank: object) -> bool:
        return isinstance(rank, int) and rank >= 2


ANY_RANK = AnyRank((2, 3, 4, 5))


#: The attributes init_sync_state gives a layer (what convert() removes when it turns the layer back).
SYNC_STATE = ("process_group", "sync_key", "sync_name", "timeout", "_sync_calls", "_sync_groups", "_sync_replay")


def init_sync_state(module: Any, process_group: Any, key: int | None = None, name: str | None = None,
                    timeout: float = DEFAULT_TIMEOUT) -> None:
    """Give a layer what synchronization needs beyond torch's state (at construction, or when convert() swaps in
    the class): the group, a key and name for its headers and errors, the call counters and the replay store."""
    module.process_group = process_group
    module.sync_key = next(_next_key) if key is None else key
    module.sync_name = name or f"SyncBatchNorm (layer key {module.sync_key})"
    module.timeout = float(timeout)
    module.__dict__["_sync_calls"] = [0, 0]  # forward and backward exchanges so far
    module.__dict__["_sync_groups"] = set()  # ids of the groups this layer has handshaken with
    module.__dict__["_sync_replay"] = collections.deque(maxlen=_REPLAY_DEPTH)


class _SyncTrainFunction(torch.autograd.Function):
    """y = act(γ·(x − μ)·invstd + β + r) with global μ and invstd; its backward all-gathers the two sums."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, residual: Tensor | None, weight: Tensor | None,  # type: ignore[override]
                bias: Tensor | None, mean: Tensor, invstd: Tensor, count: Tensor, backend: Backend,
                activation: str, slope: float, layer: Any, group: Any) -> Tensor:
        ctx.save_for_backward(x, residual, weight, bias, mean, invstd, count)
        ctx.config = (backend, activation, slope, layer, group)
        if x.numel() == 0:
            return torch.empty_like(x, memory_format=memory_format_of(x))
        return backend.elemt(x, mean, invstd, weight, bias, residual, activation, slope)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        x, residual, weight, bias, mean, invstd, count = ctx.saved_tensors
        backend, activation, slope, layer, group = ctx.config
        need = ctx.needs_input_grad
        if x.numel():
            local = backend.backward_reduce(grad_y, x, mean, invstd, weight, bias, residual, activation, slope)
        else:
            zeros = mean.new_zeros(mean.shape)
            local = GradSums(zeros, zeros.clone())
        calls = layer._sync_calls
        calls[1] += 1
        rows = all_gather_rows(group, torch.cat(local), layer=layer.sync_name, key=layer.sync_key, call=calls[1],
                               phase=BACKWARD, channels=mean.numel(), timeout=layer.timeout)
        total = rows.sum(0)  # in rank order, so every rank gets the same sums
        channels = mean.numel()
        sums = GradSums(total[:channels], total[channels:])
        dres: Tensor | None = None
        if x.numel():
            dx, dres = backend.backward_elemt(grad_y, x, mean, invstd, weight, bias, sums, count, residual,
                                              activation, slope, False, residual is not None and need[1])
        else:
            dx = torch.empty_like(x, memory_format=memory_format_of(x))
            dres = dx.clone() if residual is not None and need[1] else None
        # γ and β get this rank's part of their gradient: DDP's all-reduce of parameter gradients adds the parts.
        dweight = local.sum_dz_xhat if weight is not None and need[2] else None
        dbias = local.sum_dz if bias is not None and need[3] else None
        return dx, dres, dweight, dbias, None, None, None, None, None, None, None, None


# torch.compile runs it eagerly (a graph break): the collective and the header checks are host-side work.
@torch.compiler.disable
def sync_forward(module: Any, input: Tensor, residual: Tensor | None = None) -> Tensor:
    """The forward of :class:`SyncBatchNorm` and :class:`SyncBatchNormAct` (see the module docstring)."""
    if input.dim() < 2:
        check_input_rank(input, ANY_RANK, type(module).__name__)
    group = active_group(module.process_group)
    training = module.training
    use_batch_stats = training or (module.running_mean is None and module.running_var is None)
    update = training and module.track_running_stats
    if module.stats_policy is not FOLLOW_MODE:
        use_batch_stats, update = module.stats_policy.decide(use_batch_stats, update,
                                                             module.running_mean is not None,
                                                             type(module).__name__)
    if group is None or not use_batch_stats or not training:
        return module_forward(module, input, residual)
    recomputed = _stats.is_recomputation()
    update = update and not recomputed
    running_mean, running_var = (module.running_mean, module.running_var) if update else (None, None)
    weight, bias = module.weight, module.bias
    check_batch_norm_args(input, running_mean, running_var, weight, bias, True, module.eps, local_part=True)
    activation, slope = module.activation, module.negative_slope
    fused = residual is not None or activation != "identity"
    if fused:
        check_act_args(activation, slope, module.save)
        check_residual(input, residual)
    backend = registry.resolve_for(module._bnlab_backend, input, True, fused)
    acc = accumulation_dtype(input.dtype)
    with torch.no_grad():
        x = input.detach()
        local = backend.stats(x) if x.numel() else empty_moments(x)
    moments = _replayed(module, local) if recomputed else _exchange_moments(module, group, local)
    count = moments.count
    total = int(count[0]) if count.numel() else 0
    if total <= 1 and count.numel():
        raise ValueError(
            f"{module.sync_name}: expected more than 1 value per channel when training, got {total} over the whole "
            f"process group (input size {tuple(input.shape)} on this rank): a variance needs at least 2 values; "
            f"use larger batches, or call .eval() to use running statistics"
        )
    factor: float | Tensor = 0.0 if module.momentum is None else module.momentum
    if update and module.num_batches_tracked is not None:
        factor = _stats.advance(module.num_batches_tracked, module.momentum)
    mean, var = _stats.mean_var(moments)
    invstd = torch.rsqrt(var + module.eps)
    w = weight if weight is None or weight.dtype == acc else weight.to(acc)
    b = bias if bias is None or bias.dtype == acc else bias.to(acc)
    y = _SyncTrainFunction.apply(input, residual, w, b, mean, invstd, count, backend, activation, float(slope),
                                 module, group)
    if update:
        _stats.update_running_stats(running_mean, running_var, mean, var, count, factor)
    return y


def _exchange_moments(module: Any, group: Any, local: _stats.Moments) -> _stats.Moments:
    channels = local.mean.numel()
    if id(group) not in module._sync_groups:
        handshake(group, local.mean.dtype, local.mean.device, layer=module.sync_name, key=module.sync_key,
                  channels=channels, timeout=module.timeout)
        module._sync_groups.add(id(group))
    calls = module._sync_calls
    calls[0] += 1
    rows = all_gather_rows(group, torch.cat(local), layer=module.sync_name, key=module.sync_key, call=calls[0],
                           phase=FORWARD, channels=channels, timeout=module.timeout)
    merged = _stats.Moments(*rows[0].view(3, channels))
    for row in rows[1:]:  # rank order: every rank merges the same numbers the same way
        merged = _stats.merge_moments(merged, _stats.Moments(*row.view(3, channels)))
    module._sync_replay.append((local, merged))
    return merged


def _replayed(module: Any, local: _stats.Moments) -> _stats.Moments:
    # The newest kept forward whose local moments are these: a recomputation reproduces its input exactly.
    replay = module._sync_replay
    for index in range(len(replay) - 1, -1, -1):
        kept_local, merged = replay[index]
        if all(torch.equal(a, b) for a, b in zip(kept_local, local, strict=True)):
            del replay[index]
            return merged  # type: ignore[no-any-return]
    raise SyncBatchNormError(
        f"{module.sync_name}: a forward recomputed in the backward pass (activation checkpointing) does not match "
        f"any forward this layer synchronized: its input differs from the first run (make the checkpointed "
        f"function deterministic; torch.utils.checkpoint restores the random state when preserve_rng_state=True)"
    )


class SyncBatchNorm(BackendMixin, torch.nn.SyncBatchNorm):
    """Batch norm over (N, C, *) input (any rank ≥ 2) with statistics over every process of ``process_group``.

    Arguments as :class:`torch.nn.SyncBatchNorm` (``process_group=None`` is the default group), plus the keywords
    ``backend`` (``"auto"`` or a name from :func:`bnlab.available_backends`) and ``timeout``: the seconds a rank
    waits for the others in one exchange before raising :class:`SyncBatchNormError` (default 300; also the
    attribute ``timeout``). Every rank must build its synchronized layers in the same order (each gets a key in
    construction order, checked in every exchange); :func:`bnlab.convert` keys them by their names instead.
    Outputs, input gradients, running statistics and ``num_batches_tracked`` equal those of one-process batch
    norm on the concatenation of the ranks' batches; γ and β get this rank's part of their gradient, which DDP
    sums. The state_dict is BatchNorm's.
    """

    _bnlab_ranks = ANY_RANK

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group: Any = None, device: Any = None,
                 dtype: Any = None, *, backend: str = "auto", timeout: float = DEFAULT_TIMEOUT) -> None:
        registry.check_backend_name(backend)
        torch.nn.SyncBatchNorm.__init__(self, num_features, eps, momentum, affine,  # type: ignore[arg-type]
                                        track_running_stats, process_group, device, dtype)
        self.backend = backend
        init_sync_state(self, process_group, timeout=timeout)

    def forward(self, input: Tensor) -> Tensor:
        return sync_forward(self, input)


class SyncBatchNormAct(ActMixin, SyncBatchNorm):
    """act(SyncBatchNorm(x) + residual): :class:`SyncBatchNorm` with the fused layers' ``activation``,
    ``negative_slope`` and residual input (what :func:`bnlab.convert` makes of a ``BatchNormAct*d``). A
    synchronized layer keeps x for backward whatever ``save`` says."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group: Any = None, device: Any = None,
                 dtype: Any = None, *, activation: str = "relu", negative_slope: float = 0.01, save: str = "input",
                 backend: str = "auto", timeout: float = DEFAULT_TIMEOUT) -> None:
        check_act_args(activation, negative_slope, save)
        SyncBatchNorm.__init__(self, num_features, eps, momentum, affine, track_running_stats, process_group,
                               device, dtype, backend=backend, timeout=timeout)
        self.activation, self.negative_slope, self.save = activation, float(negative_slope), save

    def forward(self, input: Tensor, residual: Tensor | None = None) -> Tensor:
        return sync_forward(self, input, residual)


# ------------------------------------------------------------------- what a synchronized layer converts back to
class TorchBatchNormNd(torch.nn.modules.batchnorm._BatchNorm):
    """torch's batch norm (its own forward) over (N, C, *) input of any rank ≥ 2: what ``bnlab.convert(model,
    to="torch")`` makes of a SyncBatchNorm whose original 1d/2d/3d class it does not know."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            check_input_rank(input, ANY_RANK, type(self).__name__)


class BatchNormNd(BackendMixin, TorchBatchNormNd):
    """bnlab batch norm over (N, C, *) input of any rank ≥ 2: what ``bnlab.convert(model, to="bnlab")`` makes of a
    SyncBatchNorm whose original class it does not know. Arguments as :class:`bnlab.BatchNorm2d`."""

    _bnlab_ranks = ANY_RANK


class BatchNormActNd(ActMixin, BatchNormNd):
    """act(BatchNormNd(x) + residual): what a :class:`SyncBatchNormAct` built directly converts back to."""

    def forward(self, input: Tensor, residual: Tensor | None = None) -> Tensor:
        return module_forward(self, input, residual)
