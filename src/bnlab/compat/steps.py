"""What each framework computes in one training step and in inference, in float64: the yardstick for a module that
follows another framework's convention (:mod:`bnlab.compat.conventions`).

Inputs are in any layout; ``channel_axis`` (default: the convention's own, -1 for Keras and Flax, 1 for torch and
darknet) names the channel dimension and every other dimension is reduced over: m = numel / C values per channel.
Results are float64 whatever the input dtype.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from bnlab.compat.conventions import Convention, get_convention


class BatchNormState(NamedTuple):
    """A batch-norm layer's numbers, framework-neutral. Vectors have shape (C,).

    ``running_var`` holds whichever variance the convention stores (``Convention.variance_stored``).
    ``num_batches_tracked`` counts training steps (only torch's ``momentum=None`` reads it).
    """

    running_mean: Tensor
    running_var: Tensor
    weight: Tensor | None = None  # γ; None is γ = 1
    bias: Tensor | None = None  # β; None is β = 0
    num_batches_tracked: int = 0


class TrainStep(NamedTuple):
    y: Tensor  # float64, the shape of x
    state: BatchNormState  # after the running update, float64


def initial_state(num_features: int, convention: str | Convention = "torch", affine: bool = True) -> BatchNormState:
    """A fresh layer's state: running mean 0, running variance the convention's start (darknet 0), γ = 1, β = 0."""
    conv = get_convention(convention)
    zeros = torch.zeros(num_features, dtype=torch.float64)
    return BatchNormState(zeros, torch.full_like(zeros, conv.running_var_init),
                          torch.ones_like(zeros) if affine else None, zeros.clone() if affine else None)


def _as_channels_last(x: Tensor, channel_axis: int) -> Tensor:
    if x.dim() < 2:
        raise ValueError(f"x must have a batch and a channel dimension, got shape {tuple(x.shape)}")
    if not -x.dim() <= channel_axis < x.dim():
        raise ValueError(f"channel_axis {channel_axis} is out of range for a {x.dim()}-d input")
    return x.to(torch.float64).movedim(channel_axis, -1)


def _vector(v: Tensor | None, default: float, channels: int, what: str) -> Tensor:
    if v is None:
        return torch.full((channels,), default, dtype=torch.float64)
    if v.shape != (channels,):
        raise ValueError(f"{what} has shape {tuple(v.shape)}, expected ({channels},) for {channels} channels")
    return v.to(torch.float64)


def _normalize(x: Tensor, mean: Tensor, var: Tensor, eps: float, conv: Convention) -> Tensor:
    root = (var + eps).sqrt() if conv.eps_inside_root else var.sqrt() + eps
    return (x - mean) / root


def train_step_reference(x: Tensor, state: BatchNormState, convention: str | Convention, *,
                         eps: float | None = None, momentum: float | None = None,
                         channel_axis: int | None = None) -> TrainStep:
    """One training forward under ``convention``: the output and the state after the running update.

    Args:
        x: input with C channels on ``channel_axis``.
        state: the layer before this step; its running values in the convention's meaning.
        convention: "torch", "keras", "flax", "darknet" or a Convention.
        eps: ε (default: the convention's).
        momentum: in the convention's meaning (default: the convention's). torch's cumulative average
            (``momentum=None`` on a module) is not modelled here; ``bnlab._stats`` implements it.
        channel_axis: the channel dimension of x (default: the convention's).

    The batch variance is biased σ²_B = Σ(x − μ)²/m or unbiased s² = Σ(x − μ)²/(m − 1) as the convention uses and
    stores it; the running update is new = a·old + b·batch with (a, b) = ``Convention.update_weights``.
    """
    conv = get_convention(convention)
    axis = conv.channel_axis if channel_axis is None else channel_axis
    xl = _as_channels_last(x, axis)
    channels = xl.shape[-1]
    flat = xl.reshape(-1, channels)  # (m, C)
    m = flat.shape[0]
    needs_unbiased = "unbiased" in (conv.variance_used, conv.variance_stored)
    if m < (2 if needs_unbiased else 1):
        raise ValueError(f"{conv.name} batch norm in training needs at least {2 if needs_unbiased else 1} values per "
                         f"channel, got {m} (input shape {tuple(x.shape)})")
    mean = flat.mean(0)  # μ_B
    biased = (flat - mean).square().mean(0)  # σ²_B, two passes
    unbiased = biased * m / (m - 1) if m > 1 else biased
    by_name = {"biased": biased, "unbiased": unbiased}
    eps_ = conv.eps if eps is None else eps
    x_hat = _normalize(xl, mean, by_name[conv.variance_used], eps_, conv)
    gamma = _vector(state.weight, 1.0, channels, "weight")
    beta = _vector(state.bias, 0.0, channels, "bias")
    y = (x_hat * gamma + beta).movedim(-1, axis)
    a, b = conv.update_weights(momentum)
    running_mean = a * _vector(state.running_mean, 0.0, channels, "running_mean") + b * mean
    running_var = a * _vector(state.running_var, 1.0, channels, "running_var") + b * by_name[conv.variance_stored]
    return TrainStep(y, state._replace(running_mean=running_mean, running_var=running_var,
                                       num_batches_tracked=state.num_batches_tracked + 1))


def infer_reference(x: Tensor, state: BatchNormState, convention: str | Convention, *, eps: float | None = None,
                    channel_axis: int | None = None) -> Tensor:
    """The eval forward under ``convention``: x normalized with the running statistics, γ and β applied; float64."""
    conv = get_convention(convention)
    axis = conv.channel_axis if channel_axis is None else channel_axis
    xl = _as_channels_last(x, axis)
    channels = xl.shape[-1]
    mean = _vector(state.running_mean, 0.0, channels, "running_mean")
    var = _vector(state.running_var, 1.0, channels, "running_var")
    x_hat = _normalize(xl, mean, var, conv.eps if eps is None else eps, conv)
    y = x_hat * _vector(state.weight, 1.0, channels, "weight") + _vector(state.bias, 0.0, channels, "bias")
    return y.movedim(-1, axis)
