"""What a fold did, per batch-norm layer: :class:`Folding`, and its text table (``bnlab fold --report``)."""

from __future__ import annotations

from typing import NamedTuple

from torch import fx, nn

#: How each method found the pairs, in words.
FOUND_WITH = {
    "fx": "torch.fx, tracing the whole model",
    "modules": "torch.fx, module by module where the whole model could not be traced",
    "export": "torch.export, capturing the forward on the example inputs",
    "sequential": "nn.Sequential neighbours",
}


class Folding(NamedTuple):
    """What :func:`bnlab.tools.fold_with_report` did.

    ``folded`` lists (batch norm, layer it went into) pairs and ``skipped`` (batch norm, reason) for every other
    batch-norm layer of the model, names as in ``model.named_modules()``; ``method`` says how the pairs were found
    ("fx", "modules", "export" or "sequential"); ``before`` names the batch norms folded into the layer after
    them (the others went into the layer before them); ``notes`` says what the search could not see.
    """

    model: nn.Module
    folded: list[tuple[str, str]]
    skipped: list[tuple[str, str]]
    method: str
    before: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def report(self) -> str:
        """A table with one row per batch-norm layer: folded into which layer, or left and why."""
        total = len(self.folded) + len(self.skipped)
        kept = ("a GraphModule (the graph, with the batch norms taken out)" if isinstance(self.model, fx.GraphModule)
                else f"the model's own class ({type(self.model).__name__}) and forward")
        lines = [f"fold: {len(self.folded)} of {total} batch-norm layer(s) folded, found with "
                 f"{FOUND_WITH.get(self.method, self.method)}; the result keeps {kept}"]
        rows = [(bn, "folded", f"into {layer} (the layer {'after' if bn in self.before else 'before'} it)")
                for bn, layer in self.folded]
        rows += [(bn, "left", reason) for bn, reason in self.skipped]
        if rows:
            width = max(len("batch norm"), *(len(bn) for bn, _, _ in rows))
            lines.append(f"{'batch norm':{width}s}  {'result':6s}  layer, or why it stays")
            lines += [f"{bn:{width}s}  {what:6s}  {detail}" for bn, what, detail in rows]
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)
