"""Flax linen's ``nn.BatchNorm`` (its variables and hyper-parameters) ↔ bnlab's BatchNorm1d/2d/3d.

A Flax layer keeps no numbers itself: they live in the variables dict passed to ``apply``, for one layer
``{"params": {"scale": (C,), "bias": (C,)}, "batch_stats": {"mean": (C,), "var": (C,)}}`` (pick the layer's entries
out of a model's variables, e.g. ``{"params": v["params"]["BatchNorm_0"], "batch_stats":
v["batch_stats"]["BatchNorm_0"]}``). The hyper-parameters (``momentum``, ``epsilon``, ``use_scale``,
``use_bias``, ``axis``) are attributes of the ``nn.BatchNorm`` object. Flax's default layout is channels-last
(``axis=-1``): see :class:`~bnlab.compat.modules.Ported` for the NHWC ↔ NCHW mapping.

The module follows ``convention="flax"`` by default, so its running variance averages the biased batch variance
as Flax's ``var`` does; ``convention="torch"`` gives PyTorch's rules instead (``Ported.notes`` says what then
differs). :func:`to_flax` takes a module of convention "torch", "keras" or "flax".
Flax NNX's ``nnx.BatchNorm`` (numbers held on the object) is not handled. ``axis_name`` (statistics averaged
across devices) is dropped with a note: a bnlab module takes statistics over its own input.

Flax itself is imported only by :func:`to_flax`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from bnlab.compat.conventions import FLAX
from bnlab.compat.modules import (
    BIASED_RUNNING_VAR_NOTE,
    Ported,
    build_module,
    channel_axis_layout,
    check_port_convention,
    read_module,
)

__all__ = ["flax_config", "flax_variables", "from_flax", "to_flax"]


def _entry(variables: Mapping[str, Any], collection: str, name: str) -> np.ndarray | None:
    group = variables.get(collection)
    if group is None or name not in group:
        return None
    return np.asarray(group[name])


def from_flax(variables: Mapping[str, Any], batch_norm: Any = None, *, input_rank: int, backend: str = "auto",
              dtype: torch.dtype = torch.float32, convention: str = "flax") -> Ported:
    """A bnlab module with the numbers of one Flax ``nn.BatchNorm`` layer.

    Args:
        variables: the layer's variables, ``{"params": {"scale", "bias"}, "batch_stats": {"mean", "var"}}``
            (params may lack scale or bias as ``use_scale``/``use_bias`` say).
        batch_norm: the ``flax.linen.BatchNorm`` whose hyper-parameters to take, or None for Flax's defaults
            (momentum 0.99, epsilon 1e-5, use_scale and use_bias True, axis -1).
        input_rank: the rank of the layer's input (2 to 5): picks BatchNorm1d (2, 3), 2d (4) or 3d (5). Flax layers
            are not bound to a shape, so this must be given.
        backend, dtype: the module's bnlab backend and parameter/buffer dtype.
        convention: "flax" (default: the module trains as Flax does) or "torch" (PyTorch's rules; its running
            variance then drifts from Flax's, see the notes).
    """
    check_port_convention(convention, "from_flax", "flax")
    if batch_norm is not None and not (type(batch_norm).__name__ == "BatchNorm"
                                       and hasattr(batch_norm, "use_running_average")):
        raise TypeError(f"from_flax expects a flax.linen.BatchNorm (or None for its defaults), got "
                        f"{type(batch_norm).__name__}; Flax NNX's nnx.BatchNorm is not handled")
    if not isinstance(variables, Mapping):
        raise TypeError(f"from_flax expects the layer's variables dict, got {type(variables).__name__}")

    def attr(name: str, default: Any) -> Any:
        return default if batch_norm is None else getattr(batch_norm, name)

    axis = attr("axis", FLAX.channel_axis)
    if isinstance(axis, (tuple, list)):
        if len(axis) != 1:
            raise ValueError(f"from_flax: axis={axis} holds several feature axes; bnlab modules have one channel axis")
        axis = axis[0]
    channels_last = channel_axis_layout(int(axis), input_rank, "from_flax")
    use_scale, use_bias = bool(attr("use_scale", True)), bool(attr("use_bias", True))
    mean, var = _entry(variables, "batch_stats", "mean"), _entry(variables, "batch_stats", "var")
    scale, bias = _entry(variables, "params", "scale"), _entry(variables, "params", "bias")
    if mean is None or var is None:
        raise ValueError("from_flax: variables need batch_stats with 'mean' and 'var' (the layer's own entries; "
                         f"got collections {sorted(variables)})")
    for flag, value, name in ((use_scale, scale, "scale"), (use_bias, bias, "bias")):
        if flag and value is None:
            raise ValueError(f"from_flax: use_{name}=True but params has no '{name}'")
    notes: tuple[str, ...] = ()
    if attr("axis_name", None) is not None:
        notes += ("axis_name is dropped: Flax averaged the batch statistics across devices, a bnlab module takes "
                  "them over its own input (bnlab has no cross-device batch norm yet)",)
    module, built_notes = build_module(
        input_rank, mean=mean, var=var, gamma=scale if use_scale else None, beta=bias if use_bias else None,
        eps=float(attr("epsilon", FLAX.eps)), torch_momentum=FLAX.to_torch_momentum(float(attr("momentum",
                                                                                                 FLAX.momentum))),
        backend=backend, dtype=dtype, convention=convention)
    if convention == "torch":
        notes += (BIASED_RUNNING_VAR_NOTE.format(name="Flax", convention="flax"),)
    return Ported(module, channels_last, (*built_notes, *notes))


def flax_config(module: torch.nn.Module, *, channels_last: bool = True) -> dict[str, Any]:
    """The ``flax.linen.BatchNorm`` attributes that reproduce a torch or bnlab BatchNorm1d/2d/3d."""
    numbers = read_module(module, None, "Flax")
    return {"axis": -1 if channels_last else 1, "momentum": FLAX.from_torch_momentum(numbers.torch_momentum),
            "epsilon": numbers.eps, "use_scale": numbers.gamma is not None, "use_bias": numbers.beta is not None}


def flax_variables(module: torch.nn.Module) -> dict[str, dict[str, np.ndarray]]:
    """The module's numbers as one Flax layer's variables: params scale/bias (as present), batch_stats mean/var."""
    numbers = read_module(module, None, "Flax")
    params = {name: value for name, value in (("scale", numbers.gamma), ("bias", numbers.beta)) if value is not None}
    return {"params": params, "batch_stats": {"mean": numbers.mean, "var": numbers.var}}


def to_flax(module: torch.nn.Module, *, channels_last: bool = True) -> tuple[Any, dict[str, dict[str, np.ndarray]]]:
    """A ``flax.linen.BatchNorm`` and its variables with the module's numbers (needs Flax installed).

    Call it as ``bn.apply(variables, x, use_running_average=..., mutable=["batch_stats"])``.
    """
    from flax import linen

    return linen.BatchNorm(**flax_config(module, channels_last=channels_last)), flax_variables(module)
