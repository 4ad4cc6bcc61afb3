"""Shapes, layouts and dtypes: the facts about a batch-norm input that every layer of bnlab needs.

Batch norm sees its input as (N, C, *): statistics are per channel (dimension 1) and are taken over every other
dimension, so a mini-batch holds m = N·(product of the spatial sizes) values per channel. The modules accept the
input ranks of :data:`INPUT_RANKS` (the one table of them), the functional form any rank of at least 2.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: The input dtypes batch norm computes on.
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

#: The input ranks each family of layers takes, by its number of spatial dimensions: BatchNorm1d takes (N, C) and
#: (N, C, L), BatchNorm2d (N, C, H, W), BatchNorm3d (N, C, D, H, W). The modules, the frozen modules and the tools
#: all read this table.
INPUT_RANKS: dict[int, tuple[int, ...]] = {1: (2, 3), 2: (4,), 3: (5,)}

#: How each rank is written, for error messages.
SHAPE_NAMES = {2: "(N, C)", 3: "(N, C, L)", 4: "(N, C, H, W)", 5: "(N, C, D, H, W)"}


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype statistics are accumulated in: float64 for float64, float32 for everything narrower."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def working_dtype(x: Tensor) -> torch.dtype:
    """float64, the precision the reference computes in (float32 on devices without float64, such as MPS)."""
    return torch.float32 if x.device.type == "mps" else torch.float64


def reduction_dims(x: Tensor) -> tuple[int, ...]:
    """Every dimension but the channel dimension 1: (0,) for (N, C), (0, 2, 3) for (N, C, H, W)."""
    return (0, *range(2, x.dim()))


def values_per_channel(x: Tensor) -> int:
    """m, the number of values the mini-batch holds for each channel: N times the spatial size."""
    return x.numel() // x.shape[1] if x.shape[1] else 0


def per_channel(v: Tensor, x: Tensor) -> Tensor:
    """View a per-channel vector (C,) as (1, C, 1, ..., 1) so that it broadcasts against x."""
    return v.reshape(1, -1, *([1] * (x.dim() - 2)))


def memory_format_of(x: Tensor) -> torch.memory_format:
    """The memory format outputs take: channels_last (3d) when x is stored that way, else contiguous."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if x.dim() == 5 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format
