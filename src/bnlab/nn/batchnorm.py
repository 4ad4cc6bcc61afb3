"""Drop-in ``BatchNorm1d/2d/3d``: subclasses of torch's modules that run on a bnlab backend.

They keep torch's constructor, buffers, state_dict keys, defaults, error types and checkpoint upgrades
(inherited), so ``isinstance(m, torch.nn.BatchNorm2d)`` holds and torch's utilities keep working. They change
only ``forward`` (dispatch to a backend) and ``extra_repr`` (show the backend).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bnlab import _stats
from bnlab._checks import check_act_args, check_batch_norm_args, check_input_rank, check_residual
from bnlab._shapes import INPUT_RANKS
from bnlab.functional import normalize_with_running_then_update, run
from bnlab.kernels import registry
from bnlab.kernels.base import Backend
from bnlab.nn.policy import FOLLOW_MODE, StatsPolicy, UpdateGuard, check_batch_policies, small_batch_error
from bnlab.variants.convention import CONVENTIONS, TORCH_ONLY, check_convention

__all__ = ["BackendMixin", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "assign_backend", "drop_bnlab_state",
           "module_forward"]


def module_forward(module: Any, input: Tensor, residual: Tensor | None = None) -> Tensor:
    """torch's ``_BatchNorm.forward``, step for step, for plain and fused layers alike.

    One difference: everything that can fail (the arguments, the backend) is checked before the batch counter
    moves, so a call that raises leaves the module exactly as it was (torch counts the batch first). The layer's
    :class:`~bnlab.nn.policy.StatsPolicy` overrides what the mode decides.
    """
    if input.dim() not in module._bnlab_ranks:
        check_input_rank(input, module._bnlab_ranks, type(module).__name__)
    # Each parameter and buffer read once: a module attribute lookup goes through nn.Module.__getattr__, about
    # half a microsecond each, a cost small layers notice.
    running_mean, running_var, weight, bias = module.running_mean, module.running_var, module.weight, module.bias
    training = module.training
    if (running_mean is not None and running_var is not None and residual is None
            and module.stats_policy is FOLLOW_MODE and module.activation == "identity" and module.save == "input"):
        y = complete_op_fast_path(module, input, running_mean, running_var, weight, bias, training)
        if y is not None:
            return y
    # Batch statistics in training, and in eval when there are no running statistics to use.
    use_batch_stats = training or (running_mean is None and running_var is None)
    update = training and module.track_running_stats
    policy = module.stats_policy
    if policy is not FOLLOW_MODE:
        use_batch_stats, update = policy.decide(use_batch_stats, update,
                                                running_mean is not None and running_var is not None,
                                                type(module).__name__)
    if use_batch_stats and input.shape[1] and input.numel() == input.shape[1]:  # one value per channel
        if module.small_batch == "running" and running_mean is not None and running_var is not None:
            use_batch_stats = update = False
        else:
            raise small_batch_error(type(module).__name__, input.shape)
    recomputed = update and _stats.is_recomputation()
    if recomputed and running_mean is not None and running_var is not None:
        # A forward recomputed by activation checkpointing normalizes again but must not count the batch twice:
        # it updates copies, so that it runs the same op as the first time (checkpoint compares what they save).
        running_mean, running_var = running_mean.clone(), running_var.clone()
    if use_batch_stats and not update:
        running_mean = running_var = None
    check_batch_norm_args(input, running_mean, running_var, weight, bias, use_batch_stats or update, module.eps)
    activation, slope, save = module.activation, module.negative_slope, module.save
    if residual is not None or activation != "identity" or save != "input":
        # The fused layer's attributes may have been changed since __init__ checked them.
        check_act_args(activation, slope, save)
        check_residual(input, residual)
    chosen: Backend | Tensor
    if torch.compiler.is_compiling():
        # The backend as an id tensor, resolved when the graph runs: a name would be a guard per module.
        chosen = module.backend_id
    else:
        chosen = registry.resolve_for(module._bnlab_backend, input, use_batch_stats,
                                      residual is not None or activation != "identity")
    factor: float | Tensor = 0.0
    guard = None
    if update:
        factor = 0.0 if module.momentum is None else module.momentum
        counter = module.num_batches_tracked
        if module.non_finite != "propagate":
            guard = UpdateGuard(module, running_mean, running_var, counter)
        if counter is not None:
            # (On a recomputation the counter is copied too: what the copies are updated with is thrown away.)
            factor = _stats.advance(counter.clone() if recomputed else counter, module.momentum)
        if not use_batch_stats:
            y = normalize_with_running_then_update(chosen, input, running_mean, running_var, weight, bias,
                                                   factor, module.eps, residual, activation, slope)
            if guard is not None:
                guard.settle()
            return y
    y = run(chosen, input, running_mean, running_var, weight, bias, use_batch_stats, factor, module.eps,
            residual, activation, slope, save)
    if guard is not None:
        guard.settle()
    return y


def complete_op_fast_path(module: Any, input: Tensor, running_mean: Tensor, running_var: Tensor,
                          weight: Tensor | None, bias: Tensor | None, training: bool) -> Tensor | None:
    """A plain eager call of a layer with running statistics, on a backend with a complete op: the kernel first,
    the checks only if it fails. None: the call needs the full path of :func:`module_forward`.

    The complete op (ATen's) checks the arguments itself before it reads or writes anything, so a call that fails
    changes nothing and bnlab's checks can wait for a failure: ``check_batch_norm_args`` then raises bnlab's message
    in torch's order, or, where it finds nothing wrong, the kernel's own error stands. This saves the checks' cost
    (about 1.5 µs, issue 9's per-call overhead) on every good call. What the kernel would accept silently is still
    tested first: running statistics that require grad, ε out of range, one value per channel in training. The batch
    is counted after the kernel succeeds: a call that raises leaves the counter alone, as on the full path.
    """
    if torch.compiler.is_compiling() or not input.numel():
        return None
    eps = module.eps
    try:
        # First: a backend without a complete op (cpu, triton) leaves at once for the full path. One that cannot
        # take this input leaves too: the full path raises, after the checks it makes first (the layer's policies
        # included), as it would without this shortcut.
        chosen = registry.resolve_for(module._bnlab_backend, input, training, False)
    except Exception:
        return None
    if not chosen.provides_complete_op:
        return None
    if eps < 0.0 or (torch.is_grad_enabled() and (running_mean.requires_grad or running_var.requires_grad)):
        return None
    momentum = 0.0
    if training:
        momentum = module.momentum
        if (momentum is None or eps == 0.0 or not module.track_running_stats or module.non_finite != "propagate"
                or input.numel() == input.shape[1] or _stats.is_recomputation()):
            return None
    try:
        y = chosen.complete_batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    except Exception:
        check_batch_norm_args(input, running_mean, running_var, weight, bias, training, eps)
        raise
    if training and module.num_batches_tracked is not None:
        module.num_batches_tracked.add_(1)
    return y


# A leaf for torch.fx: a traced graph calls this with the module itself, so .train()/.eval() on the traced
# GraphModule still switches the mode, as it does for torch's own batch-norm modules.
torch.fx.wrap("module_forward")


class BackendMixin:
    """What bnlab adds to a torch batch-norm class: a backend name, a statistics policy and a forward that uses them.

    The plain layers are the fused operation with the identity activation and no residual (``activation``,
    ``negative_slope`` and ``save`` below); :class:`bnlab.nn.BatchNormAct2d` and its siblings set them.
    """

    _bnlab_ranks: tuple[int, ...] = ()
    #: Where the statistics that normalize come from and whether a forward updates the running ones; the default
    #: follows the mode as torch does. Set by bnlab.freeze.
    stats_policy: StatsPolicy = FOLLOW_MODE
    activation: str = "identity"
    negative_slope: float = 0.01
    save: str = "input"
    #: What a training batch with one value per channel does, and what a batch with non-finite statistics does to
    #: the running statistics (nn/policy.py: SMALL_BATCH, NON_FINITE); the defaults are torch's behaviour.
    small_batch: str = "error"
    non_finite: str = "propagate"
    #: Whose batch-norm rules the layer follows (docs/compat.md): "torch", "keras", "flax" or "darknet"
    #: (bnlab.variants.convention).
    convention: str = "torch"
    #: The conventions this class takes, and why it refuses the others (the per-class matrix in docs/compat.md).
    _bnlab_conventions: tuple[str, ...] = ("torch",)
    _bnlab_convention_refusal: str = TORCH_ONLY
    #: The backend as a small integer tensor (bnlab.kernels.registry.name_id), on the CPU, outside the state_dict:
    #: what a compiled graph reads instead of the name.
    backend_id: Tensor
    _bnlab_backend: str

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device: Any = None, dtype: Any = None, *, bias: bool = True,
                 backend: str = "auto", small_batch: str = "error", non_finite: str = "propagate",
                 convention: str = "torch") -> None:
        registry.check_backend_name(backend)
        check_batch_policies(small_batch, non_finite)
        check_convention(convention, momentum, type(self).__name__, self._bnlab_conventions,
                         self._bnlab_convention_refusal)
        # Recent torch takes bias=False (γ without β); pass it only when asked, so older torch still works.
        extra = {} if bias else {"bias": False}
        super().__init__(num_features, eps, momentum, affine, track_running_stats,  # type: ignore[call-arg]
                         device, dtype, **extra)
        self.backend = backend
        if small_batch != "error":  # the defaults stay class attributes (a converted torch layer has them too)
            self.small_batch = small_batch
        if non_finite != "propagate":
            self.non_finite = non_finite
        if convention != "torch":
            self.convention = convention

    @property
    def backend(self) -> str:
        """``"auto"`` or the name of the backend this layer runs on."""
        return self._bnlab_backend

    @backend.setter
    def backend(self, name: str) -> None:
        assign_backend(self, name)

    # Read-only views of the policy, under the names bnlab.freeze takes.
    @property
    def normalize_with(self) -> str | None:
        return self.stats_policy.normalize_with

    @property
    def update_stats(self) -> bool | None:
        return self.stats_policy.update_stats

    def forward(self, input: Tensor) -> Tensor:
        if self.convention != "torch":
            from bnlab.nn.variant import convention_forward  # (nn.variant imports this module)

            return convention_forward(self, input)
        return module_forward(self, input)

    def extra_repr(self) -> str:
        policies = "".join(f", {name}={getattr(self, name)!r}" for name, default in
                           (("small_batch", "error"), ("non_finite", "propagate"), ("convention", "torch"))
                           if getattr(self, name) != default)
        return f"{super().extra_repr()}, backend={self.backend!r}{policies}"  # type: ignore[misc]

    def __prepare_scriptable__(self) -> Any:
        # torch.jit.script calls this on every submodule before compiling: say plainly what to use instead of
        # failing deep inside TorchScript's compiler, which cannot follow the Python dispatch to a backend.
        raise RuntimeError(f"torch.jit.script cannot compile bnlab's {type(self).__name__} (TorchScript is "
                           f"deprecated and cannot run bnlab's backends); use torch.compile(model) instead")


def assign_backend(module: object, name: str) -> None:
    """Give ``module`` the backend ``name`` (checked) and its id, outside torch's parameter/buffer machinery."""
    registry.check_backend_name(name)
    module.__dict__["_bnlab_backend"] = name
    module.__dict__["backend_id"] = torch.tensor(registry.name_id(name))


def drop_bnlab_state(module: torch.nn.Module) -> None:
    """Forget what a bnlab layer holds beyond torch's (backend, policy), once its class is torch's again."""
    for name in ("_bnlab_backend", "backend_id", "stats_policy", "small_batch", "non_finite", "convention",
                 "batches_skipped",
                 "_bnlab_warned_non_finite", "r_max", "d_max", "virtual_batch_size"):
        module.__dict__.pop(name, None)


class BatchNorm1d(BackendMixin, torch.nn.BatchNorm1d):
    """Batch norm over (N, C) or (N, C, L) input: statistics per feature C over N (and L).

    Same arguments and defaults as :class:`torch.nn.BatchNorm1d`, plus the keywords ``backend`` (``"auto"`` or a
    name from :func:`bnlab.available_backends`), ``small_batch`` and ``non_finite`` (:mod:`bnlab.nn.policy`);
    ``forward(input, mask=None)`` takes a padding mask.
    """

    _bnlab_ranks = INPUT_RANKS[1]
    _bnlab_conventions = CONVENTIONS

    def forward(self, input: Tensor, mask: Tensor | None = None) -> Tensor:
        """Batch norm of ``input``; with ``mask``, masked batch norm (padded sequences).

        ``mask``: None, or a boolean (N, L) tensor for an (N, C, L) input, True at valid positions. In training the
        statistics are taken over the valid positions only (at least 2), every position is normalized with them,
        and the running statistics are updated from the valid count; in eval the mask changes nothing.
        """
        if mask is None:
            return BackendMixin.forward(self, input)
        if self.convention != "torch":
            raise ValueError(f"a mask with convention={self.convention!r} is not supported; use convention='torch'")
        from bnlab.nn.variant import masked_forward  # (nn.variant imports this module)

        return masked_forward(self, input, mask)


class BatchNorm2d(BackendMixin, torch.nn.BatchNorm2d):
    """Batch norm over (N, C, H, W) input: statistics per channel C over N, H and W.

    Same arguments and defaults as :class:`torch.nn.BatchNorm2d`, plus the keyword ``backend``.
    """

    _bnlab_ranks = INPUT_RANKS[2]
    _bnlab_conventions = CONVENTIONS


class BatchNorm3d(BackendMixin, torch.nn.BatchNorm3d):
    """Batch norm over (N, C, D, H, W) input: statistics per channel C over N, D, H and W.

    Same arguments and defaults as :class:`torch.nn.BatchNorm3d`, plus the keyword ``backend``.
    """

    _bnlab_ranks = INPUT_RANKS[3]
    _bnlab_conventions = CONVENTIONS
