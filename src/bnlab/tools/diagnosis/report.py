"""The doctor's report: findings (severity, layer, evidence, fix), the measured effect, text and JSON."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

SEVERITIES = ("error", "warning", "info")  # most severe first

Evidence = dict[str, float | int | str]


@dataclass(frozen=True)
class Finding:
    """One problem: what (``code``), how bad, where, the numbers that show it, and what to do."""

    code: str  # e.g. "stats_mismatch"; the list is in bnlab.tools.diagnosis.checks.CODES
    severity: str  # "error", "warning" or "info"
    layer: str  # qualified module name; "" for the model as a whole
    message: str
    evidence: Evidence
    fix: str


@dataclass(frozen=True)
class Score:
    """How the model does in one configuration, on the doctor's batches."""

    mode: str  # "train", "eval" or "recalibrated"
    description: str
    loss: float  # cross-entropy for classification (integer labels and 2-D outputs), else mean squared error
    accuracy: float | None  # fraction correct, classification only


@dataclass(frozen=True)
class Effect:
    """The train/eval gap measured: the same batches in train mode, eval mode and eval after recalibration."""

    samples: int
    loss_name: str
    scores: tuple[Score, ...]


@dataclass(frozen=True)
class Report:
    """Everything the doctor found. ``str(report)`` is the terminal text; :meth:`to_json` the JSON."""

    model: str  # class name of the model examined
    layers: int  # batch-norm layers in the model (trainable and frozen)
    batches: int
    samples: int
    findings: tuple[Finding, ...]
    effect: Effect | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def healthy(self) -> bool:
        """No errors and no warnings (info findings are advice)."""
        return not any(f.severity in ("error", "warning") for f in self.findings)

    def counts(self) -> dict[str, int]:
        return {s: sum(f.severity == s for f in self.findings) for s in SEVERITIES}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["findings"] = [asdict(f) for f in self.findings]
        data["counts"] = self.counts()
        data["healthy"] = self.healthy
        return _finite(data)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_text(self) -> str:
        lines = [f"bnlab doctor: {self.model} with {self.layers} batch-norm layer(s), checked on {self.batches} "
                 f"batch(es) ({self.samples} samples)"]
        counts = self.counts()
        if not self.findings:
            lines.append("no findings: batch norm looks healthy on this data")
        else:
            lines.append(", ".join(f"{counts[s]} {s}(s)" for s in SEVERITIES if counts[s]))
        for f in self.findings:
            where = f"layer {f.layer!r}" if f.layer else "the model"
            lines.append("")
            lines.append(f"{f.severity.upper():8s}{f.code} at {where}: {f.message}")
            lines.append("        evidence: " + ", ".join(f"{k}={_fmt(v)}" for k, v in f.evidence.items()))
            lines.append(f"        fix: {f.fix}")
        if self.effect is not None:
            lines.append("")
            lines.append(f"measured effect on {self.effect.samples} samples ({self.effect.loss_name} loss):")
            for s in self.effect.scores:
                acc = "" if s.accuracy is None else f"accuracy {s.accuracy:7.2%}   "
                lines.append(f"  {s.description:46s} {acc}loss {s.loss:.4f}")
        for note in self.notes:
            lines.append(f"note: {note}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()


def _fmt(value: float | int | str) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _finite(value: Any) -> Any:
    # JSON has no NaN or infinity; they become strings so that strict parsers accept the report.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
