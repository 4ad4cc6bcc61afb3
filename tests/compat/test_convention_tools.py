"""bnlab's tools and torch's fusers on layers with another framework's convention: darknet's eval map
(x − r_μ)/(√r_v + ε) is folded as such or refused by name, never silently folded as torch's √(r_v + ε)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bnlab
from bnlab import compat
from bnlab.tools.diagnosis import doctor
from bnlab.tools.freeze import to_frozen
from tolerances import ATOL, RTOL

# A large ε, so that (√v + ε) and √(v + ε) differ by far more than float32 rounding.
BIG_EPS = 0.1


def darknet_bn(channels: int, eps: float = BIG_EPS) -> bnlab.BatchNorm2d:
    layer = bnlab.BatchNorm2d(channels, eps=eps, momentum=0.01, convention="darknet")
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        layer.running_mean.copy_(torch.randn(channels, generator=gen))
        layer.running_var.copy_(0.05 + torch.rand(channels, generator=gen))
        layer.weight.copy_(0.5 + torch.rand(channels, generator=gen))
        layer.bias.copy_(torch.randn(channels, generator=gen))
    return layer


def conv_bn() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 4, 3), darknet_bn(4), nn.ReLU()).eval()


def test_fold_folds_darknets_eval_map() -> None:
    model = conv_bn()
    x = torch.randn(2, 3, 6, 6)
    folded = bnlab.fold(model, example_inputs=x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    torch.testing.assert_close(folded(x), model(x), rtol=RTOL[torch.float32], atol=10 * ATOL[torch.float32])
    # torch's rule would have been off by far more than that:
    torch_rule = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, eps=BIG_EPS), nn.ReLU()).eval()
    torch_rule.load_state_dict(model.state_dict())
    assert (torch_rule(x) - model(x)).abs().max() > 1e-2


@pytest.mark.parametrize("fuser", [
    pytest.param(lambda conv, bn: torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn), id="fuse_conv_bn_eval"),
    pytest.param(lambda conv, bn: torch.ao.quantization.fuse_modules(nn.Sequential(conv, bn).eval(), [["0", "1"]]),
                 id="fuse_modules"),
])
def test_torchs_fusers_refuse_a_darknet_layer_by_name(fuser: object) -> None:
    model = conv_bn()
    with pytest.raises(NotImplementedError, match="convention='darknet'"):
        fuser(model[0], model[1])  # type: ignore[operator]


def test_fx_fuse_leaves_a_darknet_layer_unfused() -> None:
    model = conv_bn()
    x = torch.randn(2, 3, 6, 6)
    fused = torch.fx.experimental.optimization.fuse(model)
    assert any(getattr(m, "convention", None) == "darknet" for m in fused.modules())
    torch.testing.assert_close(fused(x), model(x))


def test_freeze_keeps_darknets_eval_map_and_to_frozen_refuses_it() -> None:
    model = conv_bn()
    x = torch.randn(2, 3, 6, 6)
    frozen = bnlab.freeze(model).train()  # running statistics normalize even in training mode
    torch.testing.assert_close(frozen(x), model(x))
    with pytest.raises(ValueError, match=r"convention=.darknet.*bnlab\.freeze"):
        to_frozen(model[1])
    with pytest.raises(ValueError, match="convention='darknet'"):
        bnlab.convert(model, to="frozen", inplace=True)
    assert isinstance(model[1], bnlab.BatchNorm2d)  # nothing changed


def test_a_keras_layer_freezes_exactly() -> None:
    # Keras's and Flax's eval is torch's: a FrozenBatchNorm computes the same.
    layer = bnlab.BatchNorm2d(4, eps=1e-3, momentum=0.01, convention="keras").eval()
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(bnlab.convert(layer, to="frozen")(x), layer(x))


@pytest.mark.parametrize("convention", ["keras", "darknet"])
@pytest.mark.parametrize(("to", "options"), [
    pytest.param("torch", None, id="torch"),
    pytest.param("sync", None, id="sync"),
    pytest.param("renorm", None, id="renorm"),
    pytest.param("ghost", {"virtual_batch_size": 2}, id="ghost"),
])
def test_convert_refuses_a_convention_its_target_would_drop(convention: str, to: str,
                                                             options: dict[str, int] | None) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), bnlab.BatchNorm2d(4, momentum=0.01, convention=convention))
    with pytest.raises(ValueError, match=f"layer '1' follows convention='{convention}'"):
        bnlab.convert(model, to=to, inplace=True, options=options)
    assert type(model[1]) is bnlab.BatchNorm2d and model[1].convention == convention


def test_recalibrate_gives_a_darknet_layer_its_population_statistics() -> None:
    layer = darknet_bn(3, eps=compat.DARKNET.eps)
    batches = [torch.randn(8, 3, 4, 4) * 2 + 1 for _ in range(3)]
    bnlab.recalibrate(layer, batches)
    values = torch.cat(batches).transpose(0, 1).reshape(3, -1).double()
    torch.testing.assert_close(layer.running_mean.double(), values.mean(1), rtol=RTOL[torch.float32],
                               atol=ATOL[torch.float32])
    torch.testing.assert_close(layer.running_var.double(), values.var(1), rtol=RTOL[torch.float32],
                               atol=ATOL[torch.float32])
    assert layer.momentum == 0.01  # restored


def _vectors() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(4)
    return list((torch.randn(64, 5, generator=gen) * 3 - 2).split(32))


@pytest.mark.parametrize("convention", ["keras", "darknet"])
def test_the_doctor_reports_a_convention_set_on_a_layer(convention: str) -> None:
    layer = bnlab.BatchNorm1d(5, eps=1e-3, momentum=0.01, convention=convention)
    with torch.no_grad():
        layer.running_var.zero_()  # darknet's start: no foreign sign on a darknet-convention layer
    report = doctor(nn.Sequential(layer).eval(), _vectors())
    (found,) = [f for f in report.findings if f.code == "convention_set"]
    assert found.severity == "info" and found.evidence["convention"] == convention and found.layer == "0"
    foreign = [f for f in report.findings if f.code == "foreign_convention"]
    assert not foreign or (convention == "keras" and "darknet's start" in foreign[0].message)
