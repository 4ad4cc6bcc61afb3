"""bnlab.tools.fold on forwards torch.fx cannot trace whole: torch.export, module by module, and what stays."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import bnlab
from bnlab.tools import FoldedBatchNorm, FoldFallbackWarning, fold, fold_with_report

#: The ``randomize`` fixture (tests/tools/conftest.py): statistics far from their initial values.
Randomize = Callable[[nn.Module], nn.Module]


class _ShapeArithmetic(nn.Module):
    """Python arithmetic on a shape (fx cannot trace it, torch.export can), and every case export must see."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)  # folds
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)  # conv2's output is also added: stays
        self.conv3, self.conv4, self.shared = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)  # twice
        self.bn_head, self.head = nn.BatchNorm1d(4), nn.Linear(4, 3)  # folds into the Linear after it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        odd = int(x.shape[-1]) % 2  # fx: int() of a Proxy
        x = F.pad(x, (0, odd, 0, odd))
        out = torch.relu(self.bn1(self.conv1(x)))
        c = self.conv2(out)
        out = self.bn2(c) + c
        out = self.shared(self.conv3(out)) + self.shared(self.conv4(out))
        return self.head(self.bn_head(out.mean((2, 3))))


def test_torch_export_sees_what_fx_cannot_and_folds_only_what_is_safe(randomize: Randomize) -> None:
    model = randomize(_ShapeArithmetic())
    x = torch.randn(2, 3, 7, 7)
    result = fold_with_report(model, example_inputs=x)  # auto: fx fails, export captures it
    assert result.method == "export"
    assert result.folded == [("bn1", "conv1"), ("bn_head", "head")] and result.before == ("bn_head",)
    assert dict(result.skipped) == {"bn2": "the output of 'conv2' is also used elsewhere",
                                    "shared": "the module is called more than once in a forward"}
    assert any("torch.fx cannot trace the model's own forward" in note for note in result.notes)
    torch.testing.assert_close(result.model(x), model(x), rtol=1e-5, atol=1e-5)


def test_without_example_inputs_each_batch_norm_says_which_forward_hid_it(randomize: Randomize) -> None:
    model = randomize(_ShapeArithmetic())
    with pytest.warns(FoldFallbackWarning, match=r"the model's own.*was not seen.*pass example_inputs"):
        result = fold_with_report(model)
    assert result.method == "modules" and result.folded == []
    assert [bn for bn, _ in result.skipped] == ["bn1", "bn2", "shared", "bn_head"]
    for _, reason in result.skipped:
        assert reason.startswith("called from code torch.fx cannot trace, in the forward of the model itself "
                                 "(_ShapeArithmetic: int() argument")
        assert reason.endswith("pass example_inputs so that torch.export captures it")


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


class _Checks(nn.Module):
    """A stem whose own code checks its input (fx cannot trace that) around blocks that trace."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)  # called in untraceable code
        self.blocks = nn.Sequential(_Block(), _Block())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 3:
            raise ValueError("expected 3 channels")
        return self.blocks(self.bn(self.conv(x)))


class _Wrapper(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = _Checks()
        self.alias = self.stem.blocks[1].conv  # the same conv under a second name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x)


def test_module_by_module_traces_as_high_as_it_can(randomize: Randomize) -> None:
    model = randomize(_Wrapper())
    with pytest.warns(FoldFallbackWarning, match="'stem'"):
        result = fold_with_report(model)
    assert result.method == "modules"
    assert result.folded == [("stem.blocks.0.bn", "stem.blocks.0.conv")]
    reasons = dict(result.skipped)
    assert reasons["stem.bn"].startswith("called from code torch.fx cannot trace, in the forward of 'stem' (_Checks")
    assert "registered under several names ('stem.blocks.1.conv', 'alias')" in reasons["stem.blocks.1.bn"]
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(result.model(x), model(x), rtol=1e-5, atol=1e-5)
    # torch.export sees the model's whole forward: the stem's pair folds, and the alias is harmless there.
    assert len(fold_with_report(model, example_inputs=x).folded) == 3


@pytest.mark.parametrize(("activation", "slope"), [
    pytest.param("relu", 0.01, id="relu"),
    pytest.param("leaky_relu", 0.2, id="leaky-relu"),
    pytest.param("silu", 0.01, id="silu"),
    pytest.param("elu", 0.01, id="elu"),
])
@pytest.mark.parametrize("method", ["fx", "export"])
def test_a_fused_batch_norm_act_folds_and_keeps_its_activation(activation: str, slope: float, method: str,
                                                               randomize: Randomize) -> None:
    layer = bnlab.nn.BatchNormAct2d(4, activation=activation, negative_slope=slope)
    model = randomize(nn.Sequential(nn.Conv2d(3, 4, 3), layer, nn.Conv2d(4, 2, 1)))
    x = torch.randn(2, 3, 6, 6)
    result = fold_with_report(model, method=method, example_inputs=x if method == "export" else None)
    assert result.folded == [("1", "0")]
    assert isinstance(result.model[1], FoldedBatchNorm) and result.model[1].activation == activation
    torch.testing.assert_close(result.model(x), model(x), rtol=1e-5, atol=1e-5)


def test_a_fused_batch_norm_act_does_not_fold_into_the_layer_after_it(randomize: Randomize) -> None:
    model = randomize(nn.Sequential(nn.ReLU(), bnlab.nn.BatchNormAct1d(4), nn.Linear(4, 2)))
    result = fold_with_report(model, example_inputs=torch.randn(5, 4))
    assert result.folded == [] and "its activation (relu) lies between it and the layer after it" in \
        result.skipped[0][1]


class _ReadsStatistics(nn.Module):
    """The forward reads the batch norm's tensors besides calling it: as a Python number (which no graph shows,
    and torch.export refuses), or as tensors in the graph."""

    def __init__(self, python_number: bool) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
        self.python_number = python_number

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = float(self.bn.running_var.mean()) if self.python_number else self.bn.running_var.mean()
        return self.bn(self.conv(x)) * scale + self.bn.weight.view(1, -1, 1, 1) * self.bn.num_features


@pytest.mark.parametrize("method", ["fx", "export", "sequential"])
def test_a_forward_that_reads_the_batch_norms_tensors_still_runs_after_folding(method: str,
                                                                                randomize: Randomize) -> None:
    # Issue 14: the folded model raised AttributeError ('Identity' has no attribute 'running_var') when called.
    model = randomize(_ReadsStatistics(python_number=method != "export"))
    if method == "sequential":
        model = randomize(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    x = torch.randn(2, 3, 6, 6)
    result = fold_with_report(model, method=method, example_inputs=x if method == "export" else None)
    assert len(result.folded) == 1
    folded_bn = next(m for m in result.model.modules() if isinstance(m, FoldedBatchNorm))
    assert torch.equal(folded_bn.running_var, dict(model.named_modules())[result.folded[0][0]].running_var)
    torch.testing.assert_close(result.model(x), model(x), rtol=1e-5, atol=1e-5)
    # The kept tensors are not part of the folded model's weights.
    assert not any(key.endswith("running_var") for key in result.model.state_dict())


class _StandardizedConv(nn.Conv2d):
    """Weight standardization: the forward normalizes the weight, which would undo a fold's scaling."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class _DepthwiseConv(nn.Conv2d):
    """A subclass that only fixes arguments (as transformers' EfficientNetDepthwiseConv2d): torch's forward."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, channels, 3, padding=1, groups=channels)


@pytest.mark.parametrize("method", ["fx", "modules", "export"])
def test_a_conv_subclass_folds_only_if_it_keeps_torchs_forward(method: str, randomize: Randomize) -> None:
    model = randomize(nn.Sequential(_StandardizedConv(3, 4, 3), nn.BatchNorm2d(4), _DepthwiseConv(4),
                                    nn.BatchNorm2d(4)))
    x = torch.randn(2, 3, 6, 6)
    result = fold_with_report(model, method=method, example_inputs=x if method == "export" else None)
    assert result.folded == [("3", "2")]
    if method == "export":  # fx traces into the overriding forward, so it sees no conv module there at all
        assert "overrides Conv2d.forward" in dict(result.skipped)["1"]
    torch.testing.assert_close(result.model(x), model(x), rtol=1e-5, atol=1e-5)


def test_keyword_example_inputs(randomize: Randomize) -> None:
    model = randomize(_ShapeArithmetic())
    x = torch.randn(2, 3, 6, 6)
    assert len(fold_with_report(model, example_inputs={"x": x}).folded) == 2


def test_method_export_needs_inputs_it_can_capture(randomize: Randomize) -> None:
    model = randomize(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    with pytest.raises(ValueError, match="method='export' needs example_inputs"):
        fold(model, method="export")

    class DataDependent(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x if x.sum() > 0 else -x

    with pytest.raises(ValueError, match=r"torch\.export cannot capture the model.*method='modules'"):
        fold(nn.Sequential(model, DataDependent()).eval(), method="export", example_inputs=torch.randn(2, 3, 6, 6))


def test_the_report_has_a_row_per_batch_norm(randomize: Randomize) -> None:
    model = randomize(_ShapeArithmetic())
    text = fold_with_report(model, example_inputs=torch.randn(2, 3, 6, 6)).report()
    lines = text.splitlines()
    assert lines[0] == ("fold: 2 of 4 batch-norm layer(s) folded, found with torch.export, capturing the forward on "
                        "the example inputs; the result keeps the model's own class (_ShapeArithmetic) and forward")
    assert re.fullmatch(r"batch norm\s+result  layer, or why it stays", lines[1])
    rows = {line.split()[0]: line for line in lines[2:6]}
    assert re.fullmatch(r"bn1\s+folded  into conv1 \(the layer before it\)", rows["bn1"])
    assert re.fullmatch(r"bn_head\s+folded  into head \(the layer after it\)", rows["bn_head"])
    assert re.fullmatch(r"bn2\s+left    the output of 'conv2' is also used elsewhere", rows["bn2"])
    assert lines[6].startswith("note: torch.fx cannot trace the model's own forward")


def test_fold_after_and_fold_before_are_reachable_as_documented(randomize: Randomize) -> None:
    # Issue 14: docs/tools.md named bnlab.tools.fold.fold_after, but bnlab.tools.fold is the function.
    conv, bn = nn.Conv2d(3, 4, 3), randomize(nn.Sequential(nn.BatchNorm2d(4)))[0]
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(bnlab.tools.fold_after(conv, bn)(x), bn(conv(x)), rtol=1e-5, atol=1e-5)
    linear, bn1 = nn.Linear(4, 2), randomize(nn.Sequential(nn.BatchNorm1d(4)))[0]
    v = torch.randn(5, 4)
    torch.testing.assert_close(bnlab.tools.fold_before(bn1, linear)(v), linear(bn1(v)), rtol=1e-5, atol=1e-5)
    docs = (Path(__file__).parents[2] / "docs" / "tools.md").read_text()
    named = set(re.findall(r"`(bnlab\.tools(?:\.\w+)+)", docs))
    assert "bnlab.tools.fold_after" in named
    for name in named:  # every dotted name the page gives must resolve, attribute by attribute
        value: object = bnlab
        for part in name.split(".")[1:]:
            assert hasattr(value, part), f"docs/tools.md names {name}, which does not exist"
            value = getattr(value, part)


class _BranchesOnData(nn.Module):
    """Control flow on tensor values in its own forward: neither torch.fx nor torch.export can capture it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
        self.block = _Block()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return self.block(y if y.sum() > 0 else -y)


def test_when_export_fails_too_the_reasons_say_so(randomize: Randomize) -> None:
    model = randomize(_BranchesOnData())
    x = torch.randn(2, 3, 6, 6)
    with pytest.warns(FoldFallbackWarning, match="torch.export could not capture it on example_inputs either"):
        result = fold_with_report(model, example_inputs=x)
    assert result.method == "modules" and result.folded == [("block.bn", "block.conv")]
    assert dict(result.skipped)["bn"] == (
        "called from code torch.fx cannot trace, in the forward of the model itself (_BranchesOnData: symbolically "
        "traced variables cannot be used as inputs to control flow); torch.export could not capture it on "
        "example_inputs either")
    assert [n.split(" (")[0] for n in result.notes] == ["torch.fx cannot trace the model's own forward",
                                                        "torch.export cannot capture the model on example_inputs",
                                                        "torch.fx cannot trace the forward of the model itself"]
