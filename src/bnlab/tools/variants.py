"""``bnlab.convert(model, to="renorm" | "ghost", options=...)``: plain batch norm to the family's variants, in
place of the class (parameters, buffers and hyper-parameters kept), and the variants' torch classes for
``to="torch"``."""

from __future__ import annotations

from typing import Any

import torch

from bnlab.nn.ghost import GhostBatchNorm1d, GhostBatchNorm2d, GhostBatchNorm3d
from bnlab.nn.renorm import BatchRenorm1d, BatchRenorm2d, BatchRenorm3d
from bnlab.variants.ghost import check_virtual_batch_size
from bnlab.variants.renorm import check_bound

__all__ = ["VARIANT_TARGETS", "VARIANT_TO_TORCH", "check_variant_options", "to_variant"]

_TORCH = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)
#: to= name → the variant class per torch class, and the options it takes (with defaults; None: required).
_VARIANTS: dict[str, tuple[dict[type[torch.nn.Module], type[torch.nn.Module]], dict[str, Any]]] = {
    "renorm": (dict(zip(_TORCH, (BatchRenorm1d, BatchRenorm2d, BatchRenorm3d), strict=True)),
               {"r_max": 3.0, "d_max": 5.0}),
    "ghost": (dict(zip(_TORCH, (GhostBatchNorm1d, GhostBatchNorm2d, GhostBatchNorm3d), strict=True)),
              {"virtual_batch_size": None}),
}
VARIANT_TARGETS = tuple(_VARIANTS)
VARIANT_TO_TORCH: dict[type[torch.nn.Module], type[torch.nn.Module]] = {
    variant: plain for classes, _ in _VARIANTS.values() for plain, variant in classes.items()}


def check_variant_options(to: str, options: dict[str, Any] | None) -> None:
    """``options`` only with a variant target, with known keys and valid values; required ones present."""
    if to not in _VARIANTS:
        if options is not None:
            raise ValueError(f"options apply to to={VARIANT_TARGETS} only, not to={to!r}")
        return
    known = _VARIANTS[to][1]
    given = options or {}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(f"to={to!r} takes the options {sorted(known)}, got unknown {unknown}")
    missing = [k for k, default in known.items() if default is None and k not in given]
    if missing:
        raise ValueError(f"to={to!r} needs options={{{missing[0]!r}: ...}}")
    if to == "renorm":
        check_bound("r_max", given.get("r_max", 3.0), 1.0)
        check_bound("d_max", given.get("d_max", 5.0), 0.0)
    else:
        check_virtual_batch_size(given["virtual_batch_size"])


def to_variant(module: torch.nn.Module, to: str, options: dict[str, Any], backend: str | None) -> None:
    """Change a plain (torch or bnlab) batch-norm layer's class to the variant's, in place."""
    classes, defaults = _VARIANTS[to]
    plain = next(t for t in _TORCH if isinstance(module, t))
    if to == "renorm" and not module.track_running_stats:
        raise ValueError(f"batch renorm needs running statistics; this {type(module).__name__} was built with "
                         f"track_running_stats=False")
    kept = module.__dict__.get("_bnlab_backend", "auto")  # a bnlab layer keeps its backend and policies
    module.__class__ = classes[plain]
    for key, default in defaults.items():
        setattr(module, key, options.get(key, default))
    setattr(module, "backend", backend or kept)  # noqa: B010 (mypy types Module attributes as tensors)
