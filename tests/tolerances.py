"""The one tolerance table of the suite, and the rule that earns it.

A result is judged against a float64 reference. A bnlab path may be at most about twice as wrong as PyTorch at
the same dtype (both measured against that reference), plus a small floor for when torch happens to be exact.
"""

from __future__ import annotations

import torch

# Absolute floor per dtype, in units of the output's scale (outputs here are O(1)).
FLOOR = {
    torch.float64: 1e-12,
    torch.float32: 2e-6,
    torch.bfloat16: 2e-2,
    torch.float16: 2e-3,
}

# A kernel judged against the float64 reference run at the kernel's own dtype (the reference rounds once, at the
# end; a kernel computes in float32 and sums in its own order, so its floor is four of the dtype's).
KERNEL_FLOOR = {dtype: 4 * floor for dtype, floor in FLOOR.items()}

# Direct comparison with torch when no float64 reference is at hand (running statistics, state).
RTOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}
ATOL = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 1e-3}


def max_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return (value.double() - reference.double()).abs().max().item() if value.numel() else 0.0


def assert_as_accurate_as_torch(ours: torch.Tensor, theirs: torch.Tensor, reference: torch.Tensor,
                                dtype: torch.dtype, what: str = "output") -> None:
    """ours may be at most 2x as far from the float64 reference as torch's result, plus the dtype's floor."""
    assert ours.shape == reference.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(reference.shape)}"
    assert torch.isfinite(ours).all() or not torch.isfinite(reference).all(), f"{what}: non-finite values"
    scale = max(1.0, reference.double().abs().max().item()) if reference.numel() else 1.0
    ours_err, torch_err = max_error(ours, reference), max_error(theirs, reference)
    bound = 2.0 * torch_err + FLOOR[dtype] * scale
    assert ours_err <= bound, f"{what}: error {ours_err:.3g} > 2 x torch's {torch_err:.3g} + floor ({dtype})"


def assert_close_to_torch(ours: torch.Tensor, theirs: torch.Tensor, dtype: torch.dtype, what: str = "") -> None:
    torch.testing.assert_close(ours, theirs, rtol=RTOL[dtype], atol=ATOL[dtype], msg=lambda m: f"{what}: {m}")
