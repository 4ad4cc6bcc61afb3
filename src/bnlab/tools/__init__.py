"""Model-level tools over batch-norm modules: pure functions that return a new model or a report.

- :func:`fold`: fold batch norm into the neighbouring conv/linear weights for inference;
- :func:`recalibrate`: recompute running statistics from data (Algorithm 2), in place;
- :func:`freeze`: per-layer switches (batch or running statistics, update or not, train γ/β or not);
- :func:`convert`: torch's layers ↔ bnlab's ↔ FrozenBatchNorm.
"""

from bnlab.tools.convert import convert
from bnlab.tools.fold import FoldFallbackWarning, Folding, fold, fold_with_report
from bnlab.tools.freeze import freeze, from_frozen, to_frozen
from bnlab.tools.recalibrate import Recalibration, recalibrate

__all__ = [
    "FoldFallbackWarning",
    "Folding",
    "Recalibration",
    "convert",
    "fold",
    "fold_with_report",
    "freeze",
    "from_frozen",
    "recalibrate",
    "to_frozen",
]
