"""Which batch norm folds into which neighbour: the rules both ways of finding pairs (torch.fx, nn.Sequential) share."""

from __future__ import annotations

import torch
from torch import nn

from bnlab.tools._fold_math import CONV, CONV_T, WeightLayer, fold_after, fold_before
from bnlab.tools._layers import NormLayer, has_running_stats, input_ranks, is_uninitialized, running_stats

#: id(batch-norm module) → the ranks of the inputs it saw on the example inputs (empty without examples).
Ranks = dict[int, set[int]]


def foldable_bn(bn: nn.Module) -> str | None:
    """None if ``bn`` is a fixed map at inference, else why it is not."""
    if not isinstance(bn, NormLayer):
        return "not a batch-norm layer"
    if is_uninitialized(bn):
        return "it is a lazy layer that has not seen a batch yet"
    if not has_running_stats(bn):
        return "it has no running statistics (track_running_stats=False), so it normalizes with batch statistics"
    if getattr(bn, "normalize_with", None) == "batch" or getattr(bn, "update_stats", None):
        return "bnlab.tools.freeze set it to use or update batch statistics at inference"
    mean, var = running_stats(bn)
    if not (torch.isfinite(mean).all() and torch.isfinite(var).all()):
        return "its running statistics are not finite"
    return None


def _spatial_match(layer: WeightLayer, bn: NormLayer, seen: set[int] | None) -> bool:
    """Whether the layer's channel dimension is the one the batch norm normalizes (dimension 1)."""
    expected = 2 if isinstance(layer, nn.Linear) else 2 + len(layer.kernel_size)
    declared = input_ranks(bn)
    if declared and expected not in declared:
        return False
    if seen is not None:
        return seen == {expected}
    # A Linear acts on the last dimension and batch norm on dimension 1: they agree on 2-D input only, which is
    # assumed for BatchNorm1d (an MLP) unless example inputs say otherwise. Conv outputs have channels at 1.
    return not isinstance(layer, nn.Linear) or declared == (2, 3)


def folded_after(layer: nn.Module, bn: nn.Module, ranks: Ranks) -> WeightLayer | None:
    """``layer`` with the following ``bn`` folded in, or None if the two do not fold."""
    if not isinstance(layer, (*CONV, *CONV_T, nn.Linear)) or not isinstance(bn, NormLayer):
        return None
    if foldable_bn(bn) is not None or is_uninitialized(layer):
        return None
    out = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    if out != bn.num_features or not _spatial_match(layer, bn, ranks.get(id(bn))):
        return None
    return fold_after(layer, bn)


def folded_before(bn: nn.Module, layer: nn.Module, ranks: Ranks) -> WeightLayer | None:
    """``layer`` with the preceding ``bn`` folded in, or None if the two do not fold."""
    if not isinstance(bn, NormLayer) or foldable_bn(bn) is not None or is_uninitialized(layer):
        return None
    if isinstance(layer, nn.Linear):
        fits = layer.in_features == bn.num_features
    elif isinstance(layer, CONV):
        unpadded = layer.padding == "valid" or all(p == 0 for p in layer.padding)
        fits = unpadded and layer.in_channels == bn.num_features
    else:
        return None
    if not fits or not _spatial_match(layer, bn, ranks.get(id(bn))):
        return None
    return fold_before(bn, layer)
