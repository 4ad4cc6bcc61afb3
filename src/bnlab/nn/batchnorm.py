"""Drop-in ``BatchNorm1d/2d/3d``: subclasses of torch's modules that run on a bnlab backend.

They keep torch's constructor, buffers, state_dict keys, defaults, error types and checkpoint upgrades
(inherited), so ``isinstance(m, torch.nn.BatchNorm2d)`` holds and torch's utilities keep working. They change
only ``forward`` (dispatch to a backend) and ``extra_repr`` (show the backend).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from bnlab import _stats
from bnlab._checks import check_batch_norm_args, check_input_rank
from bnlab.functional import _dispatch
from bnlab.kernels import check_backend_name
from bnlab.reference.algorithm1 import accumulation_dtype, reduction_dims, values_per_channel

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]


def _module_forward(module: Any, input: Tensor) -> Tensor:
    """torch's ``_BatchNorm.forward``, step for step, with the counter and factor from :mod:`bnlab._stats`.

    One difference: the arguments are checked before the batch counter moves, so a call that raises leaves
    the module exactly as it was (torch counts the batch first). The switches ``normalize_with`` and
    ``update_stats`` (set by :func:`bnlab.tools.freeze`, None by default) override what the mode decides; see
    :class:`_BackendMixin`.
    """
    call = prepare_call(module, input)
    if call.factor is not None and not call.use_batch_stats:
        return _normalize_with_running_then_update(module, input, call.factor)
    return _dispatch(input, call.running_mean, call.running_var, call.weight, call.bias, call.use_batch_stats,
                     0.0 if call.factor is None else call.factor, module.eps, module.backend)


class Call(NamedTuple):
    """What one module call uses, from :func:`prepare_call`.

    The buffers are None where the call must not use or update them; ``factor`` is the averaging factor of the
    running-statistics update, or None when this call does not update them.
    """

    running_mean: Tensor | None
    running_var: Tensor | None
    weight: Tensor | None
    bias: Tensor | None
    use_batch_stats: bool
    factor: float | Tensor | None


def prepare_call(module: Any, input: Tensor) -> Call:
    """Check a module call and move its batch counter.

    Each parameter and buffer is read once: a module attribute lookup goes through ``nn.Module.__getattr__``,
    about half a microsecond each, a cost small layers notice.
    """
    check_input_rank(input, module._bnlab_ranks, type(module).__name__)
    running_mean, running_var, weight, bias = module.running_mean, module.running_var, module.weight, module.bias
    # Batch statistics in training, and in eval when there are no running statistics to use.
    use_batch_stats = module.training or (running_mean is None and running_var is None)
    update = module.training and module.track_running_stats
    if module.normalize_with is not None or module.update_stats is not None:
        use_batch_stats, update = _switched(module, use_batch_stats, update)
    if use_batch_stats and not update:
        running_mean = running_var = None
    check_batch_norm_args(input, running_mean, running_var, weight, bias, use_batch_stats or update, module.eps)
    factor: float | Tensor | None = None
    if update:
        factor = 0.0 if module.momentum is None else module.momentum
        counter = module.num_batches_tracked
        if counter is not None:
            factor = _stats.advance(counter, module.momentum)
    return Call(running_mean, running_var, weight, bias, use_batch_stats, factor)


def _switched(module: Any, use_batch_stats: bool, update: bool) -> tuple[bool, bool]:
    has_stats = module.running_mean is not None and module.running_var is not None
    if module.normalize_with is not None:
        use_batch_stats = module.normalize_with == "batch"
        if not use_batch_stats and not has_stats:
            raise RuntimeError(
                f"{type(module).__name__} is set to normalize with running statistics but has none "
                f"(track_running_stats=False); set normalize_with='batch' or build it with track_running_stats=True"
            )
    if module.update_stats is not None:
        update = bool(module.update_stats) and has_stats
    return use_batch_stats, update


def _normalize_with_running_then_update(module: Any, input: Tensor, factor: float | Tensor) -> Tensor:
    # The one combination torch's batch_norm has no flag for. The statistics normalize as they were before this
    # batch (copies, because autograd keeps them for the backward pass), then take this batch's update.
    y = _dispatch(input, module.running_mean.clone(), module.running_var.clone(), module.weight, module.bias,
                  False, factor, module.eps, module.backend)
    with torch.no_grad():
        acc = input.detach().to(accumulation_dtype(input.dtype))
        var, mean = torch.var_mean(acc, dim=reduction_dims(input), correction=0)  # μ_B and the biased σ²_B
        _stats.update_running_stats(module.running_mean, module.running_var, mean, var,
                                    values_per_channel(input), factor)
    return y


# A leaf for torch.fx: a traced graph calls this with the module itself, so .train()/.eval() on the traced
# GraphModule still switches the mode, as it does for torch's own batch-norm modules.
torch.fx.wrap("_module_forward")


class _BackendMixin:
    """What bnlab adds to a torch batch-norm class: a backend name and a forward that uses it."""

    _bnlab_ranks: tuple[int, ...] = ()
    backend: str
    #: Where the statistics that normalize come from, whatever the mode: "batch", "running", or None (the default:
    #: batch statistics in training, running statistics in eval, as in torch). Set by bnlab.tools.freeze.
    normalize_with: str | None = None
    #: Whether a forward updates the running statistics, whatever the mode: True, False, or None (the default:
    #: in training, when track_running_stats). Set by bnlab.tools.freeze.
    update_stats: bool | None = None

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device: Any = None, dtype: Any = None, *, bias: bool = True,
                 backend: str = "auto") -> None:
        check_backend_name(backend)
        # Recent torch takes bias=False (γ without β); pass it only when asked, so older torch still works.
        extra = {} if bias else {"bias": False}
        super().__init__(num_features, eps, momentum, affine, track_running_stats,  # type: ignore[call-arg]
                         device, dtype, **extra)
        self.backend = backend

    def forward(self, input: Tensor) -> Tensor:
        return _module_forward(self, input)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, backend={self.backend!r}"  # type: ignore[misc]

    def __prepare_scriptable__(self) -> Any:
        # torch.jit.script calls this on every submodule before compiling: say plainly what to use instead of
        # failing deep inside TorchScript's compiler, which cannot follow the Python dispatch to a backend.
        raise RuntimeError(f"torch.jit.script cannot compile bnlab's {type(self).__name__} (TorchScript is "
                           f"deprecated and cannot run bnlab's backends); use torch.compile(model) instead")


class BatchNorm1d(_BackendMixin, torch.nn.BatchNorm1d):
    """Batch norm over (N, C) or (N, C, L) input: statistics per feature C over N (and L).

    Same arguments and defaults as :class:`torch.nn.BatchNorm1d`, plus the keyword ``backend``: ``"auto"``
    or a name from :func:`bnlab.available_backends`.
    """

    _bnlab_ranks = (2, 3)


class BatchNorm2d(_BackendMixin, torch.nn.BatchNorm2d):
    """Batch norm over (N, C, H, W) input: statistics per channel C over N, H and W.

    Same arguments and defaults as :class:`torch.nn.BatchNorm2d`, plus the keyword ``backend``.
    """

    _bnlab_ranks = (4,)


class BatchNorm3d(_BackendMixin, torch.nn.BatchNorm3d):
    """Batch norm over (N, C, D, H, W) input: statistics per channel C over N, D, H and W.

    Same arguments and defaults as :class:`torch.nn.BatchNorm3d`, plus the keyword ``backend``.
    """

    _bnlab_ranks = (5,)
