"""The doctor's report: findings (severity, layer, evidence, fix), grouped by kind; the measured effect; text and JSON.

The text opens with a summary ("3 problems: ...; worst: ..."), then gives one entry per kind of problem: its
title, a table of the layers it concerns (name, the number that matters, the evidence in one line) and the fix,
said once. The HTML page is in :mod:`bnlab.tools.diagnosis.page`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from bnlab.tools.diagnosis.kinds import KINDS, Kind

SEVERITIES = ("error", "warning", "info")  # most severe first
#: Rows of one kind shown in the terminal text; the JSON and the HTML page have them all.
TEXT_ROWS = 20

Evidence = dict[str, float | int | str]


@dataclass(frozen=True)
class Finding:
    """One problem: what (``code``), how bad, where, the numbers that show it, and what to do.

    ``value`` is the number that matters for this kind (``KINDS[code].measure`` in the evidence) and ``detail`` the
    evidence in one line, as the grouped table shows them.
    """

    code: str  # e.g. "stats_mismatch"; the list is in bnlab.tools.diagnosis.kinds.KINDS
    severity: str  # "error", "warning" or "info"
    layer: str  # qualified module name; "" for the model as a whole
    message: str
    evidence: Evidence
    fix: str
    detail: str = ""

    @property
    def value(self) -> float | int | str | None:
        return self.evidence.get(KINDS[self.code].measure) if self.code in KINDS else None


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
class LayerGap:
    """The train/eval gap of one batch-norm layer on this data: how far its eval-mode output is from the correctly
    normalized input, in standard deviations (RMS over a channel; mean and max over channels)."""

    layer: str
    error_mean: float
    error_max: float


@dataclass(frozen=True)
class Group:
    """The findings of one kind, worst first."""

    code: str
    kind: Kind
    severity: str  # the worst of its findings'
    findings: tuple[Finding, ...]

    @property
    def layers(self) -> int:
        return len(self.findings)


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
    gaps: tuple[LayerGap, ...] = field(default=())  # every layer the data reached, in model order

    @property
    def healthy(self) -> bool:
        """No errors and no warnings (info findings are advice)."""
        return not any(f.severity in ("error", "warning") for f in self.findings)

    def counts(self) -> dict[str, int]:
        return {s: sum(f.severity == s for f in self.findings) for s in SEVERITIES}

    def groups(self) -> list[Group]:
        """One group per kind of finding: most severe first, then the kind touching most layers."""
        order = {s: i for i, s in enumerate(SEVERITIES)}
        by_code: dict[str, list[Finding]] = {}
        for f in self.findings:
            by_code.setdefault(f.code, []).append(f)
        groups = []
        for code, found in by_code.items():
            kind = KINDS[code]
            found.sort(key=lambda f: (order[f.severity], _rank(f.value, kind)))
            groups.append(Group(code, kind, found[0].severity, tuple(found)))
        groups.sort(key=lambda g: (order[g.severity], -g.layers))
        return groups

    def summary(self) -> str:
        """One line: how many problems of which kinds, and the worst one."""
        if self.layers == 0:
            return "the model has no batch-norm layer: there is nothing for the doctor to check"
        groups = self.groups()
        if not groups:
            return "no findings: batch norm looks healthy on this data"
        problems = [g for g in groups if g.severity != "info"]
        advice = [g for g in groups if g.severity == "info"]
        parts = [f"{g.kind.title} ({_layers(g)}, {g.severity})" for g in problems]
        text = f"{len(problems)} problem(s): {', '.join(parts)}" if problems else "no problems"
        if advice:
            text += f"; advice: {', '.join(f'{g.kind.title} ({_layers(g)})' for g in advice)}"
        worst = groups[0].findings[0]
        where = f"layer {worst.layer!r}" if worst.layer else "the model"
        return f"{text}; worst: {where}, {groups[0].kind.title}: {groups[0].kind.label} {_fmt(worst.value)}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["findings"] = [{**asdict(f), "value": f.value} for f in self.findings]
        data["counts"] = self.counts()
        data["healthy"] = self.healthy
        data["summary"] = self.summary()
        return _finite(data)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_html(self) -> str:
        """A self-contained HTML page: the summary, the grouped tables and charts (see :mod:`.page`)."""
        from bnlab.tools.diagnosis.page import render

        return render(self)

    def to_text(self) -> str:
        what = f"{self.layers} batch-norm layer(s)" if self.layers else "no batch-norm layer"
        lines = [f"bnlab doctor: {self.model} with {what}, checked on {self.batches} batch(es) ({self.samples} "
                 f"samples)", self.summary()]
        for group in self.groups():
            lines += ["", *_group_text(group)]
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


def _group_text(group: Group) -> list[str]:
    mixed = len({f.severity for f in group.findings}) > 1
    lines = [f"{group.severity.upper()}: {group.kind.title} ({_layers(group)})"]
    rows = [(f.layer or "(model)", (f"{f.severity} " if mixed else "") + _fmt(f.value), f.detail or f.message)
            for f in group.findings]
    shown = rows[:TEXT_ROWS]
    width = max(len("layer"), *(len(r[0]) for r in shown))
    label = max(len(group.kind.label), *(len(r[1]) for r in shown))
    lines.append(f"  {'layer':{width}s}  {group.kind.label:>{label}s}  evidence")
    lines += [f"  {name:{width}s}  {value:>{label}s}  {detail}" for name, value, detail in shown]
    if len(rows) > len(shown):
        lines.append(f"  ... and {len(rows) - len(shown)} more layer(s) (--json or --html for all)")
    fixes = list(dict.fromkeys(f.fix for f in group.findings))
    lines.append(f"  fix: {fixes[0] if len(fixes) == 1 else group.kind.fix}")
    return lines


def _layers(group: Group) -> str:
    named = [f for f in group.findings if f.layer]
    if not named:
        return "the model"
    return f"{len(named)} layer{'s' if len(named) > 1 else ''}"


def _rank(value: Any, kind: Kind) -> float:
    if not isinstance(value, int | float) or value != value:
        return 0.0
    return -float(value) if kind.higher_is_worse else float(value)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "-" if value is None else str(value)


def _finite(value: Any) -> Any:
    # JSON has no NaN or infinity; they become strings so that strict parsers accept the report.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
