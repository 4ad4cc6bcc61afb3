"""bnlab.convert: swapping torch's batch-norm modules for bnlab's and back changes no output."""

from __future__ import annotations

import pytest
import torch

import bnlab


def _model() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4, momentum=None), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 8), torch.nn.BatchNorm1d(8, affine=False),
        torch.nn.Unflatten(1, (8, 1, 1, 1)), torch.nn.BatchNorm3d(8, eps=1e-3),
    )


@pytest.mark.parametrize("training", [pytest.param(True, id="train"), pytest.param(False, id="eval")])
def test_conversion_changes_no_output(training: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BNLAB_BACKEND", raising=False)  # bit-identity holds for "auto", i.e. ATen's kernel
    model = _model().train(training)
    x = torch.randn(5, 3, 8, 8)
    for _ in range(2):  # move the running statistics away from their initial values
        model.train()(x * 2)
    model.train(training)
    converted = bnlab.convert(model)
    kinds = [type(m) for m in converted.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert kinds == [bnlab.BatchNorm2d, bnlab.BatchNorm1d, bnlab.BatchNorm3d]
    assert converted.training == training and converted[1].momentum is None and converted[7].eps == 1e-3
    y_model, y_converted = model(x), converted(x)
    assert torch.equal(y_model, y_converted)  # auto on CPU is ATen's own kernel: bit-identical
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), converted.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2), k1
    back = bnlab.convert(converted, to="torch")
    assert [type(m) for m in back.modules()] == [type(m) for m in _model().modules()]
    assert torch.equal(back(x), converted(x))
    assert not hasattr(back[1], "backend")


def test_original_model_is_left_alone_unless_inplace() -> None:
    model = _model()
    converted = bnlab.convert(model, backend="reference")
    assert type(model[1]) is torch.nn.BatchNorm2d and converted is not model
    assert converted[1].weight is not model[1].weight
    assert converted[1].backend == "reference"
    same = bnlab.convert(model, inplace=True)
    assert same is model and type(model[1]) is bnlab.BatchNorm2d
    # In place keeps the very parameter objects, so an optimizer built before converting still trains them.
    assert all(p is q for p, q in zip(_params(model), _params(same), strict=True))


def _params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return list(model.parameters())


def test_hooks_and_extra_attributes_survive() -> None:
    model = _model()
    calls = []
    model[1].register_forward_hook(lambda module, args, out: calls.append(type(module).__name__))
    model[1].note = "kept"
    converted = bnlab.convert(model)
    converted(torch.randn(2, 3, 8, 8))
    assert calls == ["BatchNorm2d"] and converted[1].note == "kept"


def test_backend_of_existing_bnlab_modules() -> None:
    model = torch.nn.Sequential(bnlab.BatchNorm1d(3, backend="reference"), torch.nn.BatchNorm1d(3))
    kept = bnlab.convert(model)
    assert kept[0].backend == "reference" and kept[1].backend == "auto"
    forced = bnlab.convert(model, backend="native")
    assert forced[0].backend == forced[1].backend == "native"


def test_subclasses_and_root_modules() -> None:
    sync = torch.nn.SyncBatchNorm(3)
    # Back to plain batch norm (issue 10); torch's SyncBatchNorm does not say which 1d/2d/3d class it replaced.
    assert type(bnlab.convert(sync)) is bnlab.nn.sync.BatchNormNd
    lazy = torch.nn.LazyBatchNorm2d()
    # Not initialized yet: left alone (in place, since uninitialized parameters cannot be deep-copied).
    assert type(bnlab.convert(lazy, inplace=True)) is torch.nn.LazyBatchNorm2d
    root = bnlab.convert(torch.nn.BatchNorm2d(3))
    assert type(root) is bnlab.BatchNorm2d


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    pytest.param({"to": "keras"}, ValueError, "to must be one of", id="unknown-target"),
    pytest.param({"backend": "nope"}, ValueError, "unknown batch-norm backend", id="unknown-backend"),
    pytest.param({"to": "torch", "backend": "native"}, ValueError, "backend applies to to='bnlab'",
                 id="backend-with-torch-target"),
])
def test_bad_arguments(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        bnlab.convert(_model(), **kwargs)


def test_not_a_module() -> None:
    with pytest.raises(TypeError, match=r"expects a torch.nn.Module"):
        bnlab.convert({"bn": torch.nn.BatchNorm2d(3)})  # type: ignore[arg-type]


def test_a_layer_registered_under_two_names_is_converted_under_both() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    model.add_module("alias", model[1])
    for to in ("frozen", "bnlab"):
        converted = bnlab.convert(model.eval(), to=to)
        assert converted[1] is converted.alias and type(converted[1]) is not torch.nn.BatchNorm2d


def test_fused_layers_take_the_backend_and_are_not_frozen_by_replacement() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), bnlab.nn.BatchNormAct2d(4, activation="silu"))
    assert bnlab.convert(model, backend="reference")[1].backend == "reference"
    assert type(bnlab.convert(model, to="torch")[1]) is bnlab.nn.BatchNormAct2d  # torch has no fused layer
    with pytest.raises(ValueError, match=r"fused batch norm \+ activation.*bnlab.freeze"):
        bnlab.convert(model, to="frozen")
