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


def check_batch_norm_args(input: Tensor, running_mean: Tensor | None, running_var: Tensor | None,
                          weight: Tensor | None, bias: Tensor | None, training: bool) -> None:
    """Everything ``batch_norm`` needs of its arguments before a backend sees them."""
    if not isinstance(input, Tensor):
        raise TypeError(f"batch_norm expects a torch.Tensor input, got {type(input).__name__}")
    if input.dim() < 2:
        raise RuntimeError(
            f"batch_norm expects an input of shape (N, C, *) with at least 2 dimensions, got shape "
            f"{tuple(input.shape)}; add a batch dimension with input.unsqueeze(0) if this is one sample"
        )
    if input.dtype not in FLOAT_DTYPES:
        raise RuntimeError(
            f"batch_norm needs a floating-point input (float16, bfloat16, float32 or float64), got {input.dtype}; "
            f"convert it with input.float()"
        )
    channels, device, dtypes = input.shape[1], input.device, set()
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
                    ("bias", bias)):
        if t is None:
            continue
        if t.numel() != channels:
            raise RuntimeError(
                f"{name} should contain {channels} elements not {t.numel()}: the input of shape "
                f"{tuple(input.shape)} has {channels} channels (dimension 1), and batch norm keeps one value per "
                f"channel; build the layer with num_features={channels} or check which dimension holds the channels"
            )
        if t.device != device:
            raise RuntimeError(
                f"{name} is on {t.device} but the input is on {input.device}; move the layer with .to(device)"
            )
        dtypes.add(t.dtype)
    if dtypes:
        _check_dtypes(input, dtypes)
    if not training and (running_mean is None or running_var is None):
        missing = "running_mean" if running_mean is None else "running_var"
        raise RuntimeError(
            f"{missing} must be defined in evaluation mode (training=False normalizes with running statistics); "
            f"pass both running buffers, or training=True to use the batch's own statistics"
        )
    if training:
        size_prods = input.shape[0] * math.prod(input.shape[2:])
        if size_prods == 1:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {input.shape}: a variance "
                f"needs at least 2 values; use a batch of 2 or more, or call .eval() to use running statistics"
            )
    for name, t in (("running_mean", running_mean), ("running_var", running_var)):
        if t is not None and t.requires_grad and torch.is_grad_enabled():
            raise RuntimeError(
                f"{name} requires grad, but batch norm does not differentiate through running statistics; "
                f"pass {name}.detach() or a buffer"
            )


def _check_dtypes(input: Tensor, dtypes: set[torch.dtype]) -> None:
    # torch's rule, on CPU and CUDA alike: the parameters and running statistics share one dtype, which is the
    # input's, or float32 under a float16/bfloat16 input (mixed precision, statistics in float32).
    if len(dtypes) == 1 and (input.dtype in dtypes or (torch.float32 in dtypes and input.dtype in _LOW_PRECISION)):
        return
    got = ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes))
    mixed_ok = " (or all float32)" if input.dtype in _LOW_PRECISION else ""
    raise RuntimeError(
        f"batch_norm got an input of {input.dtype} with parameters/running statistics of {got}: they must all "
        f"be {input.dtype}{mixed_ok}; convert the layer with .to(dtype) or the input with input.to(dtype)"
    )
