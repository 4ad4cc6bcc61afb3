"""The BN doctor: findings about a model's batch norm on some data, each with evidence and a fix.

``bnlab.tools.doctor(model, batches, labels=...)`` returns a :class:`Report`; ``str(report)`` is text for the
terminal, ``report.to_json()`` is JSON. The findings and their thresholds are in :mod:`bnlab.tools.diagnosis.checks`.
"""

from bnlab.tools.diagnosis.checks import CODES
from bnlab.tools.diagnosis.diagnose import doctor
from bnlab.tools.diagnosis.report import Effect, Finding, Report, Score

__all__ = ["CODES", "Effect", "Finding", "Report", "Score", "doctor"]
