"""What the ported PyTorch tests share: bnlab's class for each torch class, and the gaps they mark xfail.

Each port runs PyTorch's own test body against bnlab's classes (and its functional form) on every backend the
root conftest's ``backend`` fixture offers. Where a case fails today for a reason the core rewrite of issue 9 §3
will remove, the test marks itself ``xfail(strict=True)`` with the reason below, so that it turns into a hard
failure (XPASS strict) the moment the gap closes and the mark must go.
"""

from __future__ import annotations

import pytest
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

#: Drop-in gaps other than forward AD/vmap, found by the ports: (backend ids affected, reason). The fixes
#: belong to the core (issue 9), not to the tests.
EMPTY_BATCH_STRIDES = (
    frozenset({"reference", "cpu", "triton", "native:contract"}),
    "an empty channels_last batch comes back with contiguous strides (torch keeps the input's): the empty-batch "
    "branches of bnlab/ops.py build the output with memory_format_of(x), which calls any empty tensor "
    "contiguous; issue 9 §3 drop-in gap",
)

#: torch skips its dtype check for an empty batch (a float64 batch of 0 samples through a float32 layer works).
EMPTY_BATCH_DTYPE = (
    frozenset({"reference", "cpu", "triton", "native", "native:contract"}),
    "an empty batch of another dtype than the layer (float64 input, float32 parameters) raises in "
    "bnlab/_checks.py where torch does no dtype check: issue 9 §3 (the core engineer's item)",
)


def expect_gap(request: pytest.FixtureRequest, gap: tuple[frozenset[str], str]) -> None:
    """Mark this test xfail (strict) from here on when its backend has ``gap``; call it just before the check."""
    backends, reason = gap
    if backend_id(request) in backends:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))


def backend_id(request: pytest.FixtureRequest) -> str:
    """The id of the root conftest's ``backend`` parameter (``native:contract`` included), for the gap tables."""
    return str(request.node.callspec.params["backend"])


def assert_same_state(ours: nn.Module, theirs: nn.Module, dtype: torch.dtype) -> None:
    """Every state_dict entry of ``ours`` equals torch's (parameters exactly, statistics within the table)."""
    mine, reference = ours.state_dict(), theirs.state_dict()
    assert list(mine) == list(reference)
    for key, value in reference.items():
        if value.is_floating_point():
            assert_close_to_torch(mine[key], value, dtype if value.dtype == dtype else value.dtype, key)
        else:
            assert torch.equal(mine[key], value), key
