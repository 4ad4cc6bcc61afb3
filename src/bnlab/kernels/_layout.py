"""How the kernel backends (``cpu``, ``triton``) see a tensor: (N, C, S) in one of two dense layouts.

- channels-first, NCS: x[(n·C + c)·S + s], strides (C·S, S, 1): contiguous (N, C, *) tensors;
- channels-last, CL: x[(n·S + s)·C + c], strides (S·C, 1, C): channels_last / channels_last_3d tensors, and every
  tensor with S = 1 ((N, C) and (N, C, 1)), whose two layouts coincide.

Every tensor of one call (x, the residual, ∂ℓ/∂y, the outputs) is arranged in the layout the outputs will have
(:func:`bnlab._shapes.memory_format_of` of x), so that one set of strides serves them all. Tensors in neither
layout (a transposed view, say) are copied once into the channels-first one.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from bnlab._shapes import memory_format_of


class NCSView:
    """A problem seen as (N, C, S), every tensor of it dense in the memory format the outputs will have.

    ``strides`` (sN, sC, sS) are those of that layout. They are derived, never read off a tensor: ``is_contiguous``
    ignores the strides of size-1 dimensions, so a tensor that needs no copy may still report any stride there
    (``randn(4, 3, 1, 5).transpose(2, 3)`` has stride 5 on its last dimension), and the kernels must not use it.
    """

    __slots__ = ("C", "M", "N", "S", "channels_last", "fmt", "strides")

    def __init__(self, x: Tensor) -> None:
        self.fmt = memory_format_of(x)
        self.N, self.C = x.shape[0], x.shape[1]
        self.S = math.prod(x.shape[2:])
        self.M = self.N * self.S  # values per channel
        self.channels_last = self.fmt != torch.contiguous_format or self.S == 1
        self.strides = (self.S * self.C, 1, self.C) if self.channels_last else (self.C * self.S, self.S, 1)

    def arrange(self, t: Tensor) -> Tensor:
        """t in the layout the kernels read (a no-op when it already is)."""
        return t.contiguous(memory_format=self.fmt)

    def empty(self, like: Tensor) -> Tensor:
        """An uninitialised output of ``like``'s shape, dtype and device, in the view's layout."""
        return torch.empty_like(like, memory_format=self.fmt)
