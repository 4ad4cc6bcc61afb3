"""``bnlab.tools.fold``: fold batch norm into the neighbouring conv or linear layer for inference.

At inference a batch-norm layer is the fixed per-channel map of Algorithm 2, line 11,
y = s·x + t with s = γ/√(Var[x] + ε) and t = β − γE[x]/√(Var[x] + ε), so it can be multiplied into the weights
of the layer next to it and removed:

- BN after a layer W (Conv1d/2d/3d, ConvTranspose1d/2d/3d, Linear; any groups, dilation, stride, padding mode):
  output channel o becomes s_o·(W_o ∗ x + b_o) + t_o, i.e. W'_o = s_o·W_o and b'_o = s_o·b_o + t_o;
- BN right before a Linear or a Conv without padding: W(s·x + t) + b = (W·s)x + (W t + b); a padded conv
  would see its zero padding shifted by t, so it is left alone.

Two ways to find the pairs:

- ``torch.fx`` (default): the model is traced with every batch-norm layer as a leaf (bnlab's layers included, so
  they appear as ``call_module`` like torch's); graphs traced elsewhere show bnlab's layers as
  ``call_function(_module_forward, (get_attr bn, x))`` and that form is recognised too. A pair is folded only
  when nothing else reads the intermediate value and the layer is called once.
- ``nn.Sequential`` neighbours: the fallback for models torch.fx cannot trace.

Folding uses the running statistics, so the model must be in eval mode; the caller's model is never modified.
The weight algebra is in :mod:`bnlab.tools._fold_math` (``fold_after``/``fold_before`` fold one pair by hand),
the pairing rules in :mod:`bnlab.tools._fold_rules`, the torch.fx search in :mod:`bnlab.tools._fold_graph`.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from typing import Any, NamedTuple

from torch import Tensor, nn

from bnlab.tools._fold_check import discrepancy, outputs
from bnlab.tools._fold_graph import Untraceable, fold_graph, trace
from bnlab.tools._fold_math import fold_after, fold_before
from bnlab.tools._fold_rules import Ranks, foldable_bn, folded_after, folded_before
from bnlab.tools._layers import batch_norm_layers, is_uninitialized, norm_layers

__all__ = ["FoldAssumptionWarning", "FoldFallbackWarning", "Folding", "fold", "fold_after", "fold_before",
           "fold_with_report"]

METHODS = ("auto", "fx", "sequential")


class FoldFallbackWarning(UserWarning):
    """torch.fx could not trace the model, so only ``nn.Sequential`` neighbours were folded."""


class FoldAssumptionWarning(UserWarning):
    """A BatchNorm1d and a Linear were folded assuming 2-D (N, C) input, with no example inputs to check it."""


class Folding(NamedTuple):
    """What :func:`fold_with_report` did: the new model, (bn, layer) pairs folded, (bn, reason) pairs left."""

    model: nn.Module
    folded: list[tuple[str, str]]
    skipped: list[tuple[str, str]]
    method: str  # "fx" or "sequential"


def fold(model: nn.Module, *, example_inputs: Tensor | tuple[Any, ...] | None = None,
         method: str = "auto") -> nn.Module:
    """A new eval-mode model with every foldable batch-norm layer folded into its conv/linear neighbour.

    Args:
        model: a model in eval mode (``model.eval()``): folding uses the running statistics.
        example_inputs: optional inputs (a tensor, or a tuple of arguments) for one forward pass, with two uses.
            A BatchNorm1d next to a Linear is folded only if its input is 2-D (N, C): on 3-D input the two layers
            act on different dimensions; without examples that is assumed, as it holds for MLPs, with a
            :class:`FoldAssumptionWarning`. And the folded model's outputs on them must equal the original's
            within float rounding, or a ValueError says which assumption failed.
        method: ``"auto"`` (torch.fx, falling back to ``"sequential"`` with a :class:`FoldFallbackWarning`
            naming the part torch.fx could not trace), ``"fx"`` (raise instead) or ``"sequential"``.

    Returns a copy of the model, in eval mode, with each folded layer replaced by its folded copy and each folded
    batch norm by ``nn.Identity``: same class, same forward, same state_dict keys but the batch norms' (a layer
    that had no bias gains one). A GraphModule given (or held inside the model with bnlab layers in it) comes
    back as a GraphModule with the batch norms taken out of its graph. Outputs equal the original's up to float
    rounding: the folded weights are computed in float64 and rounded once.
    """
    return fold_with_report(model, example_inputs=example_inputs, method=method).model


def fold_with_report(model: nn.Module, *, example_inputs: Tensor | tuple[Any, ...] | None = None,
                     method: str = "auto") -> Folding:
    """:func:`fold`, also saying which layers were folded and why the others were not."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"fold expects a torch.nn.Module, got {type(model).__name__}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    training = [f"layer {name!r}" if name else "the model"
                for name, m in [("", model), *batch_norm_layers(model)] if m.training]
    if training:
        raise ValueError(
            f"fold needs a model in eval mode, but {training[0]} is in training mode: folding bakes the running "
            f"statistics into the weights, and in training mode batch norm uses batch statistics instead; "
            f"call model.eval() first"
        )
    lazy = next(((name, m) for name, m in model.named_modules() if is_uninitialized(m)), None)
    if lazy is not None:
        # Checked here: deepcopy would fail first, with torch's message about uninitialized parameters.
        raise ValueError(f"fold needs initialized layers, but lazy layer {lazy[0]!r} ({type(lazy[1]).__name__}) has "
                         f"not seen a batch yet; run one forward pass on an example batch first")
    root = copy.deepcopy(model)
    args = None if example_inputs is None else (
        example_inputs if isinstance(example_inputs, tuple) else (example_inputs,))
    ranks, expected = ({}, []) if args is None else _run_examples(root, args)
    result = _fold(root, ranks, method)
    if args is not None:
        _check(result, args, expected)
    else:
        assumed = [f"{bn!r} into {layer!r}" for bn, layer in result.folded
                   if isinstance(_submodule(model, layer), nn.Linear)]
        if assumed:
            warnings.warn(
                f"fold assumes 2-D (N, C) input for the BatchNorm1d/Linear pairs it folded ({', '.join(assumed)}): "
                f"on (N, C, L) input batch norm normalizes C and the Linear acts on L, and the fold would be "
                f"wrong; pass example_inputs to check", FoldAssumptionWarning, stacklevel=2)
    return result


def _fold(root: nn.Module, ranks: Ranks, method: str) -> Folding:
    if method == "sequential":
        return _fold_sequential(root, ranks)
    try:
        graph_module = trace(root)
    except Untraceable as err:
        if method == "fx":
            raise ValueError(f"{err}; fold it with method='sequential' (conv/BN neighbours in nn.Sequential)"
                             ) from err.__cause__
        warnings.warn(f"{err}; folded only conv/BN neighbours inside nn.Sequential containers, assuming that each "
                      f"nn.Sequential runs its children in order on one input (pass example_inputs to check)",
                      FoldFallbackWarning, stacklevel=3)
        return _fold_sequential(root, ranks)
    folded_model, folded, skipped = fold_graph(graph_module, ranks, root)
    return Folding(folded_model, folded, skipped, "fx")


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


# ----------------------------------------------------------------------------------------------- examples

def _run_examples(root: nn.Module, args: tuple[Any, ...]) -> tuple[Ranks, list[Tensor]]:
    """One forward of the unfolded copy on the examples: the ranks each batch norm's input had, and the outputs."""
    ranks: Ranks = {}

    def record(module: nn.Module, inputs: tuple[Any, ...]) -> None:
        if inputs and isinstance(inputs[0], Tensor):
            ranks.setdefault(id(module), set()).add(inputs[0].dim())

    handles = [m.register_forward_pre_hook(record) for _, m in norm_layers(root)]
    try:
        expected = outputs(root, args)
    finally:
        for h in handles:
            h.remove()
    return ranks, expected


def _check(result: Folding, args: tuple[Any, ...], expected: list[Tensor]) -> None:
    """Refuse a fold that changes the outputs on the example inputs beyond float rounding."""
    if result.method == "sequential":
        cause = ("the nn.Sequential fallback assumes that each nn.Sequential runs its children in order on one "
                 "input, and this model's forward does not (it calls members one by one, or reuses their "
                 "outputs); make the model traceable by torch.fx, or leave it unfolded")
    else:
        cause = ("the forward uses the folded layers in a way its torch.fx graph does not show; leave this model "
                 "unfolded, or fold by hand with bnlab.tools.fold_after / fold_before")
    random = "; a model whose eval-mode output is random cannot be checked: fold it without example_inputs"
    try:
        got = outputs(result.model, args)
    except Exception as err:
        raise ValueError(f"the folded model fails on example_inputs ({type(err).__name__}: "
                         f"{(str(err).strip().splitlines() or [''])[0]}): {cause}") from err
    error, allowed = discrepancy(expected, got)
    if not error <= allowed:
        raise ValueError(f"folding changed the model's outputs on example_inputs by up to {error:.3g}, more than "
                         f"float rounding ({allowed:.2g}): {cause}{random}")


# ----------------------------------------------------------------------------------------------- nn.Sequential

def _sequentials(root: nn.Module) -> Iterator[tuple[str, nn.Sequential]]:
    for name, m in root.named_modules():
        if isinstance(m, nn.Sequential):
            yield name, m


def _fold_sequential(root: nn.Module, ranks: Ranks) -> Folding:
    """Fold neighbours inside every nn.Sequential, assuming each runs its children in order on one input.

    Each Sequential's own slots are replaced, not every name a module has: all this method knows is that the
    Sequential runs it, so a module it shares with other parts of the model keeps its old form there.
    """
    folded: list[tuple[str, str]] = []
    reasons: dict[int, list[str]] = {}
    seen: set[int] = set()
    for prefix, seq in list(_sequentials(root)):
        keys = list(seq._modules.keys())
        i = 0
        while i + 1 < len(keys):
            a, b = seq._modules[keys[i]], seq._modules[keys[i + 1]]
            names = [f"{prefix}.{k}" if prefix else k for k in keys[i:i + 2]]
            after = None if a is None or b is None else folded_after(a, b, ranks)
            before = None if a is None or b is None or isinstance(after, nn.Module) else folded_before(a, b, ranks)
            if isinstance(after, nn.Module):
                seq._modules[keys[i]], seq._modules[keys[i + 1]] = after, nn.Identity()
                folded.append((names[1], names[0]))
                seen.add(id(b))
                i += 2
            elif isinstance(before, nn.Module):
                seq._modules[keys[i]], seq._modules[keys[i + 1]] = nn.Identity(), before
                folded.append((names[0], names[1]))
                seen.add(id(a))
                i += 1  # the folded layer may still take a batch norm after it
            else:
                for bn, layer, why in ((b, names[0], after), (a, names[1], before)):
                    if isinstance(why, str):
                        reasons.setdefault(id(bn), []).append(f"cannot fold into {layer!r}: {why}")
                i += 1
    skipped = [(name, foldable_bn(m) or "; ".join(reasons.get(id(m), []))
                or "no conv or linear neighbour in an nn.Sequential to fold into")
               for name, m in norm_layers(root) if id(m) not in seen]
    return Folding(root.eval(), folded, skipped, "sequential")
