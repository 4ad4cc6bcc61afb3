"""The shared case catalogue: hand-picked input shapes and layouts, each named for what it tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from bnlab.kernels.base import Backend, TrainBackward, TrainForward

# (shape, layout): layout is "contiguous", "channels_last" or "strided" (a non-contiguous view).
SHAPES = [
    pytest.param((2, 3), "contiguous", id="N2-C3"),  # smallest legal training batch
    pytest.param((16, 5), "contiguous", id="1d-N16-C5"),
    pytest.param((4, 3, 7), "contiguous", id="1d-NCL"),
    pytest.param((1, 4, 5, 5), "contiguous", id="N1-spatial"),  # N=1 is legal: H*W values per channel
    pytest.param((7, 33, 13, 17), "contiguous", id="odd-sizes"),  # nothing a power of two
    pytest.param((4, 8, 6, 6), "channels_last", id="channels_last"),
    pytest.param((3, 5, 6, 7), "strided", id="non-contiguous"),  # a transposed view
    pytest.param((2, 3, 4, 5, 6), "contiguous", id="3d-NCDHW"),
    pytest.param((2, 4, 3, 4, 5), "channels_last", id="3d-channels_last"),
]

# The smaller subset for slow paths (gradcheck, double backward, dtype sweeps).
SMALL_SHAPES = [
    pytest.param((4, 3), "contiguous", id="1d-N4-C3"),
    pytest.param((3, 2, 5), "contiguous", id="1d-NCL"),
    pytest.param((2, 3, 3, 4), "channels_last", id="2d-channels_last"),
    pytest.param((2, 2, 2, 3, 3), "contiguous", id="3d"),
]


def make_input(shape: tuple[int, ...], layout: str, dtype: torch.dtype = torch.float32,
               make: Callable[..., torch.Tensor] = torch.randn) -> torch.Tensor:
    """A tensor of ``shape`` stored as ``layout``, with per-channel offsets and scales so channels differ."""
    channels = shape[1]
    base = make(*shape, dtype=torch.float64)
    offsets = torch.linspace(-2.0, 3.0, channels, dtype=torch.float64)
    scales = torch.linspace(0.5, 2.0, channels, dtype=torch.float64)
    view = [1, channels] + [1] * (len(shape) - 2)
    x = (base * scales.view(view) + offsets.view(view)).to(dtype)
    if layout == "channels_last":
        fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
        x = x.contiguous(memory_format=fmt)
    elif layout == "strided":
        # Same values, stored with the last two dimensions swapped: a non-contiguous view.
        x = x.transpose(-1, -2).contiguous().transpose(-1, -2)
        assert not x.is_contiguous()
    return x


def module_class(dim: int, family: str = "bnlab") -> type[torch.nn.Module]:
    """BatchNorm1d/2d/3d of the given family ("bnlab" or "torch") for an input of ``dim`` dimensions."""
    import bnlab

    ns = bnlab if family == "bnlab" else torch.nn
    return {2: ns.BatchNorm1d, 3: ns.BatchNorm1d, 4: ns.BatchNorm2d, 5: ns.BatchNorm3d}[dim]


def run_fused(impl: Backend, x: torch.Tensor, r: torch.Tensor | None, w: torch.Tensor | None,
              b: torch.Tensor | None, g: torch.Tensor, activation: str,
              save: str) -> tuple[TrainForward, TrainBackward]:
    """One training step of a backend's fused call: forward (eps 1e-5, slope 0.1), then the backward from ∂ℓ/∂y = g,
    saving x (save="input") or y (save="output"); ∂ℓ/∂r is asked for when there is a residual r."""
    out = impl.forward_train(x, w, b, 1e-5, r, activation, 0.1)
    saved = out.y if save == "output" else x
    grads = impl.backward(g, saved, out.mean, out.invstd, w, b, r, activation, 0.1, save == "output", r is not None)
    return out, grads


def step_tensors(step: tuple[TrainForward, TrainBackward]) -> list[torch.Tensor]:
    """Every tensor :func:`run_fused` gave (outputs, statistics, gradients), for bit-for-bit comparisons."""
    return [t for t in (*step[0], *step[1]) if isinstance(t, torch.Tensor)]
