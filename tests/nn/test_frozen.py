"""FrozenBatchNorm1d/2d/3d: the eval-mode transform as buffers, the same in train and eval, torch's state_dict."""

from __future__ import annotations

import pytest
import torch

import bnlab
from bnlab.reference import forward_inference

CASES = [
    pytest.param(bnlab.nn.FrozenBatchNorm1d, torch.nn.BatchNorm1d, (6, 5), id="1d-NC"),
    pytest.param(bnlab.nn.FrozenBatchNorm1d, torch.nn.BatchNorm1d, (4, 5, 7), id="1d-NCL"),
    pytest.param(bnlab.nn.FrozenBatchNorm2d, torch.nn.BatchNorm2d, (3, 5, 4, 6), id="2d"),
    pytest.param(bnlab.nn.FrozenBatchNorm3d, torch.nn.BatchNorm3d, (2, 5, 3, 4, 2), id="3d"),
]


def _trained(torch_cls: type[torch.nn.Module], shape: tuple[int, ...], **kwargs: object) -> torch.nn.Module:
    bn = torch_cls(shape[1], **kwargs)
    with torch.no_grad():
        for _ in range(3):
            bn.train()(torch.randn(shape) * 3 + 1)
        if bn.weight is not None:
            bn.weight.uniform_(0.5, 2.0)
        if bn.bias is not None:
            bn.bias.uniform_(-1.0, 1.0)
    return bn.eval()


@pytest.mark.parametrize(("frozen_cls", "torch_cls", "shape"), CASES)
def test_loads_a_plain_state_dict_and_matches_eval_mode(frozen_cls: type, torch_cls: type,
                                                         shape: tuple[int, ...]) -> None:
    bn = _trained(torch_cls, shape)
    frozen = frozen_cls(shape[1])
    frozen.load_state_dict(bn.state_dict())
    x = torch.randn(shape, dtype=torch.float64).float()
    reference = forward_inference(x.double(), bn.running_mean.double(), bn.running_var.double(),
                                  bn.weight.double(), bn.bias.double(), bn.eps)
    for mode in (True, False):  # frozen: the same computation in either mode
        frozen.train(mode)
        out = frozen(x)
        torch.testing.assert_close(out.double(), reference, rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(frozen(x), bn(x), rtol=1e-5, atol=2e-6)
    assert list(frozen.parameters()) == []
    assert list(frozen.state_dict()) == list(bn.state_dict())  # same keys, same order: loads both ways
    bn.load_state_dict(frozen.state_dict())


def test_old_checkpoint_without_batch_counter_loads() -> None:
    bn = _trained(torch.nn.BatchNorm2d, (4, 3, 5, 5))
    state = {k: v for k, v in bn.state_dict().items() if k != "num_batches_tracked"}  # PyTorch < 0.4.1
    frozen = bnlab.nn.FrozenBatchNorm2d(3)
    frozen.load_state_dict(state)
    assert int(frozen.num_batches_tracked) == 0
    assert torch.equal(frozen.running_var, bn.running_var)


@pytest.mark.parametrize("kwargs", [pytest.param({"affine": False}, id="no-affine"),
                                    pytest.param({"bias": False}, id="gamma-without-beta")])
def test_layers_without_affine_parts(kwargs: dict[str, bool]) -> None:
    bn = _trained(torch.nn.BatchNorm2d, (4, 3, 5, 5), **kwargs)
    frozen = bnlab.nn.FrozenBatchNorm2d(3, **kwargs)
    frozen.load_state_dict(bn.state_dict())
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(frozen(x), bn(x), rtol=1e-5, atol=2e-6)
    assert ("bias=False" in repr(frozen)) == ("bias" in kwargs)


def test_keeps_channels_last_and_half_precision() -> None:
    bn = _trained(torch.nn.BatchNorm2d, (4, 8, 5, 5))
    frozen = bnlab.convert(bn, to="frozen")
    x = torch.randn(2, 8, 5, 5).contiguous(memory_format=torch.channels_last)
    assert frozen(x).is_contiguous(memory_format=torch.channels_last)
    half = frozen(x.half())
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), bn(x), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize(("shape", "match"), [
    pytest.param((2, 3), "expected 4D input", id="wrong-rank"),
    pytest.param((2, 4, 5, 5), "4 channels", id="wrong-channels"),
])
def test_bad_input_says_what_to_do(shape: tuple[int, ...], match: str) -> None:
    with pytest.raises((ValueError, RuntimeError), match=match):
        bnlab.nn.FrozenBatchNorm2d(3)(torch.randn(shape))


def test_gradient_flows_to_the_input_only() -> None:
    frozen = bnlab.convert(_trained(torch.nn.BatchNorm1d, (8, 4)), to="frozen")
    x = torch.randn(3, 4, requires_grad=True)
    frozen(x).sum().backward()
    assert x.grad is not None
    scale, _ = frozen.scale_and_shift()
    torch.testing.assert_close(x.grad, scale.expand(3, 4))
