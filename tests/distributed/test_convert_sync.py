"""bnlab.convert(model, to="sync") and back: classes, values, modes, fused behaviour (one process, no group)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bnlab
from bnlab.nn import BatchNormAct2d, SyncBatchNorm, SyncBatchNormAct
from bnlab.nn.sync import BatchNormNd, TorchBatchNormNd


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = BatchNormAct2d(4, activation="leaky_relu", negative_slope=0.2)
        self.pool = nn.Flatten()
        self.fc = nn.Linear(4 * 5 * 5, 6)
        self.bn1 = bnlab.BatchNorm1d(6, momentum=None, backend="reference")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn(self.conv(x))
        h = self.act(h, h)  # the residual input the fused layer takes
        return self.bn1(self.fc(self.pool(h)))


def randomized(model: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1, generator=gen)
                m.running_var.uniform_(0.5, 2, generator=gen)
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-1, 1, generator=gen)
                m.num_batches_tracked.fill_(7)
    return model


def states_equal(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, id="float32"),
                                   pytest.param(torch.float64, id="float64")])
def test_to_sync_and_back_keeps_classes_values_mode_and_outputs(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    model = randomized(Net()).to(dtype)
    model.bn1.eval()  # a mixed mode survives the round trip
    x = torch.randn(8, 3, 5, 5, dtype=dtype)
    synced = bnlab.convert(model, to="sync")
    assert type(model.bn) is nn.BatchNorm2d  # the caller's model is untouched
    assert [type(m) for m in (synced.bn, synced.act, synced.bn1)] == [SyncBatchNorm, SyncBatchNormAct, SyncBatchNorm]
    assert synced.act.activation == "leaky_relu" and synced.act.negative_slope == 0.2
    assert synced.bn1.backend == "reference" and synced.bn.backend == "auto"
    assert [m.training for m in (synced.bn, synced.act, synced.bn1)] == [True, True, False]
    states_equal(synced, model)
    # Without torch.distributed initialised a synchronized layer is plain batch norm: the same outputs and updates.
    reference = randomized(Net()).to(dtype)
    reference.load_state_dict(model.state_dict())
    reference.bn1.eval()
    torch.testing.assert_close(synced(x), reference(x), rtol=0, atol=0)
    states_equal(synced, reference)
    back = bnlab.convert(synced, to="bnlab")
    assert [type(m) for m in (back.bn, back.act, back.bn1)] == [bnlab.BatchNorm2d, BatchNormAct2d, bnlab.BatchNorm1d]
    assert not any(hasattr(m, "sync_key") or hasattr(m, "process_group") for m in back.modules())
    states_equal(back, synced)
    torch_again = bnlab.convert(synced, to="torch")
    assert [type(m) for m in (torch_again.bn, torch_again.act, torch_again.bn1)] == [
        nn.BatchNorm2d, BatchNormAct2d, nn.BatchNorm1d]
    assert not hasattr(torch_again.bn, "backend")
    states_equal(torch_again, synced)


def test_torch_sync_batch_norm_converts_to_a_class_of_any_rank() -> None:
    torch.manual_seed(0)
    model = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(nn.BatchNorm1d(3), nn.BatchNorm2d(3)))
    synced = bnlab.convert(model, to="sync")
    assert [type(m) for m in synced] == [SyncBatchNorm, SyncBatchNorm]
    for to, cls in (("bnlab", BatchNormNd), ("torch", TorchBatchNormNd)):
        plain = bnlab.convert(synced, to=to)
        assert [type(m) for m in plain] == [cls, cls]
        for shape in ((4, 3), (4, 3, 5), (2, 3, 2, 2), (2, 3, 2, 2, 2)):
            x = torch.randn(shape)
            torch.testing.assert_close(plain[0](x), nn.functional.batch_norm(x, None, None, training=True))
        with pytest.raises(ValueError, match="expected 2D or 3D or 4D or 5D input"):
            plain[0](torch.randn(3))
    # And from those classes to sync again, and between the two families.
    assert type(bnlab.convert(bnlab.convert(synced, to="torch"), to="bnlab")[0]) is BatchNormNd
    assert type(bnlab.convert(bnlab.convert(synced, to="torch"), to="sync")[0]) is SyncBatchNorm


def test_convert_refuses_a_process_group_for_other_targets() -> None:
    with pytest.raises(ValueError, match="process_group applies to to='sync' only"):
        bnlab.convert(nn.BatchNorm2d(3), to="bnlab", process_group=object())


def test_sync_batch_norm_alone_is_plain_batch_norm_with_torch_state_dict() -> None:
    layer = SyncBatchNorm(3, momentum=None)
    plain = nn.BatchNorm2d(3, momentum=None)
    assert isinstance(layer, nn.SyncBatchNorm)
    assert layer.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(4, 3, 2, 2).contiguous(memory_format=torch.channels_last)
    y = layer(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, plain(x))
    torch.testing.assert_close(layer.running_var, plain.running_var)
    half = layer(torch.randn(4, 3, 7, dtype=torch.bfloat16))
    assert half.dtype == torch.bfloat16 and layer.running_mean.dtype == torch.float32
