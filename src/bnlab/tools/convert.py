"""``bnlab.convert``: swap torch's batch-norm modules for bnlab's, and back; freeze them, and thaw them.

A conversion between torch and bnlab changes a module's class and nothing else: parameters, buffers, hooks, mode
and hyper-parameters are the same objects afterwards, so outputs do not change, in training or in eval. By
default the model is copied first and the caller's model is left untouched; ``inplace=True`` converts the given
model (and keeps its parameters, so an optimizer built on them keeps working).

``to="sync"`` changes the class of each layer to :class:`bnlab.SyncBatchNorm` (or :class:`~bnlab.nn.SyncBatchNormAct`
for the fused layers, which keep their activation and residual input) and gives it the process group; converting
back to "torch" or "bnlab" restores the class the layer had before, or a class that accepts any input rank
(:class:`~bnlab.nn.sync.BatchNormNd`) for a synchronized layer built as such (torch's ``convert_sync_batchnorm``
keeps no record of the class it replaced).

``to="frozen"`` replaces each layer by a :class:`~bnlab.nn.FrozenBatchNorm2d` (or 1d/3d) holding copies of its
statistics, γ, β, ε, momentum and batch count as buffers; converting to "torch" or "bnlab" turns frozen layers
back into trainable ones with the same values. These replace modules, so hooks on the old layers do not follow.
"""

from __future__ import annotations

import copy
import zlib
from typing import Any

import torch

from bnlab.kernels import check_backend_name
from bnlab.nn.batchnorm import BackendMixin, drop_bnlab_state
from bnlab.nn.batchnorm_act import ActMixin
from bnlab.nn.frozen import FrozenBatchNormBase
from bnlab.nn.sync import (
    SYNC_STATE,
    BatchNormActNd,
    BatchNormNd,
    SyncBatchNorm,
    SyncBatchNormAct,
    TorchBatchNormNd,
    init_sync_state,
)
from bnlab.tools._layers import BNLAB_TO_TORCH, FROZEN_OF, TORCH_TO_BNLAB, replace_modules
from bnlab.tools.freeze import from_frozen, to_frozen
from bnlab.tools.variants import VARIANT_TARGETS, VARIANT_TO_TORCH, check_variant_options, to_variant

__all__ = ["convert"]

TARGETS = ("bnlab", "torch", "frozen", "sync", *VARIANT_TARGETS)
#: The attribute where a layer converted to sync keeps the class it had, for the way back.
CONVERTED_FROM = "_bnlab_converted_from"
#: Header keys are the qualified names' CRC-32 below 2**20 (nn/sync_exchange.py: exact in float32).
_KEY_MASK = (1 << 20) - 1


def convert(model: torch.nn.Module, to: str = "bnlab", *, backend: str | None = None,
            inplace: bool = False, process_group: Any = None,
            options: dict[str, Any] | None = None) -> torch.nn.Module:
    """Return ``model`` with every batch-norm module of one family replaced by the other family's.

    Args:
        model: any module; it may itself be a batch-norm module.
        to: ``"bnlab"`` replaces ``torch.nn.BatchNorm1d/2d/3d`` by ``bnlab.nn.BatchNorm1d/2d/3d`` (and sets the
            backend of bnlab modules already there); ``"torch"`` goes back. Synchronized layers (bnlab's and
            torch's ``SyncBatchNorm``) become plain batch norm of the family asked for. Other subclasses of
            torch's classes (uninitialized lazy modules, user subclasses) are left as they are: their forward may
            do more than batch norm. ``"frozen"`` replaces torch's and bnlab's layers by
            ``bnlab.nn.FrozenBatchNorm1d/2d/3d`` (a layer without running statistics is a ValueError);
            "torch" and "bnlab" turn frozen layers back into trainable ones. The fused
            ``BatchNormAct`` layers have no torch or frozen counterpart: ``to="torch"`` leaves them as they are
            and ``to="frozen"`` refuses them (``bnlab.freeze`` freezes them in place). ``"sync"`` makes torch's and
            bnlab's batch-norm layers (and torch's ``SyncBatchNorm``) :class:`bnlab.SyncBatchNorm`, keeping
            training mode, device, dtype and every value; "torch" and "bnlab" turn them back.
        backend: with ``to="bnlab"`` or ``"sync"``, the backend of every bnlab module afterwards. None (the
            default) gives converted modules ``"auto"`` and leaves bnlab modules already in the model as they are.
        process_group: with ``to="sync"``, the group whose processes share statistics (None: the default group).
        inplace: convert ``model`` itself instead of a deep copy. A root that is itself replaced (a single
            batch-norm layer converted to or from frozen) is returned as a new module either way.
        options: with ``to="renorm"`` or ``"ghost"`` (plain torch or bnlab batch norm → ``BatchRenorm*d`` /
            ``GhostBatchNorm*d``, keeping every parameter, buffer and hyper-parameter): the variant's settings,
            ``{"r_max": ..., "d_max": ...}`` (default 3 and 5) or ``{"virtual_batch_size": ...}`` (required).
            ``to="torch"`` turns the variants back into torch's plain classes.
    """
    if to not in TARGETS:
        raise ValueError(f"to must be one of {TARGETS}, got {to!r}")
    check_variant_options(to, options)
    if to not in ("bnlab", "sync") and backend is not None:
        raise ValueError(f"backend applies to to='bnlab' or 'sync' only: {to} layers do not choose a backend")
    if to != "sync" and process_group is not None:
        raise ValueError(f"process_group applies to to='sync' only: {to} layers do not synchronize")
    if backend is not None:
        check_backend_name(backend)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"convert expects a torch.nn.Module, got {type(model).__name__}")
    if to == "frozen":
        fused = [name for name, m in model.named_modules() if isinstance(m, ActMixin)]
        if fused:
            raise ValueError(
                f"{fused[0] or 'the model'} is a fused batch norm + activation layer, which a FrozenBatchNorm "
                f"cannot stand for (it would drop the activation); freeze it in place with bnlab.freeze(model) "
                f"instead"
            )
    _check_conventions(model, to)
    root = model if inplace else copy.deepcopy(model)
    if to == "sync":
        return _to_sync(root, backend, process_group)
    if to in VARIANT_TARGETS:
        for module in root.modules():
            if type(module) in TORCH_TO_BNLAB or type(module) in BNLAB_TO_TORCH:
                to_variant(module, to, options or {}, backend)
        return root
    _from_sync(root, to, backend)
    root = _replace_frozen(root, to, backend)
    if to == "frozen":
        return root
    mapping = ({**TORCH_TO_BNLAB, TorchBatchNormNd: BatchNormNd} if to == "bnlab"
               else {**BNLAB_TO_TORCH, **VARIANT_TO_TORCH, BatchNormNd: TorchBatchNormNd})
    for module in root.modules():
        target = mapping.get(type(module))
        if target is not None:
            # Changing the class keeps every parameter, buffer, hook and attribute object as it was.
            module.__class__ = target
        if to == "torch" and target is not None:
            # torch's layers have no backend and no statistics policy (bnlab.freeze): those are dropped.
            drop_bnlab_state(module)
        elif to == "bnlab" and isinstance(module, BackendMixin) and (backend is not None or target is not None):
            # Every bnlab layer has a backend, the fused BatchNormAct layers included.
            setattr(module, "backend", backend or "auto")  # noqa: B010 (mypy types Module attributes as tensors)
    return root


#: Why a layer following another framework's convention (docs/compat.md) cannot become the target's class.
_CONVENTION_REFUSALS = {
    "torch": "torch's BatchNorm follows torch's rules only",
    "sync": "bnlab.SyncBatchNorm follows torch's rules only",
    "renorm": "batch renorm takes convention='torch' only",
    "ghost": "ghost batch norm takes convention='torch' only",
}


def _check_conventions(model: torch.nn.Module, to: str) -> None:
    """Refuse, before anything changes, a layer whose convention the target class would silently drop.

    ``to="frozen"`` refuses darknet's layers in :func:`~bnlab.tools.freeze.to_frozen` (Keras's and Flax's eval is
    torch's, so they freeze exactly); ``to="bnlab"`` keeps the convention.
    """
    why = _CONVENTION_REFUSALS.get(to)
    if why is None:
        return
    for name, module in model.named_modules():
        convention = getattr(module, "convention", "torch")
        if convention == "torch":
            continue
        converted = _sync_class(module) is not None if to == "sync" else type(module) in BNLAB_TO_TORCH
        if converted:
            raise ValueError(
                f"layer {name or '(the model)'!r} follows convention={convention!r} (docs/compat.md), which to={to!r} "
                f"would silently drop: {why}; set the layer's convention = 'torch' first if that is meant")


def _replace_frozen(root: torch.nn.Module, to: str, backend: str | None) -> torch.nn.Module:
    """Replace layers by their frozen form (to="frozen") or frozen layers by trainable ones; returns the root."""
    def convert_one(module: torch.nn.Module) -> torch.nn.Module | None:
        if to == "frozen":
            return to_frozen(module) if type(module) in FROZEN_OF else None
        if isinstance(module, FrozenBatchNormBase):
            return from_frozen(module, to, backend=backend or "auto")
        return None

    # Every name a layer is registered under gets the same new module (replace_modules).
    replacements: dict[torch.nn.Module, torch.nn.Module] = {}
    for module in root.modules():
        new = convert_one(module)
        if new is not None:
            replacements[module] = new
    return replace_modules(root, replacements)


def _sync_class(module: torch.nn.Module) -> type[SyncBatchNorm] | None:
    """The synchronized class a layer becomes, or None for a layer to_sync leaves alone."""
    kind = type(module)
    if kind in (SyncBatchNorm, SyncBatchNormAct):
        return None
    if kind in TORCH_TO_BNLAB or kind in BNLAB_TO_TORCH or kind in (torch.nn.SyncBatchNorm, TorchBatchNormNd,
                                                                   BatchNormNd):
        return SyncBatchNorm
    if (isinstance(module, ActMixin) and kind.__module__ == ActMixin.__module__) or kind is BatchNormActNd:
        return SyncBatchNormAct  # bnlab's fused layers (not user subclasses of them)
    return None


def _to_sync(root: torch.nn.Module, backend: str | None, process_group: Any) -> torch.nn.Module:
    for name, module in root.named_modules():
        target = _sync_class(module)
        if target is None:
            if isinstance(module, SyncBatchNorm) and backend is not None:
                setattr(module, "backend", backend)  # noqa: B010
            continue
        original = type(module)
        had_backend = isinstance(module, BackendMixin)
        # torch's SyncBatchNorm keeps no record of the class it replaced; neither can we then.
        module.__dict__[CONVERTED_FROM] = None if original is torch.nn.SyncBatchNorm else original
        module.__class__ = target
        if backend is not None or not had_backend:
            setattr(module, "backend", backend or "auto")  # noqa: B010
        # Keyed by the qualified name, the same on every rank whatever else each rank has built.
        init_sync_state(module, process_group, key=zlib.crc32(name.encode()) & _KEY_MASK,
                        name=f"SyncBatchNorm {name or '(the model)'!r}")
    return root


def _from_sync(root: torch.nn.Module, to: str, backend: str | None) -> None:
    """Turn synchronized layers (bnlab's and torch's) back into plain ones of the ``to`` family, in place."""
    for module in root.modules():
        if not isinstance(module, torch.nn.SyncBatchNorm):
            continue
        original = module.__dict__.pop(CONVERTED_FROM, None)
        fused = isinstance(module, SyncBatchNormAct)
        if original is None:
            target: type[torch.nn.Module] = BatchNormActNd if fused else (
                BatchNormNd if to == "bnlab" else TorchBatchNormNd)
        elif to == "bnlab":
            target = TORCH_TO_BNLAB.get(original, original)
        else:  # the fused layers have no torch counterpart and stay bnlab's (unsynchronized)
            target = BNLAB_TO_TORCH.get(original, original)
        had_backend = isinstance(module, BackendMixin)
        for attribute in SYNC_STATE:
            module.__dict__.pop(attribute, None)
        module.__class__ = target  # type: ignore[assignment]  # (narrowed to SyncBatchNorm by the check above)
        if not issubclass(target, BackendMixin):
            drop_bnlab_state(module)
        elif backend is not None or not had_backend:
            setattr(module, "backend", backend or "auto")  # noqa: B010
