"""How far darknet's batch-norm backward is from the true gradient of darknet's own forward (docs/math.md).

darknet normalizes with (x − μ)/(√s² + 1e-6), s² the unbiased variance, but its backward differentiates
(x − μ)/√(σ² + 1e-5) with ∂σ²/∂x = 2(x − μ)/m. This script runs ``bnlab.reference.darknet`` in float64, takes
the exact gradient of its forward with autograd, and prints the relative error of darknet's ∂ℓ/∂x for a few
hand-picked layers (∂ℓ/∂γ and ∂ℓ/∂β are exact in darknet):

    .venv/bin/python scripts/darknet_gradient_gap.py
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from bnlab.reference import darknet


class Case(NamedTuple):
    name: str
    batch: int
    c: int
    h: int
    w: int
    scale: float = 1.0  # the input's standard deviation: small values show the ε placement
    train: bool = True  # False: the backward of the eval forward, after a few training steps


CASES = [
    Case("fully connected, batch 2 (m = 2)", 2, 8, 1, 1),
    Case("fully connected, batch 8 (m = 8)", 8, 16, 1, 1),
    Case("fully connected, batch 64 (m = 64)", 64, 16, 1, 1),
    Case("conv 8x8, batch 4 (m = 256)", 4, 8, 8, 8),
    Case("conv 13x13, batch 16 (m = 2704)", 16, 8, 13, 13),
    Case("conv 8x8, batch 4, input std 1e-2", 4, 8, 8, 8, scale=1e-2),
    Case("conv 8x8, batch 4, input std 1e-3", 4, 8, 8, 8, scale=1e-3),
    Case("conv 8x8, batch 4, eval mode", 4, 8, 8, 8, train=False),
]


class Gap(NamedTuple):
    values_per_channel: int
    relative_l2: float  # ‖darknet − true‖₂ / ‖true‖₂ over ∂ℓ/∂x
    relative_max: float  # max |darknet − true| / max |true|
    relative_to_direct: float  # ‖darknet − true‖₂ / ‖γ·∂ℓ/∂y/σ‖₂, the gradient's scale (the true one can be ~0)


def gradient_gap(case: Case, seed: int = 0) -> Gap:
    """darknet's ∂ℓ/∂x against autograd's gradient of darknet's forward, both in float64."""
    gen = torch.Generator().manual_seed(seed)
    size = case.batch * case.c * case.h * case.w
    layer = darknet.make_batchnorm_layer(case.batch, case.w, case.h, case.c, dtype=torch.float64)
    layer.scales = 1.0 + 0.5 * torch.rand(case.c, generator=gen, dtype=torch.float64)
    layer.biases = torch.randn(case.c, generator=gen, dtype=torch.float64)
    shift = torch.randn(case.c, generator=gen, dtype=torch.float64).repeat_interleave(case.h * case.w).repeat(
        case.batch)

    def batch() -> torch.Tensor:
        return shift + case.scale * torch.randn(size, generator=gen, dtype=torch.float64)

    if not case.train:  # rolling statistics start at 0: let them settle first
        for _ in range(200):
            darknet.forward_batchnorm_layer(layer, batch(), train=True)
    x = batch().requires_grad_(True)
    dy = torch.randn(size, generator=gen, dtype=torch.float64)
    y = darknet.forward_batchnorm_layer(layer, x, train=case.train)
    (true_dx,) = torch.autograd.grad(y, x, dy)
    with torch.no_grad():
        darknet_dx = darknet.backward_batchnorm_layer(layer, dy, train=case.train)
        stats = (layer.mean, layer.variance) if case.train else (layer.rolling_mean, layer.rolling_variance)
        direct = darknet.scale_bias(darknet.normalize_cpu(dy, torch.zeros_like(stats[0]), stats[1], case.batch,
                                                          case.c, case.h * case.w), layer.scales, case.batch,
                                    case.c, case.h * case.w)
    diff = darknet_dx - true_dx
    return Gap(case.batch * case.h * case.w, (diff.norm() / true_dx.norm()).item(),
               (diff.abs().max() / true_dx.abs().max()).item(), (diff.norm() / direct.norm()).item())


def main() -> None:
    print("| layer | m | ‖Δ‖₂/‖∂ℓ/∂x‖₂ | max|Δ|/max|∂ℓ/∂x| | ‖Δ‖₂/‖γ·∂ℓ/∂y/σ‖₂ |")
    print("|---|---:|---:|---:|---:|")
    for case in CASES:
        gap = gradient_gap(case)
        print(f"| {case.name} | {gap.values_per_channel} | {gap.relative_l2:.3g} | {gap.relative_max:.3g} | "
              f"{gap.relative_to_direct:.3g} |")


if __name__ == "__main__":
    main()
