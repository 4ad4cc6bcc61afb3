"""Experiment configurations: frozen dataclasses, and ``--set key=value`` overrides type-checked against them.

A configuration class may define ``__post_init__`` to check values that are well-typed but meaningless (a
negative step count, an unknown data set); its ``ValueError`` reaches the user as a one-line error.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

__all__ = ["ConfigError", "apply_overrides", "config_from_dict", "parse_override"]

C = TypeVar("C")

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


class ConfigError(ValueError):
    """A setting that does not exist or a value of the wrong type or range; the message says which and why."""


def _field_types(config_cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(config_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(config_cls)}


def parse_override(text: str) -> tuple[str, str]:
    """``"key=value"`` → ``("key", "value")``; anything without ``=`` or with an empty key is a ConfigError."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value, got {text!r}")
    return key.strip(), value.strip()


def _convert(key: str, raw: str, kind: Any) -> Any:
    """The command-line text ``raw`` as a value of the non-str field type ``kind``."""
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
            return float(raw)
        except ValueError:
            raise ConfigError(f"{key} takes a number, got {raw!r}") from None
    raise ConfigError(f"{key} cannot be set from the command line (its type is {kind})")


def apply_overrides(config: C, overrides: Mapping[str, Any] | Iterable[str]) -> C:
    """A copy of the frozen dataclass ``config`` with settings replaced.

    ``overrides`` is a mapping of typed values (checked to be of the field's type) or ``"key=value"`` strings
    (converted to the field's type: int, float, bool as true/false, or str). The new configuration's own
    checks run too. Raises :class:`ConfigError` for an unknown key, a value of the wrong type, or a value the
    configuration rejects.
    """
    types = _field_types(type(config))
    pairs = list(overrides.items()) if isinstance(overrides, Mapping) else [parse_override(t) for t in overrides]
    changes: dict[str, Any] = {}
    for key, value in pairs:
        if key not in types:
            raise ConfigError(f"unknown setting {key!r} for {type(config).__name__}; known: {', '.join(types)}")
        kind = types[key]
        if isinstance(value, str) and kind is not str:
            value = _convert(key, value, kind)
        elif kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(f"{key} takes a value of type {kind.__name__}, got {value!r}")
        changes[key] = value
    try:
        return dataclasses.replace(config, **changes)  # type: ignore[type-var]
    except ValueError as err:
        raise ConfigError(str(err)) from None


def config_from_dict(config_cls: type[C], values: Mapping[str, Any]) -> C:
    """Rebuild a configuration from its JSON form (``dataclasses.asdict``), checking keys and types."""
    return apply_overrides(config_cls(), values)
