"""Folding ``nn.Sequential`` neighbours, with no graph at all (``method="sequential"``).

It assumes that each nn.Sequential runs its children in order on one input; a forward that calls its members one
by one and reuses their outputs breaks that assumption, which only example inputs can reveal.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

from bnlab.tools._layers import norm_layers
from bnlab.tools.fold.pairs import FoldedBatchNorm
from bnlab.tools.fold.rules import Ranks, foldable_bn, folded_after, folded_before


def _sequentials(root: nn.Module) -> Iterator[tuple[str, nn.Sequential]]:
    for name, m in root.named_modules():
        if isinstance(m, nn.Sequential):
            yield name, m


def fold_sequential(root: nn.Module, ranks: Ranks) -> tuple[nn.Module, list[tuple[str, str]], list[tuple[str, str]]]:
    """Fold neighbours inside every nn.Sequential of ``root`` (modified): (root, folded, skipped).

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
            if isinstance(after, nn.Module) and b is not None:
                seq._modules[keys[i]], seq._modules[keys[i + 1]] = after, FoldedBatchNorm(b, names[0])
                folded.append((names[1], names[0]))
                seen.add(id(b))
                i += 2
            elif isinstance(before, nn.Module) and a is not None:
                seq._modules[keys[i]], seq._modules[keys[i + 1]] = FoldedBatchNorm(a, names[1]), before
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
    return root.eval(), folded, skipped
