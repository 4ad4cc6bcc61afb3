"""``--set key=value`` overrides: typed conversion, and each error a user can make."""

from __future__ import annotations

import dataclasses

import pytest

from bnlab.lab.config import ConfigError, apply_overrides, config_from_dict, parse_override
from bnlab.lab.experiments.fig1 import Fig1Config

GOOD = [
    pytest.param(["steps=1200"], {"steps": 1200}, id="int"),
    pytest.param(["lr=0.25"], {"lr": 0.25}, id="float"),
    pytest.param(["lr=1"], {"lr": 1.0}, id="int-text-for-float"),
    pytest.param(["dataset=digits", "pixels=centered"], {"dataset": "digits", "pixels": "centered"}, id="two-str"),
    pytest.param([" steps = 7 "], {"steps": 7}, id="spaces"),
    pytest.param(["steps=5", "steps=9"], {"steps": 9}, id="last-wins"),
]


@pytest.mark.parametrize(("overrides", "expected"), GOOD)
def test_overrides_apply(overrides: list[str], expected: dict[str, object]) -> None:
    base = Fig1Config()
    config = apply_overrides(base, overrides)
    for key, value in expected.items():
        assert getattr(config, key) == value and type(getattr(config, key)) is type(value)
    assert base == Fig1Config()  # the original is untouched (and frozen)


BAD = [
    pytest.param(["stepz=10"], "unknown setting 'stepz'", id="unknown-key"),
    pytest.param(["steps=ten"], "steps takes an integer, got 'ten'", id="not-an-int"),
    pytest.param(["steps=1.5"], "steps takes an integer", id="float-for-int"),
    pytest.param(["lr=fast"], "lr takes a number", id="not-a-number"),
    pytest.param(["steps"], "--set expects key=value", id="no-equals"),
    pytest.param(["=3"], "--set expects key=value", id="empty-key"),
    pytest.param(["steps=0"], "steps must be at least 1", id="zero-steps"),
    pytest.param(["pixels=raw"], "pixels must be one of unit, centered, standardized", id="bad-choice"),
    pytest.param(["dataset=imagenet"], "dataset must be one of", id="unknown-dataset"),
    pytest.param(["unit=100"], "unit must be in 0..99", id="unit-out-of-range"),
    pytest.param(["lr=-0.1"], "must be positive", id="negative-lr"),
    pytest.param(["lr=inf"], "lr takes a finite number, got 'inf'", id="infinite-lr"),
    pytest.param(["init_std=inf"], "init_std takes a finite number", id="infinite-init-std"),
    pytest.param(["lr=nan"], "lr takes a finite number", id="nan-lr"),
    pytest.param(["backend=cudnn"], "unknown batch-norm backend 'cudnn'", id="unknown-backend"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD)
def test_bad_overrides_say_what_is_wrong(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        apply_overrides(Fig1Config(), overrides)


def test_typed_mapping_is_checked() -> None:
    assert apply_overrides(Fig1Config(), {"lr": 2}).lr == 2.0
    with pytest.raises(ConfigError, match="steps takes a value of type int"):
        apply_overrides(Fig1Config(), {"steps": True})
    with pytest.raises(ConfigError, match="steps takes a value of type int"):
        apply_overrides(Fig1Config(), {"steps": 2.0})


def test_bool_fields() -> None:
    @dataclasses.dataclass(frozen=True)
    class Flags:
        on: bool = False

    assert apply_overrides(Flags(), ["on=yes"]).on is True
    assert apply_overrides(Flags(), ["on=False"]).on is False
    with pytest.raises(ConfigError, match="on takes true or false"):
        apply_overrides(Flags(), ["on=maybe"])


def test_round_trip_through_json_form() -> None:
    config = apply_overrides(Fig1Config(), ["steps=123", "pixels=standardized"])
    assert config_from_dict(Fig1Config, dataclasses.asdict(config)) == config


def test_parse_override() -> None:
    assert parse_override("a=b=c") == ("a", "b=c")
