"""Configurations: ``--set key=value`` and config.json for every field type the lab understands, and each error."""

from __future__ import annotations

import dataclasses
import enum
import json
import re
from typing import Literal, Optional

import pytest

from bnlab.lab.config import (
    ConfigError,
    apply_overrides,
    check_config_class,
    config_from_dict,
    config_to_dict,
    format_value,
    parse_override,
)
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


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass(frozen=True)
class Typed:
    """Every field type the lab understands."""

    lrs: tuple[float, ...] = (0.01, 0.1)
    pair: tuple[int, str] = (1, "a")
    depths: list[int] = dataclasses.field(default_factory=lambda: [2, 4])
    act: Literal["relu", "tanh"] = "relu"
    acts: tuple[Literal["relu", "tanh"], ...] = ("relu",)
    limit: int | None = None
    ratio: Optional[float] = 0.5  # noqa: UP045 (the older spelling must work too)
    color: Color = Color.RED
    flags: tuple[bool, ...] = ()


TEXT = [
    pytest.param("lrs=0.01,0.1,1", "lrs", (0.01, 0.1, 1.0), id="tuple-of-floats"),
    pytest.param("lrs=", "lrs", (), id="empty-tuple"),
    pytest.param("lrs= 3 , 4 ", "lrs", (3.0, 4.0), id="tuple-with-spaces"),
    pytest.param("pair=7,b", "pair", (7, "b"), id="fixed-tuple"),
    pytest.param("depths=8,16", "depths", [8, 16], id="list"),
    pytest.param("act=tanh", "act", "tanh", id="literal"),
    pytest.param("acts=tanh,relu", "acts", ("tanh", "relu"), id="tuple-of-literals"),
    pytest.param("limit=none", "limit", None, id="optional-none"),
    pytest.param("limit=12", "limit", 12, id="optional-int"),
    pytest.param("ratio=null", "ratio", None, id="old-optional"),
    pytest.param("color=blue", "color", Color.BLUE, id="enum-by-value"),
    pytest.param("color=RED", "color", Color.RED, id="enum-by-name"),
    pytest.param("flags=yes,off", "flags", (True, False), id="tuple-of-bools"),
]


@pytest.mark.parametrize(("text", "key", "expected"), TEXT)
def test_typed_fields_from_the_command_line(text: str, key: str, expected: object) -> None:
    config = apply_overrides(Typed(), [text])
    assert getattr(config, key) == expected and type(getattr(config, key)) is type(expected)


TEXT_ERRORS = [
    pytest.param("lrs=0.1,fast", "lrs takes a number, got 'fast'", id="bad-item"),
    pytest.param("lrs=0.1,inf", "lrs takes a finite number", id="infinite-item"),
    pytest.param("pair=1", "pair takes 2 comma-separated values", id="fixed-tuple-short"),
    pytest.param("act=gelu", "act takes one of 'relu', 'tanh', got 'gelu'", id="literal-choice"),
    pytest.param("acts=relu,gelu", "acts takes one of 'relu', 'tanh'", id="literal-item"),
    pytest.param("limit=lots", "limit takes an integer", id="optional-bad"),
    pytest.param("color=green", "color takes one of 'red', 'blue'", id="enum-choice"),
]


@pytest.mark.parametrize(("text", "message"), TEXT_ERRORS)
def test_typed_fields_refuse_bad_text(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        apply_overrides(Typed(), [text])


def test_typed_fields_round_trip_through_json() -> None:
    config = apply_overrides(Typed(), ["lrs=1,2", "pair=3,c", "limit=5", "color=blue", "acts=tanh", "flags=true"])
    as_json = json.loads(json.dumps(config_to_dict(config)))
    assert as_json["lrs"] == [1.0, 2.0] and as_json["color"] == "blue"
    assert config_from_dict(Typed, as_json) == config


JSON_ERRORS = [
    pytest.param({"lrs": "0.1,1"}, "lrs takes a value of type tuple[float, ...] (a list)", id="text-for-tuple"),
    pytest.param({"lrs": [0.1, "x"]}, "lrs takes a value of type float, got 'x'", id="bad-item"),
    pytest.param({"pair": [1, "a", 2]}, "pair takes 2 values", id="fixed-tuple-long"),
    pytest.param({"act": "gelu"}, "act takes a value of type one of 'relu', 'tanh'", id="literal"),
    pytest.param({"limit": 1.5}, "limit takes a value of type int", id="optional-wrong-type"),
    pytest.param({"color": "green"}, "color takes a value of type one of 'red', 'blue'", id="enum"),
    pytest.param({"flags": [1]}, "flags takes a value of type bool", id="int-for-bool"),
    pytest.param({"depths": [True]}, "depths takes a value of type int", id="bool-for-int"),
]


@pytest.mark.parametrize(("values", "message"), JSON_ERRORS)
def test_json_of_the_wrong_type_is_a_config_error(values: dict[str, object], message: str) -> None:
    """config.json is read back strictly: a mismatch is a ConfigError (bnlab report makes it one line)."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_from_dict(Typed, values)


def test_settings_must_be_an_object() -> None:
    with pytest.raises(ConfigError, match="must be an object"):
        config_from_dict(Typed, [1, 2])


def test_unsupported_field_types_are_refused_at_registration() -> None:
    @dataclasses.dataclass(frozen=True)
    class Nested:
        table: dict[str, int] = dataclasses.field(default_factory=dict)

    @dataclasses.dataclass
    class NotFrozen:
        steps: int = 1

    with pytest.raises(TypeError, match="cannot set a field of type"):
        check_config_class(Nested)
    with pytest.raises(TypeError, match="frozen dataclass"):
        check_config_class(NotFrozen)
    check_config_class(Typed)


def test_format_value_is_what_set_takes_back() -> None:
    config = Typed()
    for key, value in config_to_dict(config).items():
        again = apply_overrides(config, [f"{key}={format_value(getattr(config, key))}"])
        assert getattr(again, key) == getattr(config, key), (key, value)
