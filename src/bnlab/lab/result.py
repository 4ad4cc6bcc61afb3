"""What an experiment's ``summarize`` returns and ``result.json`` holds: typed claims, tables and numbers.

A :class:`Result` is written with :meth:`Result.to_json` and read back with :meth:`Result.from_json`, which checks
the shape and says which field is wrong; the report, the runs index and the tour read results only through it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

__all__ = ["JUDGED", "VERDICTS", "Claim", "PointResult", "Result", "ResultShapeError", "Table", "Verdict", "judged"]

Verdict = Literal["reproduced", "not reproduced", "not judged", "reported"]
VERDICTS: tuple[str, ...] = get_args(Verdict)
# "reported": a measurement the paper's text makes, shown with this run's numbers but without a threshold
# (a "report, do not require" item of docs/experiments.md); it counts neither way.
JUDGED = ("reproduced", "not reproduced")


def judged(holds: bool) -> Verdict:
    """"reproduced" when the claim holds by this run's numbers, else "not reproduced"."""
    return "reproduced" if holds else "not reproduced"


class ResultShapeError(ValueError):
    """A result.json whose content is not a Result; the message names the field."""


def _need(data: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(data, Mapping):
        raise ResultShapeError(f"{where} must be an object, got {type(data).__name__}")
    if key not in data:
        raise ResultShapeError(f"{where} has no field {key!r}")
    value = data[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ResultShapeError(f"field {key!r} of {where} must be of type {names}, got {value!r:.80}")
    return value


@dataclass(frozen=True)
class Claim:
    """One claim of the paper and what this run says about it.

    ``claim`` states it as the report shows it; ``verdict`` is one of :data:`VERDICTS`; ``evidence`` gives the
    run's own numbers and the threshold they were held to (or why the claim could not be judged).
    """

    claim: str
    verdict: Verdict
    evidence: str

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, got {self.verdict!r}")

    def to_json(self) -> dict[str, Any]:
        return {"claim": self.claim, "verdict": self.verdict, "evidence": self.evidence}

    @classmethod
    def from_json(cls, data: Any, where: str = "a claim") -> Claim:
        verdict = _need(data, "verdict", str, where)
        if verdict not in VERDICTS:
            raise ResultShapeError(f"field 'verdict' of {where} must be one of {', '.join(VERDICTS)}, got "
                                   f"{verdict!r}")
        return cls(_need(data, "claim", str, where), verdict, _need(data, "evidence", str, where))


@dataclass(frozen=True)
class Table:
    """A table of the report: ``rows`` of cells (text or numbers), as many per row as ``columns``."""

    title: str
    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    note: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "columns", list(self.columns))  # any sequence in, lists out: equal after JSON
        object.__setattr__(self, "rows", [list(r) for r in self.rows])
        for i, row in enumerate(self.rows):
            if len(row) != len(self.columns):
                raise ValueError(f"table {self.title!r}: row {i} has {len(row)} cells for {len(self.columns)} "
                                 f"columns")

    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, "columns": list(self.columns), "rows": [list(r) for r in self.rows],
                "note": self.note}

    @classmethod
    def from_json(cls, data: Any, where: str = "a table") -> Table:
        columns = _need(data, "columns", list, where)
        rows = _need(data, "rows", list, where)
        if not all(isinstance(r, list) for r in rows):
            raise ResultShapeError(f"field 'rows' of {where} must be a list of lists")
        note = data.get("note", "")
        try:
            return cls(_need(data, "title", str, where), [str(c) for c in columns], rows,
                       note if isinstance(note, str) else "")
        except ValueError as err:
            raise ResultShapeError(str(err)) from None


@dataclass(frozen=True)
class PointResult:
    """One point of a sweep: the settings it changed and its own result."""

    settings: Mapping[str, Any]
    result: Result

    def to_json(self) -> dict[str, Any]:
        return {"settings": dict(self.settings), "result": self.result.to_json()}


@dataclass(frozen=True)
class Result:
    """An experiment's result: title, claims with verdicts, tables, and free-form summary numbers.

    ``complete`` is False when some planned training did not finish (interrupted, diverged); ``incomplete`` then
    says what is missing. A sweep's result has one :class:`PointResult` per point in ``points``, and its own
    claims are empty (each point carries its own).
    """

    experiment: str
    title: str
    claims: Sequence[Claim]
    tables: Sequence[Table] = ()
    summary: Mapping[str, Any] = field(default_factory=dict)
    complete: bool = True
    incomplete: str | None = None
    points: Sequence[PointResult] = ()

    def __post_init__(self) -> None:
        for name in ("claims", "tables", "points"):  # any sequence in, lists out: equal after a JSON round trip
            object.__setattr__(self, name, list(getattr(self, name)))
        object.__setattr__(self, "summary", dict(self.summary))

    def verdict_counts(self) -> dict[str, int]:
        """How many claims have each verdict (over the points, for a sweep)."""
        counts = dict.fromkeys(VERDICTS, 0)
        for claim in self.all_claims():
            counts[claim.verdict] += 1
        return counts

    def all_claims(self) -> list[Claim]:
        return [*self.claims, *(c for p in self.points for c in p.result.claims)]

    def verdict_line(self) -> str:
        """"2 of 3 claims reproduced", or why none was judged."""
        counts = self.verdict_counts()
        judged = counts["reproduced"] + counts["not reproduced"]
        if not judged:
            return "no claim judged"
        return f"{counts['reproduced']} of {judged} claim{'s' if judged > 1 else ''} reproduced"

    def to_json(self) -> dict[str, Any]:
        return {"experiment": self.experiment, "title": self.title, "complete": self.complete,
                "incomplete": self.incomplete, "claims": [c.to_json() for c in self.claims],
                "tables": [t.to_json() for t in self.tables], "summary": dict(self.summary),
                "points": [p.to_json() for p in self.points]}

    @classmethod
    def from_json(cls, data: Any, where: str = "result.json") -> Result:
        """A Result from its JSON form; :class:`ResultShapeError` names the first field of the wrong shape."""
        claims = _need(data, "claims", list, where)
        tables = data.get("tables", [])
        points = data.get("points", [])
        summary = data.get("summary", {})
        incomplete = data.get("incomplete")
        for key, value, kind in (("tables", tables, list), ("points", points, list), ("summary", summary, dict),
                                 ("complete", data.get("complete", True), bool)):
            if not isinstance(value, kind):
                raise ResultShapeError(f"field {key!r} of {where} must be of type {kind.__name__}")
        if incomplete is not None and not isinstance(incomplete, str):
            raise ResultShapeError(f"field 'incomplete' of {where} must be text or null")
        parsed_points = []
        for i, p in enumerate(points):
            settings = _need(p, "settings", dict, f"point {i} of {where}")
            parsed_points.append(PointResult(settings, cls.from_json(p.get("result"), f"point {i} of {where}")))
        return cls(
            experiment=_need(data, "experiment", str, where), title=_need(data, "title", str, where),
            claims=[Claim.from_json(c, f"claim {i} of {where}") for i, c in enumerate(claims)],
            tables=[Table.from_json(t, f"table {i} of {where}") for i, t in enumerate(tables)],
            summary=summary, complete=data.get("complete", True), incomplete=incomplete, points=parsed_points)
