"""bnlab's own tests of PyTorch's tools on bnlab's layers (issue 9 §3): fusion, quantization, SyncBatchNorm
conversion and TorchScript, as set up by :mod:`bnlab.nn.torch_integration` and the layers' script hook.

Fusion is judged by outputs: a fused model computes what the unfused one did (float64, so the folding's own
rounding stays far below the tolerance). A layer that is not plain batch norm (``BatchNormAct``, or one that
``bnlab.tools.freeze`` switched to batch statistics) must be refused or left as it is, never folded as if it were.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.ao.nn.intrinsic as nni
import torch.ao.quantization.fuser_method_mappings as fuser_method_mappings
import torch.fx.experimental.optimization as fx_optimization
from torch import nn
from torch.ao.quantization import fuse_modules, fuse_modules_qat

import bnlab
from bnlab.nn import torch_integration
from bnlab.nn.policy import StatsPolicy
from conftest import require


def _trained(bn: nn.Module, channels: int) -> nn.Module:
    """``bn`` with running statistics, γ and β away from their initial values."""
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        if bn.weight is not None:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return bn


# (layers, input shape, fused type of the first entry in eval): the fuse_modules patterns with a batch norm.
FUSE_CASES = [
    pytest.param(lambda: [nn.Conv1d(2, 3, 3), _trained(bnlab.BatchNorm1d(3), 3), nn.ReLU()], (4, 2, 9),
                 nni.ConvReLU1d, id="conv1d-bn-relu"),
    pytest.param(lambda: [nn.Conv2d(2, 3, 3), _trained(bnlab.BatchNorm2d(3), 3), nn.ReLU()], (4, 2, 6, 6),
                 nni.ConvReLU2d, id="conv2d-bn-relu"),
    pytest.param(lambda: [nn.Conv3d(2, 3, 2), _trained(bnlab.BatchNorm3d(3), 3), nn.ReLU()], (2, 2, 3, 4, 4),
                 nni.ConvReLU3d, id="conv3d-bn-relu"),
    pytest.param(lambda: [nn.Conv2d(2, 3, 3), _trained(bnlab.BatchNorm2d(3), 3)], (4, 2, 6, 6), nn.Conv2d,
                 id="conv2d-bn"),
    pytest.param(lambda: [nn.Linear(5, 3), _trained(bnlab.BatchNorm1d(3), 3)], (8, 5), nn.Linear, id="linear-bn"),
    pytest.param(lambda: [nn.ConvTranspose2d(2, 3, 3), _trained(bnlab.BatchNorm2d(3), 3)], (4, 2, 5, 5),
                 nn.ConvTranspose2d, id="convtranspose2d-bn"),
    pytest.param(lambda: [_trained(bnlab.BatchNorm2d(3), 3), nn.ReLU()], (4, 3, 5, 5), nni.BNReLU2d,
                 id="bn2d-relu"),
    pytest.param(lambda: [_trained(bnlab.BatchNorm3d(3), 3), nn.ReLU()], (2, 3, 2, 4, 4), nni.BNReLU3d,
                 id="bn3d-relu"),
]


@pytest.mark.parametrize(("layers", "shape", "fused_type"), FUSE_CASES)
def test_fuse_modules_fuses_bnlab_layers_in_eval(layers, shape: tuple[int, ...], fused_type: type) -> None:  # type: ignore[no-untyped-def]
    model = nn.Sequential(*layers()).double().eval()
    names = [str(i) for i in range(len(model))]
    fused = fuse_modules(model, [names])
    assert type(fused[0]) is fused_type and all(type(m) is nn.Identity for m in list(fused)[1:])
    x = torch.randn(shape, dtype=torch.float64)
    torch.testing.assert_close(fused(x), model(x))
    assert any(isinstance(m, bnlab.BatchNorm1d | bnlab.BatchNorm2d | bnlab.BatchNorm3d) for m in model)  # a copy


def test_fuse_modules_qat_fuses_bnlab_layers_for_training() -> None:
    # QAT keeps batch norm: torch's intrinsic ConvBnReLU2d takes exactly torch's classes, so it gets a torch
    # layer sharing the bnlab layer's parameters and buffers; in training it computes the same.
    model = nn.Sequential(nn.Conv2d(2, 3, 3), _trained(bnlab.BatchNorm2d(3), 3), nn.ReLU()).double().train()
    reference, bn = copy.deepcopy(model), model[1]
    fused = fuse_modules_qat(model, [["0", "1", "2"]], inplace=True)
    assert type(fused[0]) is nni.ConvBnReLU2d and type(fused[0][1]) is nn.BatchNorm2d
    assert fused[0][1].weight is bn.weight and fused[0][1].running_var is bn.running_var  # shared, not copied
    x = torch.randn(4, 2, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(fused(x), reference(x))
    torch.testing.assert_close(fused[0][1].running_mean, reference[1].running_mean)


def test_fuse_modules_takes_the_documented_additional_mapping() -> None:
    # The documented way in: fuse_custom_config_dict={"additional_fuser_method_mapping": ...}.
    model = nn.Sequential(nn.Conv2d(2, 3, 3), _trained(bnlab.BatchNorm2d(3), 3)).double().eval()
    config = {"additional_fuser_method_mapping": torch_integration.FUSER_METHOD_MAPPING}
    fused = fuse_modules(model, [["0", "1"]], fuse_custom_config_dict=config)
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    assert type(fused[0]) is nn.Conv2d
    torch.testing.assert_close(fused(x), model(x))


@pytest.mark.parametrize("act", [pytest.param(lambda: bnlab.nn.BatchNormAct2d(3), id="act2d-relu"),
                                 pytest.param(lambda: bnlab.nn.BatchNormAct2d(3, activation="identity"),
                                              id="act2d-identity")])
def test_fuse_modules_refuses_a_fused_batch_norm_layer(act) -> None:  # type: ignore[no-untyped-def]
    # Even the identity activation is refused: the layer may still add a residual in its forward.
    model = nn.Sequential(nn.Conv2d(2, 3, 3), act()).eval()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(NotImplementedError, match=r"BatchNormAct2d applies activation="):
        fuse_modules(model, [["0", "1"]], inplace=True)
    assert type(model[1]) is bnlab.nn.BatchNormAct2d
    torch.testing.assert_close(model.state_dict(), before)


def test_fuse_modules_refuses_a_layer_frozen_to_batch_statistics() -> None:
    model = nn.Sequential(nn.Conv2d(2, 3, 3), bnlab.BatchNorm2d(3)).eval()
    model[1].stats_policy = StatsPolicy(normalize_with="batch")
    with pytest.raises(NotImplementedError, match="normalize_with='batch'"):
        fuse_modules(model, [["0", "1"]])
    model[1].stats_policy = StatsPolicy("running", update_stats=False)  # the eval map: fine to fold
    x = torch.randn(2, 2, 5, 5)
    torch.testing.assert_close(fuse_modules(model, [["0", "1"]])(x), model(x))


def test_torchs_own_fuser_table_is_unchanged() -> None:
    # install() only adds keys with a bnlab class; every key of torch's classes keeps torch's own fuser.
    for key, fuser in fuser_method_mappings._DEFAULT_OP_LIST_TO_FUSER_METHOD.items():
        bnlab_key = any(t.__module__.startswith("bnlab.") for t in key)
        assert bnlab_key == (fuser.__module__ == torch_integration.__name__), key
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU()).eval()
    assert type(fuse_modules(model, [["0", "1", "2"]])[0]) is nni.ConvReLU2d


def _fx_model(backend: str) -> nn.Module:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 3, 3)
            self.bn = _trained(bnlab.BatchNorm2d(3, backend=backend), 3)
            self.fc = nn.Linear(3, 4)
            self.bn1d = _trained(bnlab.BatchNorm1d(4, backend=backend), 4)
            self.act = _trained(bnlab.nn.BatchNormAct2d(3, backend=backend), 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.bn(self.conv(x)))
            z = self.bn1d(self.fc(y.mean((2, 3))))
            return self.act(y) + z[:, :3, None, None]

    return Net().eval()


def test_fx_fuse_folds_bnlab_layers_and_leaves_the_fused_one(backend: str) -> None:
    require(backend, torch.float32)
    model = _fx_model(backend)
    fused = fx_optimization.fuse(model)
    kinds = {type(m) for m in fused.modules()}
    assert bnlab.BatchNorm2d not in kinds and bnlab.BatchNorm1d not in kinds  # conv+bn and linear+bn folded
    assert bnlab.nn.BatchNormAct2d in kinds  # its ReLU (and residual) would be lost: left as it is
    x = torch.randn(2, 2, 6, 6)
    torch.testing.assert_close(fused(x), model(x), rtol=1e-5, atol=1e-5)
    assert any(isinstance(m, bnlab.BatchNorm2d) for m in model.modules())  # inplace=False left model alone


def test_fx_fuse_leaves_a_layer_frozen_to_batch_statistics() -> None:
    model = nn.Sequential(nn.Conv2d(2, 3, 3), _trained(bnlab.BatchNorm2d(3), 3)).eval()
    model[1].stats_policy = StatsPolicy(normalize_with="batch")
    fused = fx_optimization.fuse(model)
    assert any(type(m) is bnlab.BatchNorm2d for m in fused.modules())
    x = torch.randn(4, 2, 5, 5)
    torch.testing.assert_close(fused(x), model(x))


def test_fx_fuse_of_a_torch_model_is_torchs() -> None:
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 4),
                          nn.BatchNorm1d(4)).eval()
    ours, theirs = fx_optimization.fuse(model), fx_optimization.fuse.__wrapped__(model)  # type: ignore[attr-defined]
    assert ours.code == theirs.code
    x = torch.randn(2, 2, 6, 6)
    torch.testing.assert_close(ours(x), theirs(x))


@pytest.mark.parametrize(("fuse", "layer", "bn"), [
    pytest.param(torch.nn.utils.fusion.fuse_conv_bn_eval, nn.Conv2d(2, 3, 1), bnlab.nn.BatchNormAct2d(3),
                 id="fusion.fuse_conv_bn_eval"),
    pytest.param(torch.nn.utils.fuse_conv_bn_eval, nn.Conv2d(2, 3, 1), bnlab.nn.BatchNormAct2d(3, activation="silu"),
                 id="utils.fuse_conv_bn_eval"),
    pytest.param(torch.nn.utils.fusion.fuse_linear_bn_eval, nn.Linear(2, 3), bnlab.nn.BatchNormAct1d(3),
                 id="fusion.fuse_linear_bn_eval"),
])
def test_fusion_utils_refuse_a_fused_batch_norm_layer(fuse, layer: nn.Module, bn: nn.Module) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NotImplementedError, match="applies activation="):
        fuse(layer.eval(), bn.eval())


def test_fusion_utils_fold_plain_bnlab_layers_and_torchs_as_before() -> None:
    conv = nn.Conv2d(2, 3, 3).double().eval()
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    for bn in (_trained(bnlab.BatchNorm2d(3), 3), _trained(nn.BatchNorm2d(3), 3)):
        bn = bn.double().eval()
        torch.testing.assert_close(torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)(x), bn(conv(x)))
    frozen = _trained(bnlab.BatchNorm2d(3), 3).double().eval()
    # freeze made it update its statistics at inference: folding would drop that
    frozen.stats_policy = StatsPolicy(update_stats=True)
    with pytest.raises(NotImplementedError, match="update_stats=True"):
        torch.nn.utils.fusion.fuse_conv_bn_eval(conv, frozen)


def test_convert_sync_batchnorm_refuses_fused_and_switched_layers_and_changes_nothing() -> None:
    model = nn.Sequential(bnlab.BatchNorm2d(3), nn.Sequential(bnlab.nn.BatchNormAct2d(3)))
    with pytest.raises(NotImplementedError, match=r"cannot take '1.0': BatchNormAct2d applies activation='relu'"):
        nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert type(model[0]) is bnlab.BatchNorm2d  # refused before anything was converted
    switched = nn.Sequential(bnlab.BatchNorm2d(3))
    switched[0].stats_policy = StatsPolicy(normalize_with="running")
    with pytest.raises(NotImplementedError, match="normalize_with='running'"):
        nn.SyncBatchNorm.convert_sync_batchnorm(switched)
    plain = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(bnlab.BatchNorm2d(3), nn.BatchNorm1d(2)))
    assert [type(m) for m in plain] == [nn.SyncBatchNorm, nn.SyncBatchNorm]


@pytest.mark.parametrize("layer", [
    pytest.param(lambda: bnlab.nn.BatchRenorm2d(3), id="renorm"),
    pytest.param(lambda: bnlab.nn.GhostBatchNorm2d(3, virtual_batch_size=2), id="ghost"),
    pytest.param(lambda: bnlab.BatchNorm2d(3, convention="keras"), id="keras-convention"),
    pytest.param(lambda: bnlab.BatchNorm2d(3, momentum=0.01, convention="darknet"), id="darknet-convention"),
])
def test_convert_sync_batchnorm_refuses_the_family_and_changes_nothing(layer: Any) -> None:
    # torch's converter would make each a plain SyncBatchNorm, dropping how it normalizes or updates in training.
    model = nn.Sequential(bnlab.BatchNorm2d(3), layer())
    kind = type(model[1])
    with pytest.raises(NotImplementedError, match=f"cannot take '1': {kind.__name__}"):
        nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert type(model[0]) is bnlab.BatchNorm2d and type(model[1]) is kind


def test_install_twice_wraps_once() -> None:
    torch_integration.install()
    assert fx_optimization.fuse is torch_integration.fx_fuse
    wrapper = torch.nn.utils.fusion.fuse_conv_bn_eval
    original = wrapper.__wrapped__  # type: ignore[attr-defined]
    assert wrapper.__module__ == torch_integration.__name__ and wrapper.__name__ == "fuse_conv_bn_eval"
    assert not hasattr(original, "__wrapped__") and original.__module__ == "torch.nn.utils.fusion"
    assert nn.SyncBatchNorm.convert_sync_batchnorm.__func__.__wrapped__.__module__ == "torch.nn.modules.batchnorm"
    assert torch.nn.utils.fuse_conv_bn_eval is torch.nn.utils.fusion.fuse_conv_bn_eval


# --------------------------------------------------------------------------------------------- TorchScript
# torch.jit.script is deprecated in torch 2.13, and bnlab's forward dispatches in Python to backends (ctypes C++
# kernels, Triton) that TorchScript cannot compile: bnlab refuses with one clear error naming torch.compile.

SCRIPTED = [
    pytest.param(lambda: bnlab.BatchNorm2d(3), id="BatchNorm2d"),
    pytest.param(lambda: bnlab.nn.BatchNormAct2d(3), id="BatchNormAct2d"),
    pytest.param(lambda: bnlab.FrozenBatchNorm2d(3), id="FrozenBatchNorm2d"),
]


@pytest.mark.parametrize("make", SCRIPTED)
@pytest.mark.parametrize("inside", [pytest.param(False, id="alone"), pytest.param(True, id="in-a-model")])
def test_jit_script_refuses_clearly_and_points_to_torch_compile(make, inside: bool) -> None:  # type: ignore[no-untyped-def]
    layer = make()
    model = nn.Sequential(nn.Conv2d(3, 3, 1), layer, nn.ReLU()) if inside else layer
    with pytest.raises(RuntimeError, match=rf"torch.jit.script cannot compile bnlab's {type(layer).__name__} .*"
                                           r"use torch.compile\(model\) instead"):
        torch.jit.script(model)
    if inside:
        assert model[1] is layer  # the model is as it was


def test_a_materialized_lazy_layer_refuses_scripting_too() -> None:
    lazy = bnlab.LazyBatchNorm2d()
    lazy(torch.randn(2, 3, 4, 4))
    with pytest.raises(RuntimeError, match=r"use torch.compile\(model\) instead"):
        torch.jit.script(lazy)


def test_torch_compile_runs_the_model_torchscript_refused() -> None:
    # What the error recommends works on the same model (aot_eager: dynamo and autograd, no C++ compiler).
    torch._dynamo.reset()
    model = nn.Sequential(nn.Conv2d(3, 3, 1), bnlab.BatchNorm2d(3), nn.ReLU())
    reference = copy.deepcopy(model)
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(torch.compile(model, backend="aot_eager")(x), reference(x))
    torch.testing.assert_close(model[1].running_mean, reference[1].running_mean)
