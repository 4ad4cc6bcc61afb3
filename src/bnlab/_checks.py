"""Argument checks shared by the functional API and the modules.

Each check raises the exception type PyTorch raises for the same mistake (so ``except`` clauses written for
torch keep working), with a message that says what was wrong and how to fix it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from bnlab.kernels.base import FLOAT_DTYPES

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def check_input_rank(input: Tensor, allowed: tuple[int, ...], layer: str) -> None:
    """The module's rank check: BatchNorm1d takes 2D or 3D input, BatchNorm2d 4D, BatchNorm3d 5D."""
    if input.dim() not in allowed:
        expected = " or ".join(f"{d}D" for d in allowed)
        shapes = {2: "(N, C)", 3: "(N, C, L)", 4: "(N, C, H, W)", 5: "(N, C, D, H, W)"}
        hint = " or ".join(shapes[d] for d in allowed)
        raise ValueError(
            f"expected {expected} input (got {input.dim()}D input of shape {tuple(input.shape)}); "
            f"{layer} normalizes inputs shaped {hint}"
        )


_PARAM_NAMES = ("running_mean", "running_var", "weight", "bias")
_FLOAT_SET = frozenset(FLOAT_DTYPES)


def check_batch_norm_args(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                          weight: Tensor | None, bias: Tensor | None, training: bool, eps: float) -> None:
    """Everything ``batch_norm`` needs of its arguments before a backend sees them.

    This runs on every call, so the loop below only compares; the messages are built once something fails.
    """
    if not isinstance(input, Tensor):
        raise TypeError(f"batch_norm expects a torch.Tensor input, got {type(input).__name__}")
    if input.dim() < 2:
        raise RuntimeError(
            f"batch_norm expects an input of shape (N, C, *) with at least 2 dimensions, got shape "
            f"{tuple(input.shape)}; add a batch dimension with input.unsqueeze(0) if this is one sample"
        )
    if input.dtype not in _FLOAT_SET:
        raise RuntimeError(
            f"batch_norm needs a floating-point input (float16, bfloat16, float32 or float64), got {input.dtype}; "
            f"convert it with input.float()"
        )
    channels, device, param_dtype = input.shape[1], input.device, None
    for index, t in enumerate((running_mean, running_var, weight, bias)):
        if t is None:
            continue
        if t.numel() != channels:
            raise RuntimeError(
                f"{_PARAM_NAMES[index]} should contain {channels} elements not {t.numel()}: the input of shape "
                f"{tuple(input.shape)} has {channels} channels (dimension 1), and batch norm keeps one value per "
                f"channel; build the layer with num_features={channels} or check which dimension holds the channels"
            )
        if t.device != device:
            raise RuntimeError(
                f"{_PARAM_NAMES[index]} is on {t.device} but the input is on {input.device}; move the layer with "
                f".to(device)"
            )
        if param_dtype is None:
            param_dtype = t.dtype
        elif t.dtype != param_dtype:
            param_dtype = _MIXED
    if param_dtype is not None and param_dtype != input.dtype:
        _check_dtypes(input, running_mean, running_var, weight, bias)
    if not training and (running_mean is None or running_var is None):
        missing = "running_mean" if running_mean is None else "running_var"
        raise RuntimeError(
            f"{missing} must be defined in evaluation mode (training=False normalizes with running statistics); "
            f"pass both running buffers, or training=True to use the batch's own statistics"
        )
    # torch's rule and wording: ε = 0 is allowed with running statistics (their variance is then trusted to be
    # positive), never with batch statistics, where a constant channel would divide by zero.
    if training and eps <= 0.0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    if eps < 0.0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")
    if training and _one_value(input):
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {input.shape}: a variance "
            f"needs at least 2 values; use a batch of 2 or more, or call .eval() to use running statistics"
        )
    for index, t in enumerate((running_mean, running_var)):
        if t is not None and t.requires_grad and torch.is_grad_enabled():
            raise RuntimeError(
                f"{_PARAM_NAMES[index]} requires grad, but batch norm does not differentiate through running "
                f"statistics; pass {_PARAM_NAMES[index]}.detach() or a buffer"
            )


_MIXED = torch.uint8  # a marker: the parameters do not share one dtype (never a valid parameter dtype)


def _one_value(input: Tensor) -> bool:
    # torch's test: the product of every size but the channels' is 1 (true of empty-channel inputs too).
    return input.shape[0] * math.prod(input.shape[2:]) == 1


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
