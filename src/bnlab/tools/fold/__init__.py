"""Fold batch norm into the neighbouring conv or linear layer for inference.

At inference a batch-norm layer is the fixed per-channel map of Algorithm 2, line 11,
y = s·x + t with s = γ/√(Var[x] + ε) and t = β − γE[x]/√(Var[x] + ε), so it can be multiplied into the weights
of the layer next to it and removed:

- BN after a layer W (Conv1d/2d/3d, ConvTranspose1d/2d/3d, Linear; any groups, dilation, stride, padding mode):
  output channel o becomes s_o·(W_o ∗ x + b_o) + t_o, i.e. W'_o = s_o·W_o and b'_o = s_o·b_o + t_o;
- BN right before a Linear or a Conv without padding: W(s·x + t) + b = (W·s)x + (W t + b); a padded conv
  would see its zero padding shifted by t, so it is left alone.

Finding the pairs the forward really computes (a pair folds only when nothing else reads the value between the
two layers and each is called once):

- ``torch.fx`` on the whole model (:mod:`.graph`), every batch-norm layer a leaf;
- where fx cannot trace the whole model: ``torch.export`` on the example inputs (:mod:`.export`), which captures
  any Python forward, or else ``torch.fx`` module by module, as high up the module tree as it can trace;
- ``nn.Sequential`` neighbours (:mod:`.sequential`), only when asked for.

The search only reads the model: the folded layers are swapped into a copy, which keeps the model's class and
its Python forward. Folding uses the running statistics, so the model must be in eval mode; the caller's model
is never modified. The weight algebra is in :mod:`.math` (:func:`fold_after` and :func:`fold_before` fold one pair
by hand), the pairing rules in :mod:`.rules`, the per-layer report in :mod:`.report`.
"""

from __future__ import annotations

import copy
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from bnlab.tools._layers import batch_norm_layers, is_uninitialized, norm_layers
from bnlab.tools.fold.check import discrepancy, outputs
from bnlab.tools.fold.export import Uncapturable, capture, export_sites
from bnlab.tools.fold.graph import (
    Parts,
    Untraceable,
    count_calls,
    function_form,
    graph_sites,
    rewrite,
    trace,
    trace_modules,
)
from bnlab.tools.fold.math import fold_after, fold_before
from bnlab.tools.fold.pairs import Decision, FoldedBatchNorm, swap_in
from bnlab.tools.fold.pairs import decide as _decide
from bnlab.tools.fold.report import Folding
from bnlab.tools.fold.rules import Ranks
from bnlab.tools.fold.sequential import fold_sequential

__all__ = ["FoldAssumptionWarning", "FoldFallbackWarning", "FoldedBatchNorm", "Folding", "fold", "fold_after",
           "fold_before", "fold_with_report"]

METHODS = ("auto", "fx", "modules", "export", "sequential")

#: Example inputs as given: one tensor, a tuple of positional arguments, or a dict of keyword arguments.
ExampleInputs = Tensor | tuple[Any, ...] | dict[str, Any]


class FoldFallbackWarning(UserWarning):
    """torch.fx could not trace the whole model and torch.export did not capture it (no example inputs, or it
    failed): pairs were found module by module, and code outside the traced forwards was not seen."""


class FoldAssumptionWarning(UserWarning):
    """A BatchNorm1d and a Linear were folded assuming 2-D (N, C) input, with no example inputs to check it."""


def fold(model: nn.Module, *, example_inputs: ExampleInputs | None = None, method: str = "auto") -> nn.Module:
    """A new eval-mode model with every foldable batch-norm layer folded into its conv/linear neighbour.

    Args:
        model: a model in eval mode (``model.eval()``): folding uses the running statistics.
        example_inputs: optional inputs for one forward pass: a tensor, a tuple of positional arguments, or a dict
            of keyword arguments (``{"pixel_values": x}``). With them, a model torch.fx cannot trace whole is
            captured with torch.export, which sees every operation of the forward; the input ranks settle whether
            a BatchNorm1d next to a Linear normalizes the Linear's features (without examples 2-D (N, C) input is
            assumed, as in an MLP, with a :class:`FoldAssumptionWarning`); and the folded model's outputs on them
            must equal the original's within float rounding, or a ValueError says which assumption failed.
        method: ``"auto"`` (torch.fx on the whole model; where it cannot trace it, torch.export on the example
            inputs; else torch.fx module by module, with a :class:`FoldFallbackWarning`), ``"fx"`` (the whole
            model or a ValueError), ``"export"`` (needs example_inputs), ``"modules"`` or ``"sequential"``
            (neighbours inside nn.Sequential containers only).

    Returns a copy of the model, in eval mode, with each folded layer replaced by its folded copy and each folded
    batch norm by a :class:`FoldedBatchNorm` (an ``nn.Identity`` that keeps the batch norm's attributes readable):
    same class, same forward (``model(pixel_values=x)`` returns what it did), same state_dict keys but the batch
    norms' (a layer that had no bias gains one). Only a GraphModule given (or one that calls bnlab layers as
    functions) comes back as a GraphModule with the batch norms taken out of its graph. Outputs equal the
    original's up to float rounding: the folded weights are computed in float64 and rounded once.
    """
    return fold_with_report(model, example_inputs=example_inputs, method=method).model


def fold_with_report(model: nn.Module, *, example_inputs: ExampleInputs | None = None,
                     method: str = "auto") -> Folding:
    """:func:`fold`, also saying which layers were folded and why the others were not (``.report()``)."""
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
    example = _arguments(example_inputs)
    if method == "export" and example is None:
        raise ValueError("method='export' needs example_inputs: torch.export captures the forward by running it")
    root = copy.deepcopy(model)
    ranks, expected = ({}, []) if example is None else _run_examples(root, example)
    result = _fold(root, ranks, method, example)
    if example is not None:
        _check(result, example, expected)
    else:
        assumed = [f"{bn!r} into {layer!r}" for bn, layer in result.folded
                   if isinstance(_submodule(model, layer), nn.Linear)]
        if assumed:
            warnings.warn(
                f"fold assumes 2-D (N, C) input for the BatchNorm1d/Linear pairs it folded ({', '.join(assumed)}): "
                f"on (N, C, L) input batch norm normalizes C and the Linear acts on L, and the fold would be "
                f"wrong; pass example_inputs to check", FoldAssumptionWarning, stacklevel=2)
    return result


Example = tuple[tuple[Any, ...], dict[str, Any]]


def _arguments(example_inputs: ExampleInputs | None) -> Example | None:
    if example_inputs is None:
        return None
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    return (example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)), {}


def _fold(root: nn.Module, ranks: Ranks, method: str, example: Example | None) -> Folding:
    if method == "sequential":
        model, folded, skipped = fold_sequential(root, ranks)
        return Folding(model, folded, skipped, "sequential")
    if method == "export":
        assert example is not None  # checked by the caller
        try:
            return _by_export(root, ranks, example)
        except Uncapturable as err:
            raise ValueError(f"{err}; fold it with method='modules' (torch.fx, module by module)") from err.__cause__
    whole: Untraceable | None = None
    if method in ("auto", "fx"):
        try:
            return _by_fx(trace(root), root, ranks)
        except Untraceable as err:
            if method == "fx":
                raise ValueError(f"{err}; fold it with method='auto' (torch.export on example_inputs, or torch.fx "
                                 f"module by module)") from err.__cause__
            whole = err
    notes = [] if whole is None else [str(whole)]
    if method == "auto" and example is not None:
        try:
            return _by_export(root, ranks, example, notes)
        except Uncapturable as err:
            notes.append(str(err))
    result, untraced = _by_modules(root, ranks, notes, exported=method == "auto" and example is not None)
    if method == "auto" and untraced:
        unseen = ", ".join(repr(name) if name else "the model's own" for name in untraced)
        advice = ("; torch.export could not capture it on example_inputs either" if example is not None
                  else "; pass example_inputs to capture the whole forward with torch.export and check the fold")
        warnings.warn(f"{whole}; folded the pairs torch.fx finds module by module: the code of the forwards it "
                      f"cannot trace ({unseen}) was not seen{advice}", FoldFallbackWarning, stacklevel=4)
    return result


def _finish(root: nn.Module, decision: Decision, called: set[int], why: Callable[[str], str], method: str,
            notes: list[str], model: nn.Module | None = None) -> Folding:
    """The Folding: the pairs folded into ``root`` (or the rewritten ``model``), and a reason for every batch norm
    left, ``why(name)`` for those no search saw called."""
    skipped = decision.skipped + [(name, why(name)) for name, m in norm_layers(root) if id(m) not in called]
    before = tuple(f.bn for f in decision.folds if f.side == "before")
    folded = [(f.bn, f.layer) for f in decision.folds]
    return Folding(swap_in(root, decision) if model is None else model, folded, skipped, method, before, tuple(notes))


def _by_fx(gm: torch.fx.GraphModule, root: nn.Module, ranks: Ranks) -> Folding:
    rewriting = isinstance(root, torch.fx.GraphModule) or function_form(gm)
    sites = graph_sites(gm, count_calls(gm), rewrite=rewriting)
    decision = _decide(sites, ranks)
    called = {id(s.bn) for s in sites}
    model = rewrite(gm, decision) if rewriting else None
    return _finish(root, decision, called, lambda _: "not called in the forward", "fx", [], model)


def _by_export(root: nn.Module, ranks: Ranks, example: Example, notes: list[str] | None = None) -> Folding:
    captured = export_sites(capture(root, *example), root)
    decision = _decide(captured.sites, {**ranks, **captured.ranks})
    return _finish(root, decision, captured.called, lambda _: "not called in the forward on example_inputs",
                   "export", list(notes or []))


def _by_modules(root: nn.Module, ranks: Ranks, notes: list[str], exported: bool = False) -> tuple[Folding, list[str]]:
    """Fold what torch.fx finds module by module; also the names of the modules whose code no trace saw.

    ``exported``: torch.export was tried on example inputs and failed (so the reasons do not ask for them)."""
    parts: Parts = trace_modules(root)
    calls: Counter[int] = Counter()
    for part in parts.parts:
        calls.update(count_calls(part.graph))
    names: dict[int, list[str]] = defaultdict(list)
    for name, m in root.named_modules(remove_duplicate=False):
        names[id(m)].append(name)

    def aliases(module: nn.Module) -> str | None:
        registered = names.get(id(module), [])
        if len(registered) <= 1:
            return None
        return (f"the module is registered under several names ({', '.join(map(repr, registered))}), and in a "
                f"model torch.fx cannot trace whole its other uses are not seen")

    sites = [site for p in parts.parts
             for site in graph_sites(p.graph, calls, prefix=p.prefix, aliases=aliases)]
    decision = _decide(sites, ranks)

    def why(name: str) -> str:
        owners = [p for p in parts.untraced if not p or name.startswith(f"{p}.")]
        if not owners:
            return "not called in any forward torch.fx traced"
        owner = max(owners, key=len)
        advice = ("torch.export could not capture it on example_inputs either" if exported
                  else "pass example_inputs so that torch.export captures it")
        return (f"called from code torch.fx cannot trace, in the forward of {_module(owner)} "
                f"({parts.untraced[owner]}); {advice}")

    notes = notes + [f"torch.fx cannot trace the forward of {_module(name)} ({reason}): its children were traced "
                     f"one by one" for name, reason in parts.untraced.items()]
    return _finish(root, decision, {id(s.bn) for s in sites}, why, "modules", notes), parts.unseen


def _module(name: str) -> str:
    return repr(name) if name else "the model itself"


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


# ----------------------------------------------------------------------------------------------- examples

def _run_examples(root: nn.Module, example: Example) -> tuple[Ranks, list[Tensor]]:
    """One forward of the unfolded copy on the examples: the ranks each batch norm's input had, and the outputs."""
    ranks: Ranks = {}

    def record(module: nn.Module, inputs: tuple[Any, ...]) -> None:
        if inputs and isinstance(inputs[0], Tensor):
            ranks.setdefault(id(module), set()).add(inputs[0].dim())

    handles = [m.register_forward_pre_hook(record) for _, m in norm_layers(root)]
    try:
        expected = outputs(root, *example)
    finally:
        for h in handles:
            h.remove()
    return ranks, expected


CAUSES = {
    "sequential": "the nn.Sequential fallback assumes that each nn.Sequential runs its children in order on one "
                  "input, and this model's forward does not (it calls members one by one, or reuses their "
                  "outputs); make the model traceable by torch.fx, or leave it unfolded",
    "fx": "the forward uses the folded layers in a way its torch.fx graph does not show; leave this model "
          "unfolded, or fold by hand with bnlab.tools.fold_after / fold_before",
    "modules": "code torch.fx could not trace uses the folded layers in a way the traced forwards do not show "
               "(it calls a layer of a submodule directly, or reuses its output); fold with method='export', or "
               "leave this model unfolded",
    "export": "the forward uses the folded layers in a way the graph torch.export captured does not show; leave "
              "this model unfolded, or fold by hand with bnlab.tools.fold_after / fold_before",
}


def _check(result: Folding, example: Example, expected: list[Tensor]) -> None:
    """Refuse a fold that changes the outputs on the example inputs beyond float rounding."""
    cause = CAUSES[result.method]
    random = "; a model whose eval-mode output is random cannot be checked: fold it without example_inputs"
    try:
        got = outputs(result.model, *example)
    except Exception as err:
        raise ValueError(f"the folded model fails on example_inputs ({type(err).__name__}: "
                         f"{(str(err).strip().splitlines() or [''])[0]}): {cause}") from err
    error, allowed = discrepancy(expected, got)
    if not error <= allowed:
        raise ValueError(f"folding changed the model's outputs on example_inputs by up to {error:.3g}, more than "
                         f"float rounding ({allowed:.2g}): {cause}{random}")
