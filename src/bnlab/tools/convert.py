"""``bnlab.convert``: swap torch's batch-norm modules for bnlab's, and back.

A conversion changes a module's class and nothing else: parameters, buffers, hooks, mode and hyper-parameters
are the same objects afterwards, so outputs do not change, in training or in eval. By default the model is
copied first and the caller's model is left untouched; ``inplace=True`` converts the given model (and keeps
its parameters, so an optimizer built on them keeps working).
"""

from __future__ import annotations

import copy

import torch

from bnlab.kernels import check_backend_name
from bnlab.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d

__all__ = ["convert"]

_TO_BNLAB: dict[type[torch.nn.Module], type[torch.nn.Module]] = {
    torch.nn.BatchNorm1d: BatchNorm1d,
    torch.nn.BatchNorm2d: BatchNorm2d,
    torch.nn.BatchNorm3d: BatchNorm3d,
}
_TO_TORCH = {bnlab_cls: torch_cls for torch_cls, bnlab_cls in _TO_BNLAB.items()}
TARGETS = ("bnlab", "torch")


def convert(model: torch.nn.Module, to: str = "bnlab", *, backend: str | None = None,
            inplace: bool = False) -> torch.nn.Module:
    """Return ``model`` with every batch-norm module of one family replaced by the other family's.

    Args:
        model: any module; it may itself be a batch-norm module.
        to: ``"bnlab"`` replaces ``torch.nn.BatchNorm1d/2d/3d`` by ``bnlab.nn.BatchNorm1d/2d/3d`` (and sets the
            backend of bnlab modules already there); ``"torch"`` goes back. Subclasses of torch's classes
            (``SyncBatchNorm``, uninitialized lazy modules, user subclasses) are left as they are: their
            forward may do more than batch norm.
        backend: with ``to="bnlab"``, the backend of every bnlab module afterwards. None (the default) gives
            converted modules ``"auto"`` and leaves bnlab modules already in the model as they are.
        inplace: convert ``model`` itself instead of a deep copy.
    """
    if to not in TARGETS:
        raise ValueError(f"to must be one of {TARGETS}, got {to!r}")
    if to == "torch" and backend is not None:
        raise ValueError("backend applies to to='bnlab' only: torch's modules always run PyTorch's kernels")
    if backend is not None:
        check_backend_name(backend)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"convert expects a torch.nn.Module, got {type(model).__name__}")
    root = model if inplace else copy.deepcopy(model)
    mapping = _TO_BNLAB if to == "bnlab" else _TO_TORCH
    for module in root.modules():
        target = mapping.get(type(module))
        if target is not None:
            # Changing the class keeps every parameter, buffer, hook and attribute object as it was.
            module.__class__ = target
        if to == "torch" and target is not None:
            module.__dict__.pop("backend", None)
        elif to == "bnlab" and type(module) in _TO_TORCH and (backend is not None or target is not None):
            setattr(module, "backend", backend or "auto")  # noqa: B010 (mypy types Module attributes as tensors)
    return root
