"""From the places where a forward calls a batch norm to folded layers: the decision shared by every search.

A search (torch.fx on the whole model or module by module, torch.export, nn.Sequential neighbours) reports each
call of a batch norm as a :class:`Site`: the layers next to it that it might fold into, in order of preference,
and why the other neighbours do not qualify. :func:`decide` applies the rules (:mod:`bnlab.tools.fold.rules`) and
folds; :func:`swap_in` puts the folded layers into the model in place of the originals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn
from torch.nn import functional as F

from bnlab.tools._layers import replace_modules
from bnlab.tools.fold.rules import Ranks, activation_of, foldable_bn, folded_after, folded_before

NO_NEIGHBOUR = "no conv or linear layer next to it to fold into"


@dataclass
class Option:
    """A layer a batch norm may fold into: ``side`` "after" if the layer feeds the batch norm, "before" if the
    batch norm feeds the layer."""

    side: str
    name: str
    layer: nn.Module


@dataclass
class Site:
    """One call of a batch norm in a captured forward, with the layers it may fold into."""

    name: str
    bn: nn.Module
    options: list[Option] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)  # why the neighbours that are no option are not
    blocked: str | None = None  # why this batch norm cannot fold at all, seen in the graph
    node: Any = None  # the call's torch.fx node, where the graph itself is rewritten


@dataclass(frozen=True)
class Fold:
    """One batch norm folded: into ``layer``, which ran right before it ("after") or right after it ("before")."""

    bn: str
    layer: str
    side: str


@dataclass
class Decision:
    folds: list[Fold] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    #: id(original layer) → (original layer, its folded copy with every fold it takes, one on top of the other)
    layers: dict[int, tuple[nn.Module, nn.Module]] = field(default_factory=dict)
    #: id(batch norm) → (the batch norm, the name of the layer it went into), for those folded
    norms: dict[int, tuple[nn.Module, str]] = field(default_factory=dict)
    #: the sites folded, in order (a graph rewrite removes their nodes)
    sites: list[Site] = field(default_factory=list)


def decide(sites: list[Site], ranks: Ranks) -> Decision:
    """Fold what the rules allow, site by site in forward order; a layer with a batch norm on both sides takes
    both folds, the second on top of the first."""
    result = Decision()
    for site in sites:
        reason = site.blocked or foldable_bn(site.bn)
        if reason is not None:
            result.skipped.append((site.name, reason))
            continue
        reasons = list(site.reasons)
        for option in site.options:
            layer = result.layers.get(id(option.layer), (option.layer, option.layer))[1]
            made = (folded_after(layer, site.bn, ranks) if option.side == "after"
                    else folded_before(site.bn, layer, ranks))
            if isinstance(made, nn.Module):
                result.layers[id(option.layer)] = (option.layer, made)
                result.norms[id(site.bn)] = (site.bn, option.name)
                result.folds.append(Fold(site.name, option.name, option.side))
                result.sites.append(site)
                break
            if isinstance(made, str):
                reasons.append(f"cannot fold into {option.name!r}: {made}")
        else:
            result.skipped.append((site.name, "; ".join(dict.fromkeys(reasons)) or NO_NEIGHBOUR))
    result.skipped = list(dict.fromkeys(result.skipped))  # a layer called at several places is reported once
    return result


class FoldedBatchNorm(nn.Identity):
    """What is left of a batch norm folded into the layer ``folded_into``: its input, passed through.

    A fused BatchNormAct layer leaves its activation (relu, leaky_relu, silu or elu, as torch computes them). The
    batch norm's attributes (``num_features``, ``eps``, ``momentum``, ...) and tensors (``weight``, ``bias``,
    ``running_mean``, ``running_var``, ``num_batches_tracked``) stay readable, the tensors as non-persistent
    buffers (moved by ``.to()``, out of the state_dict), so a forward that reads ``self.bn.running_var`` besides
    calling ``self.bn`` still runs and computes what it did: folding changes the layer it went into, not these.
    """

    def __init__(self, bn: nn.Module, folded_into: str) -> None:
        super().__init__()
        self.folded_into = folded_into
        self.activation, self.negative_slope = activation_of(bn)
        for name in ("num_features", "eps", "momentum", "affine", "track_running_stats"):
            if hasattr(bn, name):
                setattr(self, name, getattr(bn, name))
        for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            value = getattr(bn, name, None)
            self.register_buffer(name, value.detach() if isinstance(value, Tensor) else None, persistent=False)

    def forward(self, input: Tensor) -> Tensor:
        if self.activation == "relu":
            return F.relu(input)
        if self.activation == "leaky_relu":
            return F.leaky_relu(input, self.negative_slope)
        if self.activation == "silu":
            return F.silu(input)
        if self.activation == "elu":
            return F.elu(input)
        return input

    def extra_repr(self) -> str:
        act = "" if self.activation == "identity" else f", then {self.activation}"
        return f"folded into {self.folded_into!r}{act}"


def swap_in(root: nn.Module, decision: Decision) -> nn.Module:
    """Put the folded layers in place of the originals and a :class:`FoldedBatchNorm` in place of each folded
    batch norm, under every name each is registered under; the model keeps its class and its forward."""
    replacements: dict[nn.Module, nn.Module] = {old: new for old, new in decision.layers.values()}
    for bn, into in decision.norms.values():
        replacements[bn] = FoldedBatchNorm(bn, into)
    return replace_modules(root, replacements).eval()
