"""Argument checks shared by the functional API and the modules: the one checking path of a batch-norm call.

Each check raises the exception type PyTorch raises for the same mistake (so ``except`` clauses written for
torch keep working), with a message that says what was wrong and how to fix it. With several mistakes in one call
the first one torch would report is the one reported: torch checks one value per channel (in Python), then ε, then
(for a non-empty batch only) each buffer and parameter in turn, then the running statistics' ``requires_grad``,
then the two running buffers given together, and the dtypes last.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from bnlab._shapes import FLOAT_DTYPES, SHAPE_NAMES
from bnlab.reference.fused import ACTIVATIONS, INVERTIBLE

_LOW_PRECISION = (torch.float16, torch.bfloat16)
SAVE_MODES = ("input", "output")


def check_input_rank(input: Tensor, allowed: tuple[int, ...], layer: str) -> None:
    """The module's rank check: BatchNorm1d takes 2D or 3D input, BatchNorm2d 4D, BatchNorm3d 5D."""
    if input.dim() not in allowed:
        expected = " or ".join(f"{d}D" for d in allowed)
        hint = " or ".join(SHAPE_NAMES[d] for d in allowed)
        raise ValueError(
            f"expected {expected} input (got {input.dim()}D input of shape {tuple(input.shape)}); "
            f"{layer} normalizes inputs shaped {hint}"
        )


def check_momentum(momentum: object, layer: str = "bnlab.nn.BatchNorm*d") -> None:
    """The functional forms take a number; the cumulative average (None) needs a module's batch counter."""
    if momentum is None or isinstance(momentum, bool) or not isinstance(momentum, int | float):
        raise TypeError(
            f"momentum must be a number, got {momentum!r}; the cumulative average (momentum=None) needs the "
            f"batch counter of a module: use {layer}(momentum=None)"
        )


def check_act_args(activation: str, negative_slope: float, save: str) -> None:
    """The fused layer's own arguments; ValueError (TypeError for a non-number slope) saying what is allowed."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {ACTIVATIONS}")
    if save not in SAVE_MODES:
        raise ValueError(f"save must be one of {SAVE_MODES}, got {save!r}")
    if isinstance(negative_slope, bool) or not isinstance(negative_slope, int | float):
        raise TypeError(f"negative_slope must be a number, got {negative_slope!r}")
    if save == "output":
        if activation not in INVERTIBLE:
            raise ValueError(
                f"save='output' recovers the input from the output, which needs an invertible activation "
                f"{INVERTIBLE}; {activation!r} is not: use save='input'"
            )
        if activation == "leaky_relu" and negative_slope <= 0:
            raise ValueError(
                f"save='output' with leaky_relu needs negative_slope > 0 to invert it, got {negative_slope}; "
                f"use save='input'"
            )


def check_residual(input: Tensor, residual: Tensor | None) -> None:
    """None, or a tensor of the input's shape, dtype and device (what torch's ``+`` would need, without broadcast)."""
    if residual is None:
        return
    if not isinstance(residual, Tensor):
        raise TypeError(f"residual must be a tensor or None, got {type(residual).__name__}")
    if residual.shape != input.shape or residual.dtype != input.dtype or residual.device != input.device:
        raise ValueError(
            f"residual must match the input: got {tuple(residual.shape)} {residual.dtype} on {residual.device} "
            f"for an input of {tuple(input.shape)} {input.dtype} on {input.device}"
        )


_PARAM_NAMES = ("running_mean", "running_var", "weight", "bias")
_FLOAT_SET = frozenset(FLOAT_DTYPES)


def check_batch_norm_args(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                          weight: Tensor | None, bias: Tensor | None, training: bool, eps: float, *,
                          local_part: bool = False) -> None:
    """Everything ``batch_norm`` needs of its arguments before a backend sees them, in torch's order.

    This runs on every call, so the common path only compares; messages are built once something fails.
    ``local_part``: the input is one process's part of a batch split across processes (SyncBatchNorm), which may
    hold one value per channel or none; the caller checks the count of the whole batch.
    """
    if not isinstance(input, Tensor):
        raise TypeError(f"batch_norm expects a torch.Tensor input, got {type(input).__name__}")
    shape = input.shape
    # torch's rule and wording for ε: 0 is allowed with running statistics (their variance is then trusted to be
    # positive), never with batch statistics, where a constant channel would divide by zero.
    if training:
        if shape and not local_part and _one_value(shape):
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {shape}: a variance "
                f"needs at least 2 values; use a batch of 2 or more, or call .eval() to use running statistics"
            )
        if eps <= 0.0:
            raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    if eps < 0.0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")
    if not input.numel():
        return  # torch checks nothing more of an empty batch: it returns an empty output whatever the rest
    if len(shape) < 2:
        raise RuntimeError(
            f"batch_norm expects an input of shape (N, C, *) with at least 2 dimensions, got shape "
            f"{tuple(shape)}; add a batch dimension with input.unsqueeze(0) if this is one sample"
        )
    channels, dtype, same_dtype = shape[1], input.dtype, True
    # is_cpu first: on a CPU input (the common case) it settles the device with one cheap attribute per tensor.
    on_cpu = input.is_cpu
    for index, t in enumerate((running_mean, running_var, weight, bias)):
        if t is None:
            if index < 2 and not training:
                raise RuntimeError(
                    f"{_PARAM_NAMES[index]} must be defined in evaluation mode (training=False normalizes with "
                    f"running statistics); pass both running buffers, or training=True to use the batch's own "
                    f"statistics"
                )
        else:
            if t.numel() != channels:
                raise RuntimeError(
                    f"{_PARAM_NAMES[index]} should contain {channels} elements not {t.numel()}: the input of shape "
                    f"{tuple(shape)} has {channels} channels (dimension 1), and batch norm keeps one value per "
                    f"channel; build the layer with num_features={channels} or check which dimension holds the "
                    f"channels"
                )
            if (not t.is_cpu) if on_cpu else t.device != input.device:
                raise RuntimeError(
                    f"{_PARAM_NAMES[index]} is on {t.device} but the input is on {input.device}; move the layer "
                    f"with .to(device)"
                )
            if t.dtype is not dtype:  # dtypes are singletons
                same_dtype = False
    if torch.is_grad_enabled() and ((running_mean is not None and running_mean.requires_grad)
                                    or (running_var is not None and running_var.requires_grad)):
        name = "running_mean" if running_mean is not None and running_mean.requires_grad else "running_var"
        raise RuntimeError(
            f"{name} requires grad, but batch norm does not differentiate through running statistics; pass "
            f"{name}.detach() or a buffer"
        )
    if training and (running_mean is None) != (running_var is None):
        given = "running_mean" if running_var is None else "running_var"
        raise ValueError(
            f"running_mean and running_var must either both be None or neither be None: only {given} was given, "
            f"and a training call updates both; pass the other buffer too, or neither"
        )
    if dtype not in _FLOAT_SET:
        # torch raises NotImplementedError (a RuntimeError) for integer and complex inputs.
        raise NotImplementedError(
            f"batch_norm needs a floating-point input (float16, bfloat16, float32 or float64), got {dtype}; "
            f"convert it with input.float()"
        )
    if not same_dtype:
        _check_dtypes(input, running_mean, running_var, weight, bias)


def _one_value(shape: torch.Size) -> bool:
    # torch's test (F.batch_norm's _verify_batch_size): the product of every size but the channels' is 1.
    return shape[0] * math.prod(shape[2:]) == 1


def _check_dtypes(input: Tensor, *tensors: Tensor | None) -> None:
    # torch's rule, on CPU and CUDA alike: the parameters and running statistics share one dtype, which is the
    # input's, or float32 under a float16/bfloat16 input (mixed precision, statistics in float32).
    dtypes = {t.dtype for t in tensors if t is not None}
    if len(dtypes) == 1 and (input.dtype in dtypes or (torch.float32 in dtypes and input.dtype in _LOW_PRECISION)):
        return
    got = ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes))
    mixed_ok = " (or all float32)" if input.dtype in _LOW_PRECISION else ""
    raise RuntimeError(
        f"batch_norm got an input of {input.dtype} with parameters/running statistics of {got}: they must all "
        f"be {input.dtype}{mixed_ok}; convert the layer with .to(dtype) or the input with input.to(dtype)"
    )
