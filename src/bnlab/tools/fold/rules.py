"""Which batch norm folds into which neighbour: the rules every way of finding pairs shares.

Each rule answers with the folded layer, or with the reason the pair stays as it is (for the report).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from bnlab.nn import BatchNormAct1d, BatchNormAct2d, BatchNormAct3d
from bnlab.nn.policy import FOLLOW_MODE
from bnlab.tools._layers import NormLayer, has_running_stats, input_ranks, running_stats
from bnlab.tools.fold.math import CONV, WEIGHT_LAYERS, WeightLayer, fold_after, fold_before

#: id(batch-norm module) → the ranks of the inputs it saw (from example inputs or a captured graph; else empty).
Ranks = dict[int, set[int]]

#: The activations a fused BatchNormAct layer may apply after the normalization, as torch computes them
#: (ELU with α = 1): what is left of such a layer once its normalization is folded into the layer before it.
ACTIVATIONS = ("identity", "relu", "leaky_relu", "silu", "elu")


def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def uses_batch_statistics_at_inference(bn: nn.Module) -> bool:
    """Whether ``bn``'s statistics policy (set by bnlab.tools.freeze) normalizes with, or updates, batch statistics
    in eval mode. torch's own layers have no policy: they follow the mode."""
    policy = getattr(bn, "stats_policy", FOLLOW_MODE)
    return policy.normalize_with == "batch" or bool(policy.update_stats)


def activation_of(bn: nn.Module) -> tuple[str, float]:
    """(activation, negative slope) a fused BatchNormAct layer applies after normalizing; ("identity", 0) else."""
    if isinstance(bn, BatchNormAct1d | BatchNormAct2d | BatchNormAct3d):
        return str(bn.activation), float(bn.negative_slope)
    return "identity", 0.0


def foldable_bn(bn: nn.Module) -> str | None:
    """None if ``bn`` is a fixed map at inference that may be folded away, else why it is not."""
    if not isinstance(bn, NormLayer):
        return "not a batch-norm layer"
    if not has_running_stats(bn):
        return "it has no running statistics (track_running_stats=False), so it normalizes with batch statistics"
    if uses_batch_statistics_at_inference(bn):
        return "its statistics policy (bnlab.freeze) uses or updates batch statistics at inference"
    mean, var = running_stats(bn)
    if not (torch.isfinite(mean).all() and torch.isfinite(var).all()):
        return "its running statistics are not finite"
    if _hooked(bn):
        return "it has forward hooks, which would no longer run once it is folded away"
    activation = activation_of(bn)[0]
    if activation not in ACTIVATIONS:
        return f"its activation {activation!r} is not one fold knows how to keep"
    return None


def overridden(layer: nn.Module) -> str | None:
    """The method of torch's conv/linear class that the layer's own class overrides, if any.

    A subclass that only changes ``__init__`` (Hugging Face's ``EfficientNetDepthwiseConv2d``) computes what
    torch's layer does; one that overrides ``forward`` may do anything with the weight (weight standardization
    would undo the fold's scaling), so it is not folded into.
    """
    base = next((c for c in type(layer).__mro__ if c in WEIGHT_LAYERS), None)
    if base is None:
        return None
    for method in ("forward", "_conv_forward"):
        if getattr(type(layer), method, None) is not getattr(base, method, None):
            return method
    return None


def _layer_obstacle(layer: WeightLayer) -> str | None:
    """Why ``layer`` cannot be replaced by a folded copy, whatever the batch norm."""
    method = overridden(layer)
    if method is not None:
        return (f"its class {type(layer).__name__} overrides {base_name(layer)}.{method}, which may use the weight "
                f"in a way folding cannot follow")
    if parametrize.is_parametrized(layer):
        holder = layer.get_submodule("parametrizations")  # parametrize keeps one entry per parametrized tensor
        names = sorted(name for name, _ in holder.named_children())
        return (f"its {', '.join(names)} is parametrized (weight_norm, spectral_norm, ...) and computed at every "
                f"call; fold after torch.nn.utils.parametrize.remove_parametrizations(layer, {names[0]!r})")
    if _hooked(layer):
        return "it has forward hooks, which would see the folded values"
    return None


def base_name(layer: nn.Module) -> str:
    return next((c.__name__ for c in type(layer).__mro__ if c in WEIGHT_LAYERS), type(layer).__name__)


def _spatial_match(layer: WeightLayer, bn: NormLayer, seen: set[int] | None) -> bool:
    """Whether the layer's channel dimension is the one the batch norm normalizes (dimension 1)."""
    expected = 2 if isinstance(layer, nn.Linear) else 2 + len(layer.kernel_size)
    declared = input_ranks(bn)
    if declared and expected not in declared:
        return False
    if seen:
        return seen == {expected}
    # A Linear acts on the last dimension and batch norm on dimension 1: they agree on 2-D input only, which is
    # assumed for BatchNorm1d (an MLP) unless example inputs say otherwise. Conv outputs have channels at 1.
    return not isinstance(layer, nn.Linear) or declared == (2, 3)


def folded_after(layer: nn.Module, bn: nn.Module, ranks: Ranks) -> WeightLayer | str | None:
    """``layer`` with the following ``bn`` folded in; why not; or None if they are not a layer and a batch norm."""
    if not isinstance(layer, WEIGHT_LAYERS) or not isinstance(bn, NormLayer):
        return None
    reason = foldable_bn(bn) or _layer_obstacle(layer)
    if reason is not None:
        return reason
    out = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    if out != bn.num_features or not _spatial_match(layer, bn, ranks.get(id(bn))):
        return "it does not normalize the layer's output channels"
    return fold_after(layer, bn)


def folded_before(bn: nn.Module, layer: nn.Module, ranks: Ranks) -> WeightLayer | str | None:
    """``layer`` with the preceding ``bn`` folded in; why not; or None if they are not a batch norm and a layer."""
    if not isinstance(bn, NormLayer) or not isinstance(layer, WEIGHT_LAYERS):
        return None
    if not isinstance(layer, (nn.Linear, *CONV)):
        return ("a transposed conv after it cannot take it: the shift β − γE[x]/√(Var[x] + ε) would reach its "
                "output unevenly near the borders")
    reason = foldable_bn(bn) or _layer_obstacle(layer)
    if reason is not None:
        return reason
    if activation_of(bn)[0] != "identity":
        return f"its activation ({activation_of(bn)[0]}) lies between it and the layer after it"
    if isinstance(layer, CONV) and not (layer.padding == "valid" or all(p == 0 for p in layer.padding)):
        return "the conv after it pads its input, and folding would shift the padding by β − γE[x]/√(Var[x] + ε)"
    channels = layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels
    if channels != bn.num_features or not _spatial_match(layer, bn, ranks.get(id(bn))):
        return "the layer after it does not take its channels as input features"
    return fold_before(bn, layer)
