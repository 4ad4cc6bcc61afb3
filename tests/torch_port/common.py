"""What the ported PyTorch tests share: bnlab's class for each torch class, and a state comparison.

Each port runs PyTorch's own test body against bnlab's classes (and its functional form) on every backend the
root conftest's ``backend`` fixture offers. The drop-in gaps these ports found (forward AD, vmap and batched
gradients off the native complete op; an empty channels_last batch's strides; an empty batch of another dtype)
are closed, so no case here is marked xfail any more: a new gap gets a fix, or an ``xfail(strict=True)`` with
its reason in the test that finds it.
"""

from __future__ import annotations

import torch
from torch import nn

import bnlab
from tolerances import assert_close_to_torch

#: torch's class → bnlab's drop-in, and the lazy forms.
BNLAB_OF: dict[type[nn.Module], type[nn.Module]] = {
    nn.BatchNorm1d: bnlab.BatchNorm1d, nn.BatchNorm2d: bnlab.BatchNorm2d, nn.BatchNorm3d: bnlab.BatchNorm3d}
LAZY_OF: dict[type[nn.Module], type[nn.Module]] = {
    nn.BatchNorm1d: bnlab.LazyBatchNorm1d, nn.BatchNorm2d: bnlab.LazyBatchNorm2d,
    nn.BatchNorm3d: bnlab.LazyBatchNorm3d}
TORCH_LAZY_OF: dict[type[nn.Module], type[nn.Module]] = {
    nn.BatchNorm1d: nn.LazyBatchNorm1d, nn.BatchNorm2d: nn.LazyBatchNorm2d, nn.BatchNorm3d: nn.LazyBatchNorm3d}

def assert_same_state(ours: nn.Module, theirs: nn.Module, dtype: torch.dtype) -> None:
    """Every state_dict entry of ``ours`` equals torch's (parameters exactly, statistics within the table)."""
    mine, reference = ours.state_dict(), theirs.state_dict()
    assert list(mine) == list(reference)
    for key, value in reference.items():
        if value.is_floating_point():
            assert_close_to_torch(mine[key], value, dtype if value.dtype == dtype else value.dtype, key)
        else:
            assert torch.equal(mine[key], value), key
