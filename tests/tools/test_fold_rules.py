"""bnlab.tools.fold: which pairs fold and which stay, and the reason given for each that stays."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

import bnlab
from bnlab.tools import fold_with_report

#: The ``randomize`` fixture (tests/tools/conftest.py): statistics far from their initial values.
Randomize = Callable[[nn.Module], nn.Module]


class _Residual(nn.Module):
    """A ResNet-style block: conv-BN pairs, a shortcut reading the input, and a BN whose conv output is shared."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1, bias=False), bnlab.BatchNorm2d(4)
        self.conv3, self.bn3 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
        self.shared = nn.Conv2d(4, 4, 1)
        self.bn_shared = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out)) + x
        c = self.conv3(out)
        out = self.bn3(c) + c  # conv3's output is read twice: bn3 must stay
        s = self.shared(self.shared(out))  # called twice: it cannot absorb bn_shared
        return self.bn_shared(s)


@pytest.mark.parametrize("method", ["fx", "export"])
def test_residual_model_folds_what_it_safely_can(method: str, randomize: Randomize) -> None:
    model = randomize(_Residual())
    x = torch.randn(2, 4, 6, 6)
    result = fold_with_report(model, method=method, example_inputs=x if method == "export" else None)
    assert result.method == method
    assert sorted(bn for bn, _ in result.folded) == ["bn1", "bn2"]
    assert dict(result.skipped) == {"bn3": "the output of 'conv3' is also used elsewhere",
                                    "bn_shared": "'shared' is called more than once in a forward"}
    # The model keeps its class and forward: folded layers swapped in, folded batch norms become Identity.
    assert type(result.model) is _Residual and isinstance(result.model.bn2, nn.Identity)
    assert set(result.model.state_dict()) == set(model.state_dict()) - {
        f"bn{i}.{k}" for i in (1, 2) for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    } | {"conv1.bias", "conv2.bias"}
    torch.testing.assert_close(result.model(x), model(x), rtol=1e-5, atol=1e-5)


class _ReusedNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.bn = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.a(x)) + self.bn(self.b(x))


@pytest.mark.parametrize("method", ["fx", "export"])
def test_a_batch_norm_called_twice_is_left_in_place(method: str, randomize: Randomize) -> None:
    model = randomize(_ReusedNorm())
    x = torch.randn(2, 3, 4, 4)
    result = fold_with_report(model, method=method, example_inputs=x if method == "export" else None)
    assert result.folded == [] and result.skipped == [("bn", "the module is called more than once in a forward")]
    torch.testing.assert_close(result.model(x), model(x))


def test_batch_norm_that_cannot_fold_is_left_in_place(randomize: Randomize) -> None:
    model = randomize(nn.Sequential(
        nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3, padding=1),  # padded conv: padding would be shifted too
        nn.ReLU(), nn.BatchNorm2d(4, track_running_stats=False),  # batch statistics even in eval
    ))
    result = fold_with_report(model)
    assert result.folded == [] and [bn for bn, _ in result.skipped] == ["0", "3"]
    assert "track_running_stats=False" in dict(result.skipped)["3"]
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(result.model(x), model(x))


class _AliasedConv(nn.Module):
    """The conv is registered twice (``conv`` and ``stem.0``); the forward calls it under the second name."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
        self.stem = nn.Sequential(self.conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.stem(x))


class _AliasedNorm(nn.Module):
    """The batch norm is registered twice (``norm`` and ``head.0``); the forward calls it under the second name."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
        self.head = nn.Sequential(self.norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x))


@pytest.mark.parametrize("build", [pytest.param(_AliasedConv, id="aliased-conv"),
                                   pytest.param(_AliasedNorm, id="aliased-norm")])
def test_a_module_registered_under_two_names_is_replaced_under_both(build: Callable[[], nn.Module],
                                                                   randomize: Randomize) -> None:
    model = randomize(build())
    result = fold_with_report(model)
    assert len(result.folded) == 1
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(result.model(x), model(x), rtol=1e-5, atol=1e-5)
    # Still one module under both names, as in the model given.
    named = dict(result.model.named_modules(remove_duplicate=False))
    assert named["conv"] is (named["stem.0"] if build is _AliasedConv else result.model.conv)
    if build is _AliasedNorm:
        assert isinstance(named["norm"], nn.Identity) and named["norm"] is named["head.0"]


class _TiedWeight(nn.Module):
    """The Linear's weight is also used directly, outside the Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.proj, self.bn = nn.Linear(4, 4), nn.BatchNorm1d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.proj(x)) + nn.functional.linear(x, self.proj.weight)


class _TiedUnderAnotherName(nn.Module):
    """The encoder's weight is the decoder's, registered first: fx reads it as 'decoder.weight'."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder = nn.Linear(4, 4, bias=False)
        self.encoder, self.bn = nn.Linear(4, 4), nn.BatchNorm1d(4)
        self.encoder.weight = self.decoder.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(self.bn(self.encoder(x)), self.decoder.weight)


class _ReadsNormWeight(nn.Module):
    """The forward reads the batch norm's γ besides calling it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) * self.bn.weight.view(1, -1, 1, 1)


@pytest.mark.parametrize(("build", "shape", "read"), [
    pytest.param(_TiedWeight, (5, 4), "proj.weight", id="tied-weight"),
    pytest.param(_TiedUnderAnotherName, (5, 4), "decoder.weight", id="tied-under-another-name"),
])
@pytest.mark.parametrize("method", ["fx", "export"])
def test_a_pair_whose_tensors_are_read_elsewhere_is_left(build: Callable[[], nn.Module], shape: tuple[int, ...],
                                                         read: str, method: str, randomize: Randomize) -> None:
    model = randomize(build())
    x = torch.randn(shape)
    result = fold_with_report(model, method=method, example_inputs=x if method == "export" else None)
    assert result.folded == [] and len(result.skipped) == 1, result
    assert f"{read!r}" in result.skipped[0][1]
    torch.testing.assert_close(result.model(x), model(x))


def _hooked(module: nn.Module, pre: bool = False) -> nn.Module:
    if pre:
        module.register_forward_pre_hook(lambda m, args: None)
    else:
        module.register_forward_hook(lambda m, args, out: None)
    return module


LEFT = [
    pytest.param(lambda: nn.Sequential(weight_norm(nn.Conv2d(3, 4, 3)), nn.BatchNorm2d(4)), (2, 3, 6, 6),
                 "parametrized", id="weight-norm-conv"),
    pytest.param(lambda: nn.Sequential(nn.BatchNorm1d(3), weight_norm(nn.Linear(3, 4))), (5, 3),
                 "parametrized", id="weight-norm-linear-after-bn"),
    pytest.param(lambda: nn.Sequential(nn.Conv2d(3, 4, 3), _hooked(nn.BatchNorm2d(4))), (2, 3, 6, 6),
                 "hooks", id="hooked-bn"),
    pytest.param(lambda: nn.Sequential(_hooked(nn.Conv2d(3, 4, 3)), nn.BatchNorm2d(4)), (2, 3, 6, 6),
                 "hooks", id="hooked-conv"),
    pytest.param(lambda: nn.Sequential(nn.BatchNorm1d(3), _hooked(nn.Linear(3, 4), pre=True)), (5, 3),
                 "hooks", id="pre-hooked-linear"),
]


@pytest.mark.parametrize(("build", "shape", "words"), LEFT)
@pytest.mark.parametrize("method", ["fx", "sequential", "export"])
def test_pairs_that_must_stay_are_left_with_a_reason(build: Callable[[], nn.Module], shape: tuple[int, ...],
                                                     words: str, method: str, randomize: Randomize) -> None:
    model = randomize(build())
    x = torch.randn(shape)
    result = fold_with_report(model, method=method, example_inputs=x if method == "export" else None)
    assert result.folded == [] and len(result.skipped) == 1 and words in result.skipped[0][1], result
    torch.testing.assert_close(result.model(x), model(x))


class _KeywordCall(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(input=self.conv(x))


def test_a_batch_norm_called_with_a_keyword_argument_folds(randomize: Randomize) -> None:
    model = randomize(_KeywordCall())
    result = fold_with_report(model)
    assert result.folded == [("bn", "conv")] and not result.skipped
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(result.model(x), model(x), rtol=1e-5, atol=1e-5)
