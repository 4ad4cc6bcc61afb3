"""Keras's ``BatchNormalization`` layer (Keras 3 on any backend, or tf.keras) ↔ bnlab's BatchNorm1d/2d/3d.

What carries over: γ (``gamma``), β (``beta``), the moving mean and variance, ε (``epsilon``) and the momentum
(Keras's decay m becomes torch's 1 − m: 0.99 → 0.01). Keras's default layout is channels-last (``axis=-1``):
an NHWC input x runs through the module as ``ported.module_input(x)`` (NCHW) and the output comes back with
``ported.framework_output(y)``. A layer with ``axis=1`` (``data_format="channels_first"``) needs no permutation.

The module follows ``convention="keras"`` by default, so it trains as Keras does (its running variance averages
the *biased* batch variance, as ``moving_variance`` does); ``convention="torch"`` gives a module that trains by
PyTorch's rules instead (the running variance averages the unbiased one; ``Ported.notes`` says so). Going back,
:func:`to_keras` takes a module of either convention (or "flax", the same rule); Keras then trains by its own.

Keras itself is imported only by :func:`to_keras`; :func:`from_keras` reads any layer object of that shape.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bnlab.compat.conventions import KERAS
from bnlab.compat.modules import (
    BIASED_RUNNING_VAR_NOTE,
    Ported,
    build_module,
    channel_axis_layout,
    check_port_convention,
    read_module,
)

__all__ = ["from_keras", "keras_config", "keras_weights", "to_keras"]

# tf.keras options with no bnlab equivalent (Keras 3 has renorm only); each refuses the conversion.
_UNSUPPORTED = {
    "renorm": "Batch Renormalization is not plain batch norm (bnlab.nn.BatchRenorm is planned)",
    "virtual_batch_size": "ghost batch norm (virtual_batch_size) is not plain batch norm",
    "adjustment": "an adjustment function changes the normalization",
}


def _weight_name(variable: Any) -> str:
    # Keras 3: "gamma"; tf.keras 2: "batch_normalization/gamma:0".
    return str(variable.name).rsplit("/", 1)[-1].split(":", 1)[0]


def _single_axis(axis: Any) -> int:
    if isinstance(axis, (list, tuple)):
        if len(axis) != 1:
            raise ValueError(f"from_keras: axis={axis} normalizes over several feature axes; bnlab modules have one "
                             "channel axis")
        axis = axis[0]
    return int(axis)


def from_keras(layer: Any, *, backend: str = "auto", dtype: torch.dtype = torch.float32,
               convention: str = "keras") -> Ported:
    """A bnlab module with the numbers of a built Keras ``BatchNormalization`` layer.

    Args:
        layer: a built ``keras.layers.BatchNormalization`` (Keras 3) or ``tf.keras.layers.BatchNormalization``;
            its input rank (2 to 5) picks BatchNorm1d (rank 2, 3), 2d (rank 4) or 3d (rank 5).
        backend: the module's bnlab backend.
        dtype: the module's parameter and buffer dtype.
        convention: "keras" (default: the module trains as Keras does) or "torch" (PyTorch's rules; its running
            variance then drifts from Keras's, see the notes).

    Returns: the module (in train mode, as a new Keras layer is used in training), whether inputs are
    channels-last, and notes on what differs. ``scale=False`` gives a weight fixed at 1 (requires_grad=False);
    ``center=False`` a module without bias; both False, ``affine=False``.
    """
    check_port_convention(convention, "from_keras", "keras")
    if type(layer).__name__ != "BatchNormalization":
        raise TypeError(f"from_keras expects a Keras BatchNormalization layer, got {type(layer).__name__}")
    for option, why in _UNSUPPORTED.items():
        if getattr(layer, option, None):
            raise ValueError(f"from_keras: the layer sets {option}: {why}")
    rank = getattr(getattr(layer, "input_spec", None), "ndim", None)
    if not getattr(layer, "built", False) or rank is None:
        raise ValueError("from_keras: the layer is not built, so its weights and input rank are unknown; call it "
                         "on an input (or layer.build(input_shape)) first")
    channels_last = channel_axis_layout(_single_axis(layer.axis), int(rank), "from_keras")
    weights = {_weight_name(v): np.asarray(w) for v, w in zip(layer.weights, layer.get_weights(), strict=True)}
    missing = {"moving_mean", "moving_variance"} - weights.keys()
    if missing:
        raise ValueError(f"from_keras: the layer has no {sorted(missing)} weights (found {sorted(weights)})")
    module, notes = build_module(
        int(rank), mean=weights["moving_mean"], var=weights["moving_variance"],
        gamma=weights["gamma"] if layer.scale else None, beta=weights["beta"] if layer.center else None,
        eps=float(layer.epsilon), torch_momentum=KERAS.to_torch_momentum(float(layer.momentum)), backend=backend,
        dtype=dtype, convention=convention)
    if convention == "torch":
        notes += (BIASED_RUNNING_VAR_NOTE.format(name="Keras", convention="keras"),)
    return Ported(module, channels_last, notes)


def keras_config(module: torch.nn.Module, *, channels_last: bool = True) -> dict[str, Any]:
    """The ``keras.layers.BatchNormalization`` arguments that reproduce a torch or bnlab BatchNorm1d/2d/3d.

    ``axis`` is -1 for channels-last input (Keras's default), 1 for channels-first.
    """
    numbers = read_module(module, None, "Keras")
    return {"axis": -1 if channels_last else 1, "momentum": KERAS.from_torch_momentum(numbers.torch_momentum),
            "epsilon": numbers.eps, "center": numbers.beta is not None, "scale": numbers.gamma is not None}


def keras_weights(module: torch.nn.Module) -> list[np.ndarray]:
    """The module's numbers in the order of ``layer.set_weights``: [gamma, beta, moving_mean, moving_variance],
    gamma and beta present as in :func:`keras_config`. The running variance is copied as is (see the module note)."""
    numbers = read_module(module, None, "Keras")
    return [w for w in (numbers.gamma, numbers.beta, numbers.mean, numbers.var) if w is not None]


def to_keras(module: torch.nn.Module, *, channels_last: bool = True, input_rank: int | None = None) -> Any:
    """A built ``keras.layers.BatchNormalization`` with the module's numbers (needs Keras installed).

    Args:
        module: a torch or bnlab BatchNorm1d/2d/3d with running statistics and a numeric momentum.
        channels_last: build the layer for channels-last input (NHWC; Keras's default) or channels-first (NCHW).
        input_rank: for a BatchNorm1d, 2 for (N, C) or 3 for (N, C, L) input; fixed by the class otherwise.
    """
    import keras

    numbers = read_module(module, input_rank, "Keras")
    if numbers.rank is None:
        raise ValueError("to_keras: a BatchNorm1d takes (N, C) or (N, C, L) input; pass input_rank=2 or 3")
    config = keras_config(module, channels_last=channels_last)
    layer = keras.layers.BatchNormalization(**config, dtype=str(numbers.mean.dtype))
    shape: list[int | None] = [None] * numbers.rank
    shape[config["axis"]] = int(numbers.mean.shape[0])
    layer.build(tuple(shape))
    layer.set_weights(keras_weights(module))
    return layer
