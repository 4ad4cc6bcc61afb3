"""``bnlab.tools.freeze``: three independent switches per batch-norm layer, and the frozen-layer conversions.

Fine-tuning with small batches, transfer learning and detection backbones each want a different part of batch
norm held still. The three switches, for the whole model or for layers picked by name:

- ``normalize_with``: normalize with ``"batch"`` or ``"running"`` statistics, whatever the mode;
- ``update_stats``: whether a forward updates the running statistics;
- ``train_affine``: whether γ and β get gradients (``requires_grad``).

Each switch left at None keeps the layer's own behaviour (the first two then follow ``.train()``/``.eval()`` as
in torch). The first two are the layer's declared :class:`~bnlab.nn.policy.StatsPolicy` (``layer.stats_policy``),
which survives ``.train()`` and ``.eval()`` and ``copy.deepcopy`` and is not part of the state_dict. torch's
``BatchNorm1d/2d/3d`` layers are turned into bnlab's (same state_dict, same outputs) because the policy lives in
bnlab's forward.

:func:`to_frozen` and :func:`from_frozen` turn a layer into a :class:`~bnlab.nn.FrozenBatchNorm2d` (and 1d/3d)
and back, keeping every value; :func:`bnlab.convert` with ``to="frozen"`` applies them to a whole model.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from bnlab.nn.frozen import FrozenBatchNormBase
from bnlab.nn.policy import NORMALIZE_WITH, StatsPolicy
from bnlab.tools._layers import BNLAB_TO_TORCH, FROZEN_OF, TORCH_TO_BNLAB, TRAINABLE_OF, select_layers

__all__ = ["freeze", "from_frozen", "to_frozen"]

_BNLAB = tuple(BNLAB_TO_TORCH)


def freeze(model: nn.Module, layers: str | Sequence[str] | None = None, *, normalize_with: str | None = "running",
           update_stats: bool | None = False, train_affine: bool | None = False,
           inplace: bool = False) -> nn.Module:
    """Set the three switches on the chosen batch-norm layers; by default freeze them completely.

    Args:
        model: any module.
        layers: shell-style patterns on qualified module names (``"layer4.*"``, ``["bn1", "*.downsample.1"]``),
            or None for every batch-norm layer. A pattern that matches no batch-norm layer is an error.
        normalize_with: ``"running"`` (default), ``"batch"``, or None to follow the mode.
        update_stats: False (default) never updates the running statistics, True updates them on every forward
            (in eval too), None follows the mode.
        train_affine: False (default) stops γ and β training, True lets them train, None leaves them as they are.
        inplace: change ``model`` itself instead of a deep copy.

    ``freeze(model)`` is the classic frozen batch norm that still has trainable-layer classes;
    ``freeze(model, normalize_with=None, update_stats=None, train_affine=True)`` undoes it. To remove batch
    norm's training machinery altogether, use ``bnlab.convert(model, to="frozen")``.
    """
    if normalize_with not in NORMALIZE_WITH:
        raise ValueError(f"normalize_with must be 'batch', 'running' or None, got {normalize_with!r}")
    for name, value in (("update_stats", update_stats), ("train_affine", train_affine)):
        if value is not None and not isinstance(value, bool):
            raise TypeError(f"{name} must be True, False or None, got {value!r}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"freeze expects a torch.nn.Module, got {type(model).__name__}")
    policy = StatsPolicy(normalize_with, update_stats)
    root = model if inplace else copy.deepcopy(model)
    chosen = select_layers(root, layers)
    switching = normalize_with is not None or update_stats is not None
    for name, module in chosen:
        if switching and not isinstance(module, _BNLAB) and type(module) not in TORCH_TO_BNLAB:
            raise ValueError(
                f"layer {name or 'the model'!r} is a {type(module).__name__}, whose forward bnlab does not control; "
                f"freeze can set only train_affine on it (pass normalize_with=None, update_stats=None), or leave "
                f"it out with the layers argument"
            )
    for _, module in chosen:
        if type(module) in TORCH_TO_BNLAB:
            # Same buffers and parameters, same outputs: only the forward (which honours the switches) changes.
            module.__class__ = TORCH_TO_BNLAB[type(module)]
            setattr(module, "backend", "auto")  # noqa: B010 (mypy types Module attributes as tensors)
        if isinstance(module, _BNLAB):
            setattr(module, "stats_policy", policy)  # noqa: B010 (as above)
        if train_affine is not None:
            for p in (module.weight, module.bias):
                if p is not None:
                    p.requires_grad_(train_affine)
    return root


def to_frozen(module: nn.Module) -> FrozenBatchNormBase:
    """A FrozenBatchNorm with ``module``'s statistics, γ, β, ε, momentum and batch count (copies, not shared).

    Raises ValueError for a layer without running statistics: there is nothing to freeze.
    """
    target = FROZEN_OF.get(type(module))
    if target is None or not isinstance(module, _BatchNorm):
        raise TypeError(f"to_frozen converts torch's or bnlab's BatchNorm1d/2d/3d, got {type(module).__name__}")
    mean, var = module.running_mean, module.running_var
    if mean is None or var is None:
        raise ValueError(
            f"{type(module).__name__}({module.num_features}) has no running statistics "
            f"(track_running_stats=False) and always normalizes with batch statistics, so it cannot be frozen; "
            f"recalibrate a copy built with track_running_stats=True first"
        )
    if getattr(module, "convention", "torch") == "darknet":
        raise ValueError(
            f"{type(module).__name__} follows convention='darknet', whose inference divides by √running_var + ε; a "
            f"FrozenBatchNorm divides by √(running_var + ε) and would change the outputs. Keep the layer and freeze "
            f"it in place with bnlab.freeze(model), or fold it with bnlab.fold(model)")
    weight, bias = module.weight, module.bias
    frozen = target(module.num_features, module.eps, affine=weight is not None, bias=bias is not None,
                    momentum=module.momentum, device=mean.device, dtype=mean.dtype)
    with torch.no_grad():
        frozen.running_mean.copy_(mean)
        frozen.running_var.copy_(var)
        # Assigned, not copied into, so that γ and β keep their own dtype should it differ from the statistics'.
        if weight is not None:
            frozen.weight = weight.detach().clone()
        if bias is not None:
            frozen.bias = bias.detach().clone()
        if module.num_batches_tracked is not None:
            frozen.num_batches_tracked.copy_(module.num_batches_tracked)
    frozen.train(module.training)
    return frozen


def from_frozen(frozen: FrozenBatchNormBase, family: str = "torch", *, backend: str = "auto") -> _BatchNorm:
    """A trainable batch norm of ``family`` ("torch" or "bnlab") with every value of ``frozen``; γ and β become
    parameters again."""
    classes = TRAINABLE_OF.get(type(frozen))
    if classes is None:
        raise TypeError(f"from_frozen converts FrozenBatchNorm1d/2d/3d, got {type(frozen).__name__}")
    if family not in classes:
        raise ValueError(f"family must be 'torch' or 'bnlab', got {family!r}")
    options: dict[str, Any] = {"backend": backend} if family == "bnlab" else {}
    if frozen.affine and frozen.bias is None:
        options["bias"] = False
    mean = frozen.running_mean
    module = classes[family](frozen.num_features, frozen.eps, frozen.momentum, frozen.affine, True,
                                    device=mean.device, dtype=mean.dtype, **options)
    with torch.no_grad():
        for name in ("running_mean", "running_var", "num_batches_tracked", "weight", "bias"):
            source, target = getattr(frozen, name), getattr(module, name)
            if isinstance(source, Tensor) and isinstance(target, Tensor):
                target.data = source.detach().clone()  # keeps each tensor's own dtype, as to_frozen does
    module.train(frozen.training)
    return module
