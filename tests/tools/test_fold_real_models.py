"""bnlab.tools.fold on real-world models: Hugging Face ``transformers``' vision models with batch norm.

Small random configurations (nothing is downloaded: HF_HUB_OFFLINE=1), with random statistics, γ and β so that a
wrong fold shows. torch.fx cannot trace any of them whole; torch.export (with example inputs) captures them all,
and torch.fx module by module (without) finds every pair that does not sit in code it cannot trace.
Needs the ``test-models`` extra (``make test`` installs it).
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: it must never reach the network
transformers = pytest.importorskip("transformers", reason="needs the test-models extra: make setup installs it")

from bnlab.tools import FoldedBatchNorm, FoldFallbackWarning, Folding, fold, fold_with_report  # noqa: E402
from tolerances import assert_as_accurate_as_torch  # noqa: E402

#: The ``randomize`` fixture (tests/tools/conftest.py): statistics far from their initial values.
Randomize = Callable[[nn.Module], nn.Module]


def resnet() -> nn.Module:
    config = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                                       layer_type="bottleneck", num_labels=5)
    return transformers.ResNetForImageClassification(config)


def mobilenet_v2() -> nn.Module:
    config = transformers.MobileNetV2Config(depth_multiplier=0.35, image_size=32, num_labels=5)
    return transformers.MobileNetV2ForImageClassification(config)


def regnet() -> nn.Module:
    config = transformers.RegNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 2, 1],
                                       groups_width=8, num_labels=5)
    return transformers.RegNetForImageClassification(config)


def efficientnet() -> nn.Module:
    # hidden_dim must be the width of the top conv (round_filters(1280) at this width) or the model cannot run.
    config = transformers.EfficientNetConfig(width_coefficient=0.1, depth_coefficient=0.1, image_size=32,
                                             hidden_dim=128, num_labels=5)
    return transformers.EfficientNetForImageClassification(config)


# (builder, batch norms in it, folded without example inputs by torch.fx module by module)
MODELS = [
    pytest.param(resnet, 16, 16, id="resnet"),  # bottleneck blocks, a shortcut conv-BN, in-place residual add
    pytest.param(mobilenet_v2, 52, 0, id="mobilenet-v2"),  # TF padding: shape arithmetic fx cannot trace
    pytest.param(regnet, 20, 20, id="regnet"),  # grouped convs, squeeze-and-excitation
    pytest.param(efficientnet, 22, 22, id="efficientnet"),  # depthwise convs of a Conv2d subclass
]


def _norms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _pixels(dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(0)
    return {"pixel_values": torch.randn(2, 3, 32, 32, generator=gen, dtype=torch.float64).to(dtype)}


_FOLDED: dict[Callable[[], nn.Module], tuple[nn.Module, Folding]] = {}


def _folded(build: Callable[[], nn.Module], randomize: Randomize) -> tuple[nn.Module, Folding]:
    """The model (random statistics) and its fold on :func:`_pixels`, made once per model for the whole file."""
    if build not in _FOLDED:
        model = randomize(build())
        _FOLDED[build] = model, fold_with_report(model, example_inputs=_pixels())
    return _FOLDED[build]


@pytest.mark.parametrize(("build", "norms", "_"), MODELS)
def test_torch_export_folds_every_batch_norm_and_keeps_the_model(build: Callable[[], nn.Module], norms: int, _: int,
                                                                 randomize: Randomize) -> None:
    model, result = _folded(build, randomize)  # fold_with_report also checks the outputs on the example
    assert _norms(model) == norms
    example = _pixels()
    assert result.method == "export" and len(result.folded) == norms and not result.skipped, result.report()
    folded = result.model
    assert type(folded) is type(model) and _norms(folded) == 0
    assert sum(isinstance(m, FoldedBatchNorm) for m in folded.modules()) == norms
    with torch.no_grad():
        got, expected = folded(**example), model(**example)
        assert type(got) is type(expected)  # the model's own forward: ImageClassifierOutput... as before
        # Judged against the float64 model: the fold may be at most twice as wrong as the unfolded float32 model.
        reference = copy.deepcopy(model).double()(**_pixels(torch.float64)).logits
        assert_as_accurate_as_torch(got.logits, expected.logits, reference, torch.float32, "logits")


@pytest.mark.parametrize(("build", "norms", "_"), MODELS)
def test_in_float64_the_fold_is_exact_to_1e_10(build: Callable[[], nn.Module], norms: int, _: int,
                                                randomize: Randomize) -> None:
    model = randomize(build()).double()
    example = _pixels(torch.float64)
    folded = fold(model, example_inputs=example)
    with torch.no_grad():
        got, expected = folded(**example).logits, model(**example).logits
    scale = max(1.0, float(expected.abs().max()))
    assert float((got - expected).abs().max()) <= 1e-10 * scale


@pytest.mark.parametrize(("build", "norms", "found"), MODELS)
def test_without_example_inputs_fx_folds_module_by_module(build: Callable[[], nn.Module], norms: int, found: int,
                                                          randomize: Randomize) -> None:
    model = randomize(build())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FoldFallbackWarning)
        result = fold_with_report(model)
    assert result.method == "modules" and len(result.folded) == found
    assert len(result.skipped) == norms - found
    # What stays, stays because fx cannot trace the code around it: each row says so, and what to do.
    assert all("torch.fx cannot trace" in reason and "example_inputs" in reason for _, reason in result.skipped)
    example = _pixels()
    with torch.no_grad():
        torch.testing.assert_close(result.model(**example).logits, model(**example).logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", [
    pytest.param("inductor", id="inductor"),  # the real compiler, on one model (about a minute on 2 cores)
])
def test_torch_compile_of_a_folded_real_model(backend: str, randomize: Randomize) -> None:
    folded = _folded(resnet, randomize)[1].model
    example = _pixels()
    compiled = torch.compile(folded, backend=backend)
    with torch.no_grad():
        torch.testing.assert_close(compiled(**example).logits, folded(**example).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("build", "norms", "_"), [p for p in MODELS if p.id != "resnet"])
def test_torch_compile_captures_every_folded_real_model(build: Callable[[], nn.Module], norms: int, _: int,
                                                        randomize: Randomize) -> None:
    # aot_eager: dynamo's capture and AOT autograd's trace of the folded model, without inductor's code generation.
    folded = _folded(build, randomize)[1].model
    example = _pixels()
    compiled = torch.compile(folded, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(**example).logits, folded(**example).logits, rtol=1e-5, atol=1e-5)

