"""The per-layer statistics policy (bnlab.nn.policy) that freeze sets, recalibrate lifts and fold reads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bnlab
from bnlab._shapes import INPUT_RANKS
from bnlab.nn.policy import FOLLOW_MODE, StatsPolicy, policy_override
from bnlab.tools._layers import FAMILIES


def test_a_policy_checks_its_fields() -> None:
    with pytest.raises(ValueError, match="normalize_with"):
        StatsPolicy(normalize_with="ema")
    with pytest.raises(TypeError, match="update_stats"):
        StatsPolicy(update_stats="yes")  # type: ignore[arg-type]
    assert FOLLOW_MODE.follows_mode and not StatsPolicy("running").follows_mode


def test_freeze_declares_a_policy_on_the_layer() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    frozen = bnlab.freeze(model, normalize_with="running", update_stats=False)
    bn = frozen[1]
    assert bn.stats_policy == StatsPolicy("running", False)
    assert "normalize_with" not in vars(bn) and "update_stats" not in vars(bn)  # one declared object, no loose flags
    assert bn.normalize_with == "running" and bn.update_stats is False  # read-only views of the policy
    thawed = bnlab.freeze(frozen, normalize_with=None, update_stats=None, train_affine=True)
    assert thawed[1].stats_policy.follows_mode


def test_policy_override_restores_each_layers_policy_even_on_error() -> None:
    layers = [bnlab.BatchNorm1d(3), bnlab.BatchNorm1d(3)]
    layers[0].stats_policy = StatsPolicy("running", False)
    with pytest.raises(RuntimeError, match="inside"), policy_override(layers, StatsPolicy("batch", True)):
        assert all(m.stats_policy == StatsPolicy("batch", True) for m in layers)
        raise RuntimeError("inside")
    assert layers[0].stats_policy == StatsPolicy("running", False)
    assert layers[1].stats_policy is FOLLOW_MODE


def test_recalibrate_lifts_the_policy_and_puts_it_back() -> None:
    model = bnlab.freeze(nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4)))
    policy = model[1].stats_policy
    data = [torch.randn(16, 5) * 3 + 1 for _ in range(3)]
    bnlab.recalibrate(model, data)
    assert model[1].stats_policy is policy
    inputs = torch.cat([model[0](x) for x in data]).detach()
    torch.testing.assert_close(model[1].running_mean, inputs.mean(0), rtol=1e-4, atol=1e-5)


def test_fold_reads_the_policy_and_keeps_fused_activations() -> None:
    x = torch.randn(2, 3, 8, 8)
    frozen_to_batch = nn.Sequential(nn.Conv2d(3, 4, 3), bnlab.freeze(bnlab.BatchNorm2d(4), normalize_with="batch"))
    folding = bnlab.tools.fold_with_report(frozen_to_batch.eval())
    assert not folding.folded and any("statistics policy" in why for _, why in folding.skipped), folding.skipped
    fused = nn.Sequential(nn.Conv2d(3, 4, 3), bnlab.nn.BatchNormAct2d(4, activation="relu")).eval()
    with torch.no_grad():
        fused[1].running_mean.uniform_(-1, 1)
    folding = bnlab.tools.fold_with_report(fused)
    assert folding.folded == [("1", "0")]
    torch.testing.assert_close(folding.model(x), fused(x))  # folded, and the activation kept after the conv


def test_input_ranks_have_one_source() -> None:
    for dims, (_, ours, frozen, ranks) in zip((1, 2, 3), FAMILIES, strict=True):
        assert ours._bnlab_ranks is frozen._bnlab_ranks is ranks is INPUT_RANKS[dims]
