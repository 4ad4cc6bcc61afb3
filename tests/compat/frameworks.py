"""Shared by the Keras and Flax tests: input batches, the comparison rule, and running a bnlab module the way the
source framework runs its layer (same layout in and out)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from bnlab.compat import Ported

# "Within 1e-6 (float32)": the largest difference allowed, relative to the larger of 1 and the reference's
# largest magnitude (outputs here reach about 5, where one float32 ulp is 4.8e-7).
FLOAT32_TOL = 1e-6
FLOAT64_TOL = 1e-12
STEPS = 4  # training steps per comparison


def batches(shape: tuple[int, ...], channel_axis: int, steps: int = STEPS, seed: int = 0,
            dtype: torch.dtype = torch.float32) -> list[Tensor]:
    """``steps`` inputs whose channels have different means (in ±1) and spreads (0.5 to 2).

    Means stay within twice the spread: Keras and Flax take the variance in one pass, E[x²] − E[x]², whose float32
    error grows with (μ² + σ²)/σ²; ``test_one_pass_variance_*`` show that error apart.
    """
    gen = torch.Generator().manual_seed(seed)
    channels = shape[channel_axis]
    view = [1] * len(shape)
    view[channel_axis] = channels
    offset = (2 * torch.rand(channels, generator=gen, dtype=torch.float64) - 1).reshape(view)
    spread = (0.5 + 1.5 * torch.rand(channels, generator=gen, dtype=torch.float64)).reshape(view)
    return [(offset + spread * torch.randn(shape, generator=gen, dtype=torch.float64)).to(dtype)
            for _ in range(steps)]


def max_difference(ours: Tensor | np.ndarray, reference: Tensor | np.ndarray) -> float:
    a, b = (v.detach().to(torch.float64) if isinstance(v, Tensor) else torch.tensor(np.array(v), dtype=torch.float64)
            for v in (ours, reference))
    assert a.shape == b.shape, f"shape {tuple(a.shape)} != {tuple(b.shape)}"
    return (a - b).abs().max().item() / max(1.0, b.abs().max().item())


def assert_within(ours: Tensor | np.ndarray, reference: Tensor | np.ndarray, tol: float, what: str) -> None:
    difference = max_difference(ours, reference)
    assert difference <= tol, f"{what}: differs by {difference:.3g} (relative to scale), more than {tol:g}"


def run_module(ported: Ported, x: Tensor, train: bool) -> Tensor:
    """The module on a framework-layout input, the output back in the framework's layout."""
    ported.module.train(train)
    with torch.no_grad():
        return ported.framework_output(ported.module(ported.module_input(x)))
