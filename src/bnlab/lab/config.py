"""Experiment configurations: frozen dataclasses whose fields are set from the command line and from JSON.

Field types the lab understands (checked once per configuration class by :func:`check_config_class`):

========================== ================================ ==========================================
type                       ``--set key=TEXT``               JSON (``config.json``)
========================== ================================ ==========================================
``bool``                   true/false, yes/no, on/off, 1/0  true / false
``int``, ``float``, ``str`` the number or the text          a number (an int is a float too) / a string
``Literal["a", "b"]``      one of the choices               one of the choices
an ``Enum``                a member's value or name         a member's value
``X | None``               ``none`` (or ``null``), or X     null, or X
``tuple[X, ...]``          comma-separated: ``0.01,0.1,1``  a list (``""`` is the empty tuple)
``tuple[X, Y]``            exactly that many items          a list of that many
``list[X]``                comma-separated                  a list
========================== ================================ ==========================================

``X`` inside a tuple or list is a scalar type above (bool, int, float, str, a Literal or an Enum). Any value of
the wrong type or shape is a :class:`ConfigError` saying which setting and what it takes. A configuration class
may define ``__post_init__`` to check values that are well-typed but meaningless (a negative step count); its
``ValueError`` reaches the user as a ConfigError, as one line.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypeVar, Union

__all__ = ["ConfigError", "apply_overrides", "check_config_class", "config_from_dict", "config_to_dict",
           "describe_type", "field_types", "format_value", "parse_override"]

C = TypeVar("C")

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_NONE = {"none", "null"}


class ConfigError(ValueError):
    """A setting that does not exist or a value of the wrong type or range; the message says which and why."""


@functools.cache
def field_types(config_cls: type) -> dict[str, Any]:
    """The resolved type of each field of the dataclass ``config_cls``."""
    hints = typing.get_type_hints(config_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(config_cls)}


def _is_enum(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, enum.Enum)


def _optional_inner(kind: Any) -> Any | None:
    """X for ``X | None`` / ``Optional[X]``, else None."""
    if typing.get_origin(kind) in (Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(kind)) == 2:
            return args[0]
    return None


def _sequence(kind: Any) -> tuple[type, tuple[Any, ...], bool] | None:
    """(tuple or list, element types, variable length) for a tuple/list type, else None."""
    origin = typing.get_origin(kind)
    if origin is list:
        (item,) = typing.get_args(kind)
        return list, (item,), True
    if origin is tuple:
        args = typing.get_args(kind)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple, (args[0],), True
        return tuple, args, False
    return None


def _is_scalar(kind: Any) -> bool:
    return kind in (bool, int, float, str) or _is_enum(kind) or typing.get_origin(kind) is Literal


def describe_type(kind: Any) -> str:
    """A type as the messages name it: ``int``, ``tuple[float, ...]``, ``one of 'a', 'b'``, ``int or none``."""
    inner = _optional_inner(kind)
    if inner is not None:
        return f"{describe_type(inner)} or none"
    if typing.get_origin(kind) is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(kind))
    if _is_enum(kind):
        return "one of " + ", ".join(repr(m.value) for m in kind)
    seq = _sequence(kind)
    if seq is not None:
        container, items, variable = seq
        if variable:
            return f"{container.__name__}[{describe_type(items[0])}, ...]"
        return "tuple[" + ", ".join(describe_type(i) for i in items) + "]"
    return getattr(kind, "__name__", str(kind))


def check_config_class(config_cls: type) -> None:
    """Raise TypeError if ``config_cls`` is not a frozen dataclass of field types this module can set."""
    if not dataclasses.is_dataclass(config_cls) or not config_cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        raise TypeError(f"{config_cls.__name__} must be a frozen dataclass")
    for name, kind in field_types(config_cls).items():
        inner = _optional_inner(kind)
        base = inner if inner is not None else kind
        seq = _sequence(base)
        ok = _is_scalar(base) or (seq is not None and all(_is_scalar(i) for i in seq[1]))
        if not ok:
            raise TypeError(f"{config_cls.__name__}.{name}: the lab cannot set a field of type {kind}")


def parse_override(text: str) -> tuple[str, str]:
    """``"key=value"`` → ``("key", "value")``; anything without ``=`` or with an empty key is a ConfigError."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value, got {text!r}")
    return key.strip(), value.strip()


def _scalar_from_text(key: str, raw: str, kind: Any) -> Any:
    if kind is str:
        return raw
    if kind is bool:
        if raw.lower() in _TRUE | _FALSE:
            return raw.lower() in _TRUE
        raise ConfigError(f"{key} takes true or false, got {raw!r}")
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{key} takes an integer, got {raw!r}") from None
    if kind is float:
        try:
            number = float(raw)
        except ValueError:
            raise ConfigError(f"{key} takes a number, got {raw!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{key} takes a finite number, got {raw!r}")
        return number
    choices = list(kind) if _is_enum(kind) else list(typing.get_args(kind))
    for choice in choices:
        if _is_enum(kind) and raw in (str(choice.value), choice.name):
            return choice
        if not _is_enum(kind) and raw == str(choice):
            return choice
    raise ConfigError(f"{key} takes {describe_type(kind)}, got {raw!r}")


def _from_text(key: str, raw: str, kind: Any) -> Any:
    """The command-line text ``raw`` as a value of the field type ``kind``."""
    inner = _optional_inner(kind)
    if inner is not None:
        return None if raw.lower() in _NONE else _from_text(key, raw, inner)
    seq = _sequence(kind)
    if seq is None:
        return _scalar_from_text(key, raw, kind)
    container, items, variable = seq
    parts = [p.strip() for p in raw.split(",")] if raw.strip() else []
    if not variable and len(parts) != len(items):
        raise ConfigError(f"{key} takes {len(items)} comma-separated values ({describe_type(kind)}), got {raw!r}")
    kinds = items * len(parts) if variable else items
    return container(_scalar_from_text(key, p, k) for p, k in zip(parts, kinds, strict=True))


def _scalar_from_json(key: str, value: Any, kind: Any) -> Any:
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigError(f"{key} takes a finite number, got {value!r}")
        return float(value)
    if kind in (bool, int, str):
        if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            return value
    elif _is_enum(kind):
        for member in kind:
            if type(value) is type(member.value) and value == member.value:
                return member
            if value is member:
                return member
    elif typing.get_origin(kind) is Literal:
        for choice in typing.get_args(kind):
            if type(value) is type(choice) and value == choice:  # True is not 1
                return choice
    raise ConfigError(f"{key} takes a value of type {describe_type(kind)}, got {value!r}")


def _from_json(key: str, value: Any, kind: Any) -> Any:
    """A JSON (or Python) value checked against, and converted to, the field type ``kind``."""
    inner = _optional_inner(kind)
    if inner is not None:
        return None if value is None else _from_json(key, value, inner)
    seq = _sequence(kind)
    if seq is None:
        return _scalar_from_json(key, value, kind)
    container, items, variable = seq
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{key} takes a value of type {describe_type(kind)} (a list), got {value!r}")
    if not variable and len(value) != len(items):
        raise ConfigError(f"{key} takes {len(items)} values ({describe_type(kind)}), got {value!r}")
    kinds = items * len(value) if variable else items
    return container(_scalar_from_json(key, v, k) for v, k in zip(value, kinds, strict=True))


def apply_overrides(config: C, overrides: Mapping[str, Any] | Iterable[str]) -> C:
    """A copy of the frozen dataclass ``config`` with settings replaced.

    ``overrides`` is either a mapping of typed values (JSON rules: checked to be of the field's type, a list for
    a tuple, an int for a float) or ``"key=value"`` strings from the command line (converted as the table in the
    module docstring says). The new configuration's own checks run too. Raises :class:`ConfigError` for an
    unknown key, a value of the wrong type or shape, or a value the configuration rejects.
    """
    types_ = field_types(type(config))  # type: ignore[arg-type]  # a class is hashable
    if isinstance(overrides, Mapping):
        pairs = [(k, v, False) for k, v in overrides.items()]
    else:
        pairs = [(*parse_override(t), True) for t in overrides]
    changes: dict[str, Any] = {}
    for key, value, text in pairs:
        if key not in types_:
            raise ConfigError(f"unknown setting {key!r} for {type(config).__name__}; known: {', '.join(types_)}")
        changes[key] = _from_text(key, value, types_[key]) if text else _from_json(key, value, types_[key])
    try:
        return dataclasses.replace(config, **changes)  # type: ignore[type-var]
    except ValueError as err:
        raise ConfigError(str(err)) from None


def config_from_dict(config_cls: type[C], values: Any) -> C:
    """Rebuild a configuration from its JSON form (:func:`config_to_dict`), checking keys, types and shapes."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"the settings of {config_cls.__name__} must be an object, got {values!r}")
    return apply_overrides(config_cls(), values)


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def config_to_dict(config: Any) -> dict[str, Any]:
    """The JSON form of a configuration: tuples as lists, enums as their values (what :func:`config_from_dict`
    reads back)."""
    return {f.name: _jsonable(getattr(config, f.name)) for f in dataclasses.fields(config)}


def format_value(value: Any) -> str:
    """A setting's value as ``--set`` takes it back: ``0.01,0.1,1`` for a tuple, ``none``, an enum's value."""
    if value is None:
        return "none"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(format_value(v) for v in value)
    return str(value)
