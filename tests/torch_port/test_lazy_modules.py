"""Port of PyTorch's test/nn/test_lazy_modules.py: its lazy batch-norm tests (class TestLazyModules).

``test_lazy_batchnorm{1,2,3}d``, ``..._pickle`` and ``..._state`` run their helpers (``_check_lazy_norm``,
``_check_lazy_norm_pickle``, ``_check_lazy_batchnorm_state``) with bnlab's ``LazyBatchNorm*d`` becoming bnlab's
``BatchNorm*d``, on every backend; bnlab's own additions (the backend kept, torch's lazy class still an ancestor)
follow. The instance-norm and generic lazy-module tests of that file are not batch norm and are not ported.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Iterator

import pytest
import torch
from torch import nn
from torch.nn import UninitializedBuffer, UninitializedParameter

import bnlab


@pytest.fixture(autouse=True)
def _quiet_lazy_warning() -> Iterator[None]:
    # torch warns on every lazy module built ("Lazy modules are a new feature under heavy development"), as
    # torch's own tests suppress with @suppress_warnings.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Lazy modules are a new feature")
        yield


# (bnlab's class, bnlab's lazy class, torch's lazy class, input shapes) per test_lazy_batchnorm{1,2,3}d
FAMILIES = [
    pytest.param(bnlab.BatchNorm1d, bnlab.LazyBatchNorm1d, nn.LazyBatchNorm1d, [(16, 3, 6), (16, 6)], id="1d"),
    pytest.param(bnlab.BatchNorm2d, bnlab.LazyBatchNorm2d, nn.LazyBatchNorm2d, [(16, 3, 6, 7)], id="2d"),
    pytest.param(bnlab.BatchNorm3d, bnlab.LazyBatchNorm3d, nn.LazyBatchNorm3d, [(16, 3, 6, 7, 8)], id="3d"),
]
FLAGS = [(affine, track) for affine in (False, True) for track in (False, True)]


@pytest.mark.parametrize(("cls", "lazy_cls", "torch_lazy_cls", "shapes"), FAMILIES)
def test_lazy_batchnorm(backend: str, cls: type[nn.Module], lazy_cls: type[nn.Module],
                        torch_lazy_cls: type[nn.Module], shapes: list[tuple[int, ...]]) -> None:
    # test_lazy_batchnorm{1,2,3}d (_check_lazy_norm): uninitialized parameters and buffers before the first
    # call; after it the layer is bnlab's class, not the lazy one, and matches a layer built with num_features.
    for (affine, track), shape in ((f, s) for f in FLAGS for s in shapes):
        lazy_module = lazy_cls(affine=affine, track_running_stats=track, backend=backend)
        assert isinstance(lazy_module, torch_lazy_cls)
        if affine:
            assert isinstance(lazy_module.weight, UninitializedParameter)
            assert isinstance(lazy_module.bias, UninitializedParameter)
        if track:
            assert isinstance(lazy_module.running_mean, UninitializedBuffer)
            assert isinstance(lazy_module.running_var, UninitializedBuffer)
        x = torch.ones(*shape)
        lazy_output = lazy_module(x)
        assert isinstance(lazy_module, cls) and not isinstance(lazy_module, lazy_cls)
        module = cls(shape[1], affine=affine, track_running_stats=track, backend=backend)
        torch.testing.assert_close(lazy_output, module(x))
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            expected = getattr(module, name)
            if expected is not None:
                assert getattr(lazy_module, name).shape == expected.shape, name
                torch.testing.assert_close(getattr(lazy_module, name), expected)


@pytest.mark.parametrize(("cls", "lazy_cls", "torch_lazy_cls", "shapes"), FAMILIES)
def test_lazy_batchnorm_pickle(backend: str, cls: type[nn.Module], lazy_cls: type[nn.Module],
                               torch_lazy_cls: type[nn.Module], shapes: list[tuple[int, ...]]) -> None:
    # test_lazy_batchnorm{1,2,3}d_pickle (_check_lazy_norm_pickle): a pickled lazy layer stays lazy; pickled
    # after its first call it is bnlab's class with real parameters and buffers.
    for (affine, track), shape in ((f, s) for f in FLAGS for s in shapes):
        module = pickle.loads(pickle.dumps(lazy_cls(affine=affine, track_running_stats=track, backend=backend)))
        assert isinstance(module, lazy_cls)
        if affine:
            assert isinstance(module.weight, UninitializedParameter)
            assert isinstance(module.bias, UninitializedParameter)
        if track:
            assert isinstance(module.running_mean, UninitializedBuffer)
            assert isinstance(module.running_var, UninitializedBuffer)
        module(torch.ones(*shape))
        module = pickle.loads(pickle.dumps(module))
        assert isinstance(module, cls) and not isinstance(module, lazy_cls)
        assert module.backend == backend
        if affine:
            assert not isinstance(module.weight, UninitializedParameter)
            assert not isinstance(module.bias, UninitializedParameter)
        if track:
            assert not isinstance(module.running_mean, UninitializedBuffer)
            assert not isinstance(module.running_var, UninitializedBuffer)


@pytest.mark.parametrize(("cls", "lazy_cls", "torch_lazy_cls", "shapes"), FAMILIES)
def test_lazy_batchnorm_state(cls: type[nn.Module], lazy_cls: type[nn.Module], torch_lazy_cls: type[nn.Module],
                              shapes: list[tuple[int, ...]]) -> None:
    # test_lazy_batchnorm{1,2,3}d_state (_check_lazy_batchnorm_state): a lazy layer takes a full state_dict
    # (sized, though it becomes bnlab's class only at its first call); a full layer refuses a lazy one's.
    lazy_module = lazy_cls(affine=True, track_running_stats=True)
    lazy_module.load_state_dict(cls(10).state_dict())
    assert not lazy_module.has_uninitialized_params()
    for name in ("weight", "bias", "running_mean", "running_var"):
        assert getattr(lazy_module, name).shape == (10,)
    with pytest.raises(RuntimeError, match="shape of an uninitialized"):
        cls(10).load_state_dict(lazy_cls().state_dict())


# ------------------------------------------------------------------------------------------- bnlab's own

@pytest.mark.parametrize(("cls", "lazy_cls", "torch_lazy_cls", "shapes"), FAMILIES)
def test_lazy_layer_keeps_its_backend_and_takes_torchs_arguments(backend: str, cls: type[nn.Module],
                                                                 lazy_cls: type[nn.Module],
                                                                 torch_lazy_cls: type[nn.Module],
                                                                 shapes: list[tuple[int, ...]]) -> None:
    lazy = lazy_cls(1e-3, 0.3, True, True, bias=False, backend=backend)
    assert f"backend={backend!r}" in repr(lazy)
    x = torch.randn(*shapes[0])
    y = lazy(x)
    assert type(lazy) is cls and lazy.backend == backend and f"backend={backend!r}" in repr(lazy)
    assert lazy.eps == 1e-3 and lazy.momentum == 0.3 and lazy.bias is None
    theirs = torch_lazy_cls(1e-3, 0.3, True, True, bias=False)
    torch.testing.assert_close(y, theirs(x))
    torch.testing.assert_close(lazy.running_var, theirs.running_var)


def test_lazy_layer_refuses_an_unknown_backend_when_built() -> None:
    with pytest.raises(ValueError, match="unknown batch-norm backend 'nope'"):
        bnlab.LazyBatchNorm2d(backend="nope")


def test_lazy_layer_forward_called_directly_says_to_call_the_module() -> None:
    # torch's lazy hook runs on module(x), not on module.forward(x); bnlab says so instead of failing later.
    lazy = bnlab.LazyBatchNorm2d()
    with pytest.raises(RuntimeError, match=r"call the module itself, module\(input\)"):
        lazy.forward(torch.randn(2, 3, 4, 4))
