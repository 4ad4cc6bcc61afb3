"""Model-level tools over batch-norm modules: functions that return a new model or a report, except
:func:`recalibrate`, which updates the given model's running statistics in place.

- :func:`fold`: fold batch norm into the neighbouring conv/linear weights for inference (:func:`fold_with_report`
  says what was folded; :func:`fold_after` and :func:`fold_before` fold one pair by hand);
- :func:`recalibrate`: recompute running statistics from data (Algorithm 2), in place;
- :func:`freeze`: per-layer switches (batch or running statistics, update or not, train γ/β or not);
- :func:`convert`: torch's layers ↔ bnlab's ↔ FrozenBatchNorm;
- :func:`summary`: a Keras-style summary (layers, output shapes, trainable and non-trainable parameters);
- :func:`doctor`: findings about a model's batch norm on some data, with evidence and fixes (:mod:`.diagnosis`).
"""

from bnlab.tools.convert import convert
from bnlab.tools.diagnosis import Finding, Report, doctor
from bnlab.tools.fold import (
    FoldAssumptionWarning,
    FoldedBatchNorm,
    FoldFallbackWarning,
    Folding,
    fold,
    fold_after,
    fold_before,
    fold_with_report,
)
from bnlab.tools.freeze import freeze, from_frozen, to_frozen
from bnlab.tools.recalibrate import Recalibration, recalibrate
from bnlab.tools.summary import LayerSummary, ModelSummary, summary

__all__ = [
    "Finding",
    "FoldAssumptionWarning",
    "FoldFallbackWarning",
    "FoldedBatchNorm",
    "Folding",
    "LayerSummary",
    "ModelSummary",
    "Recalibration",
    "Report",
    "convert",
    "doctor",
    "fold",
    "fold_after",
    "fold_before",
    "fold_with_report",
    "freeze",
    "from_frozen",
    "recalibrate",
    "summary",
    "to_frozen",
]
