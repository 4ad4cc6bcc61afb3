"""Typed results: Claim / Table / Result round-trip through result.json, and a file of the wrong shape names its
field; the record schemas say what is wrong with a record."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bnlab.lab import schema
from bnlab.lab.result import Claim, PointResult, Result, ResultShapeError, Table

RESULT = Result("toy", "A toy", [Claim("c1", "reproduced", "e1"), Claim("c2", "reported", "e2")],
                [Table("t", ["a", "b"], [[1, "x"]], note="n")], summary={"k": 1.5}, complete=False,
                incomplete="seed 1: never started",
                points=[PointResult({"lr": 0.1}, Result("toy", "p", [Claim("c", "not judged", "why")]))])


def test_round_trip() -> None:
    assert Result.from_json(json.loads(json.dumps(RESULT.to_json()))) == RESULT


def test_verdict_counts_and_line() -> None:
    assert RESULT.verdict_counts() == {"reproduced": 1, "not reproduced": 0, "not judged": 1, "reported": 1}
    assert RESULT.verdict_line() == "1 of 1 claim reproduced"
    assert Result("t", "t", [Claim("c", "not judged", "")]).verdict_line() == "no claim judged"


@pytest.mark.parametrize(("damage", "message"), [
    pytest.param({"claims": "none"}, "field 'claims' of result.json must be of type list", id="claims-text"),
    pytest.param({"claims": [{"claim": "c", "verdict": "yes", "evidence": ""}]}, "must be one of reproduced",
                 id="unknown-verdict"),
    pytest.param({"claims": [[1]]}, "claim 0 of result.json must be an object", id="claim-a-list"),
    pytest.param({"tables": [{"title": "t", "columns": ["a"], "rows": [[1, 2]]}]}, "row 0 has 2 cells for 1",
                 id="ragged-table"),
    pytest.param({"summary": []}, "field 'summary' of result.json must be of type dict", id="summary-a-list"),
    pytest.param({"incomplete": 3}, "'incomplete' of result.json must be text or null", id="incomplete-a-number"),
    pytest.param({"points": [{"result": {}}]}, "point 0 of result.json has no field 'settings'", id="point-bare"),
])
def test_wrong_shapes_name_the_field(damage: dict[str, Any], message: str) -> None:
    with pytest.raises(ResultShapeError, match=message):
        Result.from_json({**RESULT.to_json(), **damage})


def test_typed_pieces_check_themselves() -> None:
    with pytest.raises(ValueError, match="verdict must be one of"):
        Claim("c", "maybe", "")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="row 1 has 1 cells"):
        Table("t", ["a", "b"], [[1, 2], [3]])


SCHEMA: schema.RecordSchema = {"eval": {"step": schema.integer(0, 100), "acc": schema.number(nullable=True),
                                        "model": schema.text(("a", "b")), "p": schema.numbers(length=2),
                                        "done": schema.boolean().optional()}}
GOOD = {"kind": "eval", "step": 5, "acc": None, "model": "a", "p": [1.0, None]}


@pytest.mark.parametrize(("record", "message"), [
    pytest.param(GOOD, None, id="good"),
    pytest.param([1, 2, 3], "a record must be a JSON object, got list", id="a-list"),
    pytest.param({"step": 1}, "no 'kind'", id="no-kind"),
    pytest.param({**GOOD, "kind": "train"}, "unknown record kind 'train'", id="unknown-kind"),
    pytest.param({k: v for k, v in GOOD.items() if k != "step"}, "has no field 'step'", id="missing-field"),
    pytest.param({**GOOD, "step": "5"}, "field 'step' of a 'eval' record must be an integer", id="step-text"),
    pytest.param({**GOOD, "step": 5.0}, "must be an integer", id="step-float"),
    pytest.param({**GOOD, "step": 10**30}, "must be in 0..100", id="step-huge"),
    pytest.param({**GOOD, "acc": float("inf")}, "must be a finite number or null", id="infinite"),
    pytest.param({**GOOD, "model": "c"}, "must be one of 'a', 'b'", id="unknown-choice"),
    pytest.param({**GOOD, "p": [1.0]}, "must hold 2 numbers", id="short-list"),
    pytest.param({**GOOD, "p": [1.0, "x"]}, "holds 'x', not a number", id="text-in-list"),
    pytest.param({**GOOD, "done": 1}, "must be true or false", id="optional-wrong"),
    pytest.param({**GOOD, "point": -1}, "field 'point' must be in 0..", id="bad-point"),
])
def test_why_wrong(record: Any, message: str | None) -> None:
    why = schema.why_wrong(record, SCHEMA)
    assert why is None if message is None else (why is not None and message in why)
