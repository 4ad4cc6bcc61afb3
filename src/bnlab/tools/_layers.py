"""What the tools count as a batch-norm layer, and how they pick layers by name."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence

import torch
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parameter import is_lazy

from bnlab._shapes import INPUT_RANKS
from bnlab.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from bnlab.nn.frozen import FrozenBatchNorm1d, FrozenBatchNorm2d, FrozenBatchNorm3d, FrozenBatchNormBase

#: Any layer the tools treat as batch norm: trainable or frozen.
NormLayer = _BatchNorm | FrozenBatchNormBase

#: The one table of layer families, one row per input rank: torch's class, bnlab's, the frozen one, and the
#: ranks of input they take (bnlab._shapes.INPUT_RANKS). Conversions (convert, freeze, to_frozen, from_frozen)
#: all read it.
FAMILIES: tuple[tuple[type[_BatchNorm], type[_BatchNorm], type[FrozenBatchNormBase], tuple[int, ...]], ...] = (
    (torch.nn.BatchNorm1d, BatchNorm1d, FrozenBatchNorm1d, INPUT_RANKS[1]),
    (torch.nn.BatchNorm2d, BatchNorm2d, FrozenBatchNorm2d, INPUT_RANKS[2]),
    (torch.nn.BatchNorm3d, BatchNorm3d, FrozenBatchNorm3d, INPUT_RANKS[3]),
)
TORCH_TO_BNLAB: dict[type[torch.nn.Module], type[_BatchNorm]] = {t: b for t, b, _, _ in FAMILIES}
BNLAB_TO_TORCH: dict[type[torch.nn.Module], type[_BatchNorm]] = {b: t for t, b, _, _ in FAMILIES}
#: The trainable classes (exactly these, not subclasses) that have a frozen counterpart, and that counterpart.
FROZEN_OF: dict[type[torch.nn.Module], type[FrozenBatchNormBase]] = {
    **{t: f for t, _, f, _ in FAMILIES}, **{b: f for _, b, f, _ in FAMILIES}}
#: A frozen class → its trainable classes by family ("torch", "bnlab").
TRAINABLE_OF: dict[type[torch.nn.Module], dict[str, type[_BatchNorm]]] = {
    f: {"torch": t, "bnlab": b} for t, b, f, _ in FAMILIES}


def is_batch_norm(module: torch.nn.Module) -> bool:
    """A trainable batch-norm layer: ``torch.nn.BatchNorm*d`` or any subclass (bnlab's, SyncBatchNorm, ...)."""
    return isinstance(module, _BatchNorm)


def is_frozen_batch_norm(module: torch.nn.Module) -> bool:
    return isinstance(module, FrozenBatchNormBase)


def input_ranks(module: torch.nn.Module) -> tuple[int, ...]:
    """The ranks of input a batch-norm layer takes: (2, 3) for 1d, (4,) for 2d, (5,) for 3d, () if unknown.

    SyncBatchNorm accepts any rank of at least 2, so it is () (unknown) and the tools treat it conservatively.
    """
    for torch_class, _, frozen_class, ranks in FAMILIES:
        if isinstance(module, torch_class | frozen_class):  # bnlab's layers subclass torch's
            return ranks
    return ()


def is_uninitialized(module: torch.nn.Module) -> bool:
    """A lazy layer that has not seen a batch yet, so its parameters or buffers have no size."""
    return any(is_lazy(t) for t in (*module.parameters(recurse=False), *module.buffers(recurse=False)))


def running_stats(module: NormLayer) -> tuple[torch.Tensor, torch.Tensor]:
    """The running mean and variance buffers themselves (not copies).

    Raises ValueError for a layer built with ``track_running_stats=False``: check :func:`has_running_stats` first
    where such layers are expected.
    """
    mean, var = module.running_mean, module.running_var
    if mean is None or var is None:
        raise ValueError(f"{type(module).__name__} has no running statistics (track_running_stats=False)")
    return mean, var


def has_running_stats(module: NormLayer) -> bool:
    return module.running_mean is not None and module.running_var is not None


def batch_norm_layers(model: torch.nn.Module) -> list[tuple[str, _BatchNorm]]:
    """(qualified name, module) of every trainable batch-norm layer in ``model``, in registration order.

    The root itself has the name "".
    """
    return [(name, m) for name, m in model.named_modules() if isinstance(m, _BatchNorm)]


def norm_layers(model: torch.nn.Module) -> list[tuple[str, NormLayer]]:
    """:func:`batch_norm_layers` and the FrozenBatchNorm layers."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, _BatchNorm | FrozenBatchNormBase)]


def replace_modules(root: torch.nn.Module, replacements: Mapping[torch.nn.Module, torch.nn.Module]) -> torch.nn.Module:
    """Put ``replacements[old]`` in place of each ``old`` module under every name it is registered under in ``root``.

    A module registered twice (``self.stem = nn.Sequential(self.conv)``) may be called under either name, so
    replacing it under one only would leave the forward calling the old module. Both names get the same new
    module, as they had the same old one. Returns the root, or its replacement if the root itself is replaced.
    """
    new_of = {id(old): new for old, new in replacements.items()}  # by identity: modules may define __eq__
    if id(root) in new_of:
        return new_of[id(root)]
    for name, module in list(root.named_modules(remove_duplicate=False)):
        new = new_of.get(id(module))
        if new is not None and name:
            parent, _, child = name.rpartition(".")
            setattr(root.get_submodule(parent) if parent else root, child, new)
    return root


def select_layers(model: torch.nn.Module, layers: str | Sequence[str] | None) -> list[tuple[str, _BatchNorm]]:
    """The trainable batch-norm layers whose qualified names match ``layers`` (shell-style patterns; None for all).

    Raises ValueError when a pattern matches no batch-norm layer, listing the names there are, so that a typo
    does not silently select nothing.
    """
    candidates = batch_norm_layers(model)
    if layers is None:
        return candidates
    patterns = [layers] if isinstance(layers, str) else list(layers)
    chosen: list[tuple[str, _BatchNorm]] = []
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(f"layer patterns must be strings, got {pattern!r}")
        matched = [(n, m) for n, m in candidates if fnmatch.fnmatchcase(n, pattern)]
        if not matched:
            names = ", ".join(repr(n) for n, _ in candidates[:8]) or "none"
            more = f" and {len(candidates) - 8} more" if len(candidates) > 8 else ""
            raise ValueError(
                f"layer pattern {pattern!r} matches no batch-norm layer; the model's batch-norm layers are "
                f"{names}{more} (patterns are shell-style, e.g. 'layer4.*' or '*.bn1')"
            )
        chosen.extend(item for item in matched if item not in chosen)
    return chosen
