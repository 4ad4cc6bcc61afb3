"""The weight algebra of folding: a conv or linear layer that also applies a neighbouring batch norm.

At inference batch norm is the per-channel map y = s·x + t of Algorithm 2, line 11, with s = γ/√(Var[x] + ε)
and t = β − γE[x]/√(Var[x] + ε); a layer with ``convention="darknet"`` has s = γ/(√Var[x] + ε) instead
(:func:`bnlab.variants.convention.convention_inference_affine`). Everything is computed in float64 and rounded
once, into the layer's dtype.
"""

from __future__ import annotations

import copy

from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

from bnlab.tools._layers import NormLayer, running_stats
from bnlab.variants.convention import convention_inference_affine

__all__ = ["CONV", "CONV_T", "WEIGHT_LAYERS", "WeightLayer", "fold_after", "fold_before"]

#: The layers batch norm folds into: Conv*d, ConvTranspose*d (both _ConvNd) and Linear.
WeightLayer = _ConvNd | nn.Linear
CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
WEIGHT_LAYERS = (*CONV, *CONV_T, nn.Linear)


def _affine64(bn: NormLayer) -> tuple[Tensor, Tensor]:
    """s and t of the layer's eval map (its convention's), in float64 so the folded weights are rounded once."""
    mean, var = (t.detach().double() for t in running_stats(bn))
    gamma, beta = (None if t is None else t.detach().double() for t in (bn.weight, bn.bias))
    return convention_inference_affine(mean, var, gamma, beta, float(bn.eps), getattr(bn, "convention", "torch"))


def _with_weights(layer: WeightLayer, weight: Tensor, bias: Tensor) -> WeightLayer:
    folded = copy.deepcopy(layer)
    like = layer.weight
    folded.weight = nn.Parameter(weight.to(like.dtype), requires_grad=like.requires_grad)
    folded.bias = nn.Parameter(bias.to(like.dtype), requires_grad=like.requires_grad)
    return folded


def _bias64(layer: WeightLayer, channels: int, like: Tensor) -> Tensor:
    return like.new_zeros(channels) if layer.bias is None else layer.bias.detach().double()


def fold_after(layer: WeightLayer, bn: NormLayer) -> WeightLayer:
    """A copy of ``layer`` (conv, transposed conv or linear) that also applies the following batch norm.

    Output channel o becomes s_o·(W_o ∗ x + b_o) + t_o: W'_o = s_o·W_o and b'_o = s_o·b_o + t_o. The caller
    checks that the batch norm normalizes the layer's output channels (for a Linear: 2-D input).
    """
    scale, shift = _affine64(bn)
    w = layer.weight.detach().double()
    out = scale.numel()
    if isinstance(layer, CONV_T):
        # The weight is (C_in, C_out/groups, *k): output channel g·(C_out/groups) + j sits at [g-th block, j].
        groups, ones = layer.groups, [1] * (w.dim() - 2)
        w = (w.reshape(groups, w.shape[0] // groups, w.shape[1], *w.shape[2:])
             * scale.reshape(groups, 1, -1, *ones)).reshape(w.shape)
    else:
        w = w * scale.reshape(out, *([1] * (w.dim() - 1)))  # (C_out, ...): one scale per output row
    b = _bias64(layer, out, w) * scale + shift
    return _with_weights(layer, w, b)


def fold_before(bn: NormLayer, layer: WeightLayer) -> WeightLayer:
    """A copy of ``layer`` (linear, or conv without padding) that also applies the preceding batch norm.

    W(s·x + t) + b = (W·s)x + (W t + b). A padded conv would see its zero padding shifted by t, so the caller
    checks that there is none.
    """
    scale, shift = _affine64(bn)
    w = layer.weight.detach().double()
    out = w.shape[0]
    groups = getattr(layer, "groups", 1)
    # (C_out, C_in/groups, *k) seen as (groups, C_out/groups, C_in/groups, k): input channel g·(C_in/groups) + i.
    blocks = w.reshape(groups, out // groups, w.shape[1], -1)
    s = scale.reshape(groups, 1, -1, 1)
    t = shift.reshape(groups, 1, -1, 1)
    b = _bias64(layer, out, w) + (blocks * t).sum(dim=(2, 3)).reshape(out)  # W·t + b
    return _with_weights(layer, (blocks * s).reshape(w.shape), b)
