"""Port of PyTorch's test/nn/test_load_state_dict.py: the tests that load batch-norm layers (TestLoadStateDict).

Each keeps its name and runs with bnlab's layer where torch's test builds ``nn.BatchNorm1d``/``2d``, with
``torch.__future__``'s swap-on-conversion switched on and off as torch's ``@swap([True, False])`` does. The file's
other tests load only Linear, LSTM or custom modules and are not ported.
"""

from __future__ import annotations

from collections.abc import Iterator
from copy import deepcopy

import pytest
import torch
from torch import nn

import bnlab


@pytest.fixture(params=[pytest.param(True, id="swap"), pytest.param(False, id="no-swap")])
def swap(request: pytest.FixtureRequest) -> Iterator[bool]:
    """torch's ``@swap([True, False])``: load_state_dict swaps tensors in (True) or copies into them (False)."""
    previous = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(request.param)
    yield request.param
    torch.__future__.set_swap_module_params_on_conversion(previous)


def _assert_equal(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.usefixtures("swap")
def test_load_state_dict(backend: str) -> None:
    conv1_bias_dtype = torch.float32
    net = nn.Module()
    net.linear1 = net.linear2 = nn.Linear(5, 5)
    net.bn = bnlab.BatchNorm2d(2, backend=backend)
    block = nn.Module()
    block.conv1 = nn.Conv2d(3, 3, 3, bias=True)
    block.conv2 = nn.Conv2d(3, 3, 3, bias=False)
    net.block = block
    net.add_module("empty", None)

    state_dict = net.state_dict()
    state_dict.update({"linear1.weight": torch.ones(5, 5),
                       "block.conv1.bias": torch.arange(1, 4, dtype=conv1_bias_dtype),
                       "bn.running_mean": torch.randn(2)})
    # A DDP state_dict ("module." prefixes) loads into the local model too.
    ddp_state_dict = net.state_dict()
    ddp_state_dict.update({"module.linear1.weight": torch.ones(5, 5),
                           "module.block.conv1.bias": torch.arange(1, 4, dtype=conv1_bias_dtype),
                           "module.bn.running_mean": torch.randn(2)})
    nn.modules.utils.consume_prefix_in_state_dict_if_present(ddp_state_dict, "module.")
    for sd in (state_dict, ddp_state_dict):
        incompatible = net.load_state_dict(sd)
        assert not incompatible.missing_keys and not incompatible.unexpected_keys
        assert "Incompatible" not in str(incompatible)
        _assert_equal(net.linear1.weight, sd["linear1.weight"])
        _assert_equal(net.block.conv1.bias, sd["block.conv1.bias"])
        _assert_equal(net.bn.running_mean, sd["bn.running_mean"])

    for extra in ("extra", "extra.param"):
        state_dict = net.state_dict()
        state_dict.update({extra: torch.ones(5)})
        with pytest.raises(RuntimeError):
            net.load_state_dict(state_dict)
        incompatible = net.load_state_dict(state_dict, strict=False)
        assert incompatible.missing_keys == [] and incompatible.unexpected_keys == [extra]
        assert "Incompatible" in str(incompatible)

    state_dict = net.state_dict()
    del state_dict["linear1.weight"]
    with pytest.raises(RuntimeError):
        net.load_state_dict(state_dict)
    incompatible = net.load_state_dict(state_dict, strict=False)
    assert incompatible.missing_keys == ["linear1.weight"] and incompatible.unexpected_keys == []
    state_dict.update({"extra.param": torch.ones(5)})
    with pytest.raises(RuntimeError):
        net.load_state_dict(state_dict)
    incompatible = net.load_state_dict(state_dict, strict=False)
    assert incompatible.missing_keys == ["linear1.weight"] and incompatible.unexpected_keys == ["extra.param"]

    state_dict = net.state_dict()
    state_dict.update({"bn.running_mean": torch.rand(14, 4)})  # wrong size
    with pytest.raises(RuntimeError):
        net.load_state_dict(state_dict)
    with pytest.raises(RuntimeError):
        net.load_state_dict(state_dict, strict=False)

    old_state_dict = deepcopy(net.state_dict())
    state_dict = {"linear1.weight": torch.ones(5, 5),
                  "block.conv1.bias": torch.arange(1, 4, dtype=conv1_bias_dtype),
                  "bn.running_mean": torch.randn(2),
                  "nonexistent_key": torch.rand(3)}
    net.load_state_dict(state_dict, strict=False)
    _assert_equal(net.linear1.weight, state_dict["linear1.weight"])
    _assert_equal(net.block.conv1.bias, state_dict["block.conv1.bias"])
    _assert_equal(net.bn.running_mean, state_dict["bn.running_mean"])
    new_state_dict = net.state_dict()
    for key in ("linear1.weight", "block.conv1.bias", "bn.running_mean"):
        del old_state_dict[key]
    for key, value in old_state_dict.items():
        assert value.equal(new_state_dict[key]), key


@pytest.mark.usefixtures("swap")
@pytest.mark.parametrize("cls", [pytest.param(bnlab.BatchNorm2d, id="BatchNorm2d"),
                                 pytest.param(bnlab.nn.BatchNormAct2d, id="BatchNormAct2d")])
def test_load_state_dict_BC(cls: type[nn.Module]) -> None:
    # num_batches_tracked came with state_dict version 2: an older checkpoint (version 1, or no version) loads
    # with the count 0, a long tensor.
    bn = cls(3)
    state_dict = bn.state_dict()
    del state_dict["num_batches_tracked"]
    state_dict._metadata[""]["version"] = 1  # type: ignore[attr-defined]
    bn.load_state_dict(state_dict)
    assert bn.num_batches_tracked.dtype == torch.long and bn.num_batches_tracked.item() == 0
    del state_dict._metadata[""]["version"]  # type: ignore[attr-defined]
    bn.load_state_dict(state_dict)
    assert bn.num_batches_tracked.dtype == torch.long and bn.num_batches_tracked.item() == 0


class _Net(nn.Module):
    """The model of torch's assign tests: Linear(3, 5) then BatchNorm1d(5) (bnlab's, on a backend)."""

    def __init__(self, backend: str = "auto", with_x: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, 5)
        self.bn = bnlab.BatchNorm1d(5, backend=backend)
        self.x = nn.Parameter(torch.rand(5), requires_grad=False) if with_x else None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.fc1(input))
        return y if self.x is None else self.x + y


@pytest.mark.parametrize("keep_vars", [pytest.param(True, id="keep-vars"), pytest.param(False, id="detached")])
def test_load_state_dict_assign_meta(backend: str, swap: bool, keep_vars: bool) -> None:
    # A model built on the meta device takes a state_dict with assign=True: parameters and persistent buffers
    # are the loaded tensors (or swapped into the old objects), in order, and it computes the same.
    net = _Net(backend, with_x=True)
    state_dict = net.state_dict(keep_vars=keep_vars)
    for v in state_dict.values():
        v.requires_grad_(False)
    with torch.device("meta"):
        net_meta = _Net(backend, with_x=True)
    old = net_meta.state_dict(keep_vars=True)
    net_meta.load_state_dict(state_dict, assign=True)
    new = net_meta.state_dict(keep_vars=True)
    for key in state_dict:
        owner = net_meta.get_submodule(key.rpartition(".")[0]) if "." in key else net_meta
        name = key.rpartition(".")[2]
        if name in owner._parameters:
            if keep_vars and not swap:
                assert state_dict[key] is new[key]
            elif swap:
                assert new[key] is old[key]
            else:
                assert new[key] is not old[key]
            assert old[key].requires_grad == new[key].requires_grad
            torch.testing.assert_close(new[key], state_dict[key])
        elif name in owner._buffers and name not in owner._non_persistent_buffers_set:
            # torch's test reads only top-level keys; on the layer's own buffers torch's BatchNorm1d keeps the
            # old buffer objects when swapping and takes the loaded ones otherwise, and so must bnlab's.
            assert (new[key] is old[key]) if swap else (new[key] is state_dict[key])
            torch.testing.assert_close(new[key], state_dict[key])
    assert [n for n, _ in net.named_parameters()] == [n for n, _ in net_meta.named_parameters()]
    assert [n for n, _ in net.named_buffers()] == [n for n, _ in net_meta.named_buffers()]
    t = torch.randn(4, 3)
    torch.testing.assert_close(net_meta(t.clone()), net(t))


@pytest.mark.usefixtures("swap")
def test_load_state_dict_assign_with_optimizer(backend: str) -> None:
    # Train three Adam steps, save model and optimizer, load both into a meta-built model with assign=True (the
    # optimizer built after loading): three more steps on each give the same states.
    net = _Net(backend)
    opt = torch.optim.Adam(net.parameters(), lr=1000)
    x = torch.randn(4, 3)
    for _ in range(3):
        opt.zero_grad()
        net(x).sum().backward()
        opt.step()
    opt_state_dict, net_state_dict = deepcopy(opt.state_dict()), deepcopy(net.state_dict())
    with torch.device("meta"):
        net_meta = _Net(backend)
    net_meta.load_state_dict(net_state_dict, assign=True)
    opt2 = torch.optim.Adam(net_meta.parameters(), lr=1000)
    opt2.load_state_dict(opt_state_dict)
    y = x.clone()
    for _ in range(3):
        opt.zero_grad()
        net(x).sum().backward()
        opt.step()
        opt2.zero_grad()
        net_meta(y).sum().backward()
        opt2.step()
    torch.testing.assert_close(opt.state_dict(), opt2.state_dict())
    torch.testing.assert_close(net.state_dict(), net_meta.state_dict())


@pytest.mark.usefixtures("swap")
def test_load_state_dict_assign_shape_stride(backend: str) -> None:
    # With assign=True a tensor may come with other strides, never with another shape.
    state_dict = _Net(backend).state_dict()
    state_dict["fc1.weight"] = torch.randn(3, 5).transpose(0, 1)
    net2 = _Net(backend)
    net2.load_state_dict(state_dict, strict=False, assign=True)
    state_dict["fc1.weight"] = torch.randn(2, 4)
    with pytest.raises(RuntimeError, match=r"size mismatch for fc1\.weight: copying a param with shape"):
        net2.load_state_dict(state_dict, strict=False, assign=True)
