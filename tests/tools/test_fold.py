"""bnlab.tools.fold: every pattern folds to the same outputs (float32 rounding; float64 to 1e-12), nothing else."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn

import bnlab
from bnlab.tools import FoldAssumptionWarning, FoldFallbackWarning, fold, fold_with_report

#: The ``randomize`` fixture (tests/tools/conftest.py): statistics far from their initial values.
Randomize = Callable[[nn.Module], nn.Module]


PATTERNS = [
    pytest.param(lambda: nn.Sequential(nn.Conv1d(3, 6, 3), nn.BatchNorm1d(6)), (4, 3, 9), id="conv1d"),
    pytest.param(lambda: nn.Sequential(nn.Conv2d(4, 6, 3, groups=2, bias=False), nn.BatchNorm2d(6)),
                 (2, 4, 7, 7), id="conv2d-grouped-no-bias"),
    pytest.param(lambda: nn.Sequential(nn.Conv2d(3, 4, 3, dilation=2, padding=2, padding_mode="reflect",
                                                 stride=2), nn.BatchNorm2d(4)), (2, 3, 9, 9),
                 id="conv2d-dilated-reflect-strided"),
    pytest.param(lambda: nn.Sequential(nn.Conv2d(6, 6, 3, padding=1, groups=6, padding_mode="circular"),
                                       nn.BatchNorm2d(6)), (2, 6, 5, 5), id="depthwise-circular"),
    pytest.param(lambda: nn.Sequential(nn.Conv3d(2, 4, 2), nn.BatchNorm3d(4)), (2, 2, 4, 4, 4), id="conv3d"),
    pytest.param(lambda: nn.Sequential(nn.ConvTranspose1d(4, 6, 3, stride=2, groups=2), nn.BatchNorm1d(6)),
                 (2, 4, 5), id="convT1d-grouped"),
    pytest.param(lambda: nn.Sequential(nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1,
                                                          groups=2, bias=False), nn.BatchNorm2d(4)),
                 (2, 6, 4, 4), id="convT2d-grouped-no-bias"),
    pytest.param(lambda: nn.Sequential(nn.ConvTranspose3d(2, 3, 2, dilation=2), nn.BatchNorm3d(3)),
                 (1, 2, 3, 3, 3), id="convT3d-dilated"),
    pytest.param(lambda: nn.Sequential(nn.Linear(5, 7, bias=False), nn.BatchNorm1d(7)), (6, 5),
                 id="linear-no-bias"),
    pytest.param(lambda: nn.Sequential(nn.BatchNorm1d(5), nn.Linear(5, 3)), (6, 5), id="bn-before-linear"),
    pytest.param(lambda: nn.Sequential(nn.ReLU(), nn.BatchNorm2d(6), nn.Conv2d(6, 4, 1, groups=2)),
                 (2, 6, 5, 5), id="bn-before-1x1-grouped"),
    pytest.param(lambda: nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3, stride=2)), (2, 3, 7, 7),
                 id="bn-before-unpadded-3x3"),
    # A layer with a batch norm on both sides takes both folds, one on top of the other.
    pytest.param(lambda: nn.Sequential(nn.BatchNorm1d(5), nn.Linear(5, 5), nn.BatchNorm1d(5)), (6, 5),
                 id="bn-linear-bn"),
    pytest.param(lambda: nn.Sequential(nn.ReLU(), nn.BatchNorm2d(4), nn.Conv2d(4, 6, 1), nn.BatchNorm2d(6)),
                 (2, 4, 5, 5), id="relu-bn-conv1x1-bn"),
    pytest.param(lambda: nn.Sequential(nn.Conv2d(3, 4, 3), bnlab.BatchNorm2d(4, backend="reference")),
                 (2, 3, 6, 6), id="bnlab-layer"),
    pytest.param(lambda: nn.Sequential(nn.Conv2d(3, 4, 3), bnlab.nn.FrozenBatchNorm2d(4)), (2, 3, 6, 6),
                 id="frozen-layer"),
    pytest.param(lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False)), (2, 3, 6, 6),
                 id="bn-without-affine"),
]


@pytest.mark.parametrize(("build", "shape"), PATTERNS)
@pytest.mark.parametrize("method", ["fx", "modules", "export", "sequential"])
def test_every_pattern_folds_exactly(build: Callable[[], nn.Module], shape: tuple[int, ...], method: str,
                                     randomize: Randomize) -> None:
    model = randomize(build())
    x = torch.randn(shape)
    result = fold_with_report(model, method=method, example_inputs=x)  # which also checks the outputs on x
    norms = sum(isinstance(m, nn.modules.batchnorm._BatchNorm | bnlab.nn.FrozenBatchNormBase) for m in model.modules())
    assert len(result.folded) == norms and not result.skipped, result
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm | bnlab.nn.FrozenBatchNormBase)
                   for m in result.model.modules())
    assert not result.model.training
    with torch.no_grad():
        expected, got = model(x), result.model(x)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        # In float64 the fold is exact up to float64 rounding: any slip in the algebra would show here.
        model64 = model.double()
        folded64 = fold(model64, method=method, example_inputs=x.double())
        torch.testing.assert_close(folded64(x.double()), model64(x.double()), rtol=1e-12, atol=1e-12)


def test_input_model_is_not_mutated_and_weights_are_new(randomize: Randomize) -> None:
    model = randomize(nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4)))
    before = copy.deepcopy(model.state_dict())
    folded = fold(model)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert model[0].bias is None and isinstance(model[1], nn.BatchNorm2d)
    assert folded.get_submodule("0").bias is not None
    assert folded.get_submodule("0").weight.data_ptr() != model[0].weight.data_ptr()


def test_training_mode_is_refused() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match=r"eval mode.*running statistics.*model\.eval\(\)"):
        fold(model)
    model.eval()
    model[1].train()  # one layer left in training mode is refused too
    with pytest.raises(ValueError, match="layer '1' is in training mode"):
        fold(model)


def test_a_graph_traced_elsewhere_with_bnlab_layers_folds(randomize: Randomize) -> None:
    # torch.fx's own tracer shows bnlab layers as call_function(module_forward, (get_attr bn, x)).
    model = randomize(nn.Sequential(nn.Linear(5, 6), bnlab.BatchNorm1d(6), nn.ReLU(), bnlab.BatchNorm1d(6),
                                     nn.Linear(6, 2)))
    traced = torch.fx.symbolic_trace(model).eval()
    assert any(n.op == "call_function" for n in traced.graph.nodes)
    x = torch.randn(4, 5)
    result = fold_with_report(traced, example_inputs=x)
    assert len(result.folded) == 2 and isinstance(result.model, torch.fx.GraphModule)
    torch.testing.assert_close(result.model(x), model(x), rtol=1e-5, atol=1e-5)


def test_a_graph_module_folds_a_layer_with_batch_norm_on_both_sides(randomize: Randomize) -> None:
    # The graph is rewritten here: the second fold must start from the first fold's layer, not the original.
    model = randomize(nn.Sequential(nn.BatchNorm1d(5), nn.Linear(5, 5), bnlab.BatchNorm1d(5)))
    x = torch.randn(6, 5)
    result = fold_with_report(torch.fx.symbolic_trace(model).eval(), example_inputs=x)
    assert result.folded == [("0", "1"), ("2", "1")]
    torch.testing.assert_close(result.model(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("build", [
    pytest.param(lambda: nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 3)), id="bn-before-linear"),
    pytest.param(lambda: nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)), id="bn-after-linear"),
])
def test_example_inputs_stop_a_wrong_linear_fold(build: Callable[[], nn.Module], randomize: Randomize) -> None:
    # BatchNorm1d on (N, C, L) normalizes C while the Linear acts on L; with C == L a blind fold would be wrong.
    model = randomize(build())
    x = torch.randn(2, 4, 4)
    assert fold_with_report(model, example_inputs=x).folded == []
    torch.testing.assert_close(fold(model, example_inputs=x)(x), model(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 2-D examples settle the question: no warning
        assert len(fold_with_report(model, example_inputs=torch.randn(2, 4)).folded) == 1
    # Without examples 2-D input is assumed, as in an MLP, and the caller is told so.
    with pytest.warns(FoldAssumptionWarning, match=r"assumes.*2-D.*example_inputs"):
        assert len(fold_with_report(model).folded) == 1


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.gate = _DataDependent()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 4, 5), nn.BatchNorm1d(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gate(self.features(x)))


class _DataDependent(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # control flow on data: torch.fx cannot trace this
            return x
        return -x


def test_untraceable_model_names_the_part_and_is_folded_module_by_module(randomize: Randomize) -> None:
    model = randomize(_Untraceable())
    with pytest.raises(ValueError, match=r"cannot trace 'gate' \(_DataDependent\).*method='auto'"):
        fold(model, method="fx")
    x = torch.randn(2, 3, 6, 6)
    # Without examples: 'gate' becomes a leaf of the model's graph, and the warning says its code was not seen.
    with pytest.warns(FoldFallbackWarning, match=r"'gate'.*was not seen.*pass example_inputs"):
        result = fold_with_report(model)
    assert result.method == "modules" and sorted(result.folded) == [("features.1", "features.0"),
                                                                    ("head.2", "head.1")]
    torch.testing.assert_close(result.model(x), model(x), rtol=1e-5, atol=1e-5)
    # With examples torch.export is tried first: it cannot capture control flow on data either, and says so.
    with pytest.warns(FoldFallbackWarning, match="torch.export could not capture it"):
        result = fold_with_report(model, example_inputs=x)
    assert result.method == "modules" and len(result.folded) == 2
    assert any("torch.export cannot capture" in note for note in result.notes)


def test_agrees_with_torch_fuser(randomize: Randomize) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the module imports torch.jit helpers that warn about deprecation
        from torch.fx.experimental.optimization import fuse

    model = randomize(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                     nn.Conv2d(8, 8, 3, bias=False), nn.BatchNorm2d(8)))
    x = torch.randn(2, 3, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = fuse(copy.deepcopy(model))
    torch.testing.assert_close(fold(model)(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="method must be one of"):
        fold(nn.Linear(2, 2).eval(), method="magic")
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        fold("model")  # type: ignore[arg-type]


def test_an_uninitialized_lazy_model_is_refused_with_the_fix(randomize: Randomize) -> None:
    model = nn.Sequential(nn.LazyConv2d(4, 3), nn.LazyBatchNorm2d()).eval()
    with pytest.raises(ValueError, match=r"lazy layer '0' \(LazyConv2d\) .*one forward pass"):
        fold(model)
    model(torch.randn(2, 3, 6, 6))  # initialized: folds like any other
    assert len(fold_with_report(randomize(model)).folded) == 1


class _IndexedSequential(nn.Module):
    """Untraceable, and calls the members of an nn.Sequential one by one, reusing the conv's output."""

    def __init__(self) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.gate = _DataDependent()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.f[0](x)
        return self.gate(self.f[2](self.f[1](c)) + c)


def test_the_sequential_method_states_its_assumption_and_example_inputs_check_it(randomize: Randomize) -> None:
    model = randomize(_IndexedSequential())
    x = torch.randn(2, 3, 6, 6)
    with pytest.raises(ValueError, match=r"changed the model's outputs.*in order"):
        fold(model, method="sequential", example_inputs=x)
    # Traced module by module, the model's own graph shows the conv's output read twice: nothing folds.
    with pytest.warns(FoldFallbackWarning):
        result = fold_with_report(model)
    assert result.folded == [] and result.skipped == [("f.1", "the output of 'f.0' is also used elsewhere")]
    torch.testing.assert_close(result.model(x), model(x))


def test_example_inputs_leave_the_statistics_of_layers_that_update_in_eval_alone(randomize: Randomize) -> None:
    model = randomize(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4)))
    model = bnlab.tools.freeze(model, "3", normalize_with=None, update_stats=True)  # updates on every forward
    before = model[3].running_mean.clone()
    result = fold_with_report(model, example_inputs=torch.randn(2, 3, 6, 6))
    assert result.folded == [("1", "0")] and [bn for bn, _ in result.skipped] == ["3"]
    torch.testing.assert_close(result.model[3].running_mean, before, rtol=0, atol=0)
