"""The shape of a run's records (``metrics.jsonl`` lines), checked before any summary reads them.

A run folder is a user's file: it may be edited, damaged or written by another version. Each experiment declares
the fields of each kind of record it writes (:data:`RecordSchema`); :func:`why_wrong` says what is wrong with one
record, so ``bnlab report`` names the file, the line and the field instead of failing somewhere in a summary.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from typing import Any

__all__ = ["RUNNER_RECORDS", "RecordSchema", "Spec", "anything", "boolean", "integer", "number", "numbers",
           "obj", "text", "why_wrong"]


@dataclass(frozen=True)
class Spec:
    """One field: ``why_not(value)`` says why a value does not fit (None when it does); ``required`` or not."""

    why_not: Callable[[Any], str | None]
    required: bool = True

    def optional(self) -> Spec:
        return replace(self, required=False)


RecordSchema = Mapping[str, Mapping[str, Spec]]  # record kind → field → spec


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def integer(low: int | None = None, high: int | None = None) -> Spec:
    """An integer in ``low..high`` (either bound may be open)."""
    def why(value: Any) -> str | None:
        if not _is_int(value):
            return f"must be an integer, got {value!r:.60}"
        if (low is not None and value < low) or (high is not None and value > high):
            return f"must be in {low if low is not None else '…'}..{high if high is not None else '…'}, got {value}"
        return None
    return Spec(why)


def number(nullable: bool = False) -> Spec:
    """A finite number; with ``nullable``, also null (what a NaN or infinity is written as)."""
    def why(value: Any) -> str | None:
        if value is None and nullable:
            return None
        return None if _is_number(value) else f"must be a finite number{' or null' if nullable else ''}, " \
                                              f"got {value!r:.60}"
    return Spec(why)


def numbers(length: int | None = None, nullable: bool = True) -> Spec:
    """A list of finite numbers (or nulls, with ``nullable``), of ``length`` items when given."""
    item = number(nullable).why_not

    def why(value: Any) -> str | None:
        if not isinstance(value, list):
            return f"must be a list of numbers, got {value!r:.60}"
        if length is not None and len(value) != length:
            return f"must hold {length} numbers, got {len(value)}"
        bad = next((v for v in value if item(v) is not None), None)
        return None if bad is None and all(item(v) is None for v in value) else f"holds {bad!r:.40}, not a number"
    return Spec(why)


def text(choices: Collection[str] | None = None) -> Spec:
    """A string, one of ``choices`` when given."""
    def why(value: Any) -> str | None:
        if not isinstance(value, str):
            return f"must be text, got {value!r:.60}"
        if choices is not None and value not in choices:
            return f"must be one of {', '.join(map(repr, choices))}, got {value!r:.60}"
        return None
    return Spec(why)


def boolean() -> Spec:
    return Spec(lambda v: None if isinstance(v, bool) else f"must be true or false, got {v!r:.60}")


def obj() -> Spec:
    return Spec(lambda v: None if isinstance(v, dict) else f"must be an object, got {v!r:.60}")


def anything() -> Spec:
    return Spec(lambda v: None)


def _int_list(value: Any) -> str | None:
    ok = isinstance(value, list) and all(_is_int(v) for v in value)
    return None if ok else f"must be a list of integers, got {value!r:.60}"


# The records the runner itself writes around each unit of work.
RUNNER_RECORDS: RecordSchema = {
    "plan": {"seeds": Spec(_int_list), "points": integer(1).optional()},
    "unit_start": {"point": integer(0), "seed": integer(), "unit": obj()},
    "unit_done": {"point": integer(0), "seed": integer(), "unit": obj(), "seconds": number()},
}


def why_wrong(record: Any, schema: RecordSchema) -> str | None:
    """Why ``record`` is not a record of ``schema`` (naming the field), or None when it is one.

    Every record is a JSON object with a ``kind`` the schema knows; ``point`` (the sweep point the runner adds)
    may appear on any record.
    """
    if not isinstance(record, dict):
        return f"a record must be a JSON object, got {type(record).__name__} {record!r:.60}"
    kind = record.get("kind")
    if not isinstance(kind, str):
        return "the record has no 'kind' (text)"
    fields = schema.get(kind)
    if fields is None:
        return f"unknown record kind {kind!r} (known: {', '.join(schema)})"
    if "point" in record and (why := integer(0).why_not(record["point"])):
        return f"field 'point' {why}"
    for name, spec in fields.items():
        if name not in record:
            if spec.required:
                return f"a {kind!r} record has no field {name!r}"
            continue
        why = spec.why_not(record[name])
        if why is not None:
            return f"field {name!r} of a {kind!r} record {why}"
    return None
