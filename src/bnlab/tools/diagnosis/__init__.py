"""The BN doctor: findings about a model's batch norm on some data, each with evidence and a fix.

``bnlab.tools.doctor(model, batches, labels=...)`` returns a :class:`Report`; ``str(report)`` is text for the
terminal (a summary, then one entry per kind of problem), ``report.to_json()`` is JSON and ``report.to_html()`` a
self-contained page with charts. The findings and their thresholds are in :mod:`bnlab.tools.diagnosis.checks`, the
kinds (title, the number that matters, the fix) in :mod:`bnlab.tools.diagnosis.kinds`.
"""

from bnlab.tools.diagnosis.diagnose import doctor
from bnlab.tools.diagnosis.kinds import CODES, KINDS
from bnlab.tools.diagnosis.report import Effect, Finding, Group, LayerGap, Report, Score

__all__ = ["CODES", "KINDS", "Effect", "Finding", "Group", "LayerGap", "Report", "Score", "doctor"]
