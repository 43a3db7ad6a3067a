"""Typed settings read from the environment, one frozen dataclass per service.

A field `otlp_endpoint` of a class loaded with prefix `INTERLOCK_ROUTER_` reads env var
`INTERLOCK_ROUTER_OTLP_ENDPOINT`. Bad values fail at start with the variable's name.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class SettingsError(ValueError):
    """An environment variable holds a value its setting cannot take."""


def load_settings(cls: type[T], prefix: str, environ: Mapping[str, str] | None = None) -> T:
    """Build `cls` (a dataclass) from its defaults overridden by `prefix`+NAME variables."""
    env = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        var = prefix + field.name.upper()
        if var in env:
            values[field.name] = _convert(var, env[var], hints[field.name])
    return cls(**values)


def _convert(var: str, raw: str, hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if raw == "":
            return None
        hint = args[0]
    try:
        if hint is bool:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if hint is int:
            return int(raw)
        if hint is float:
            return float(raw)
        if hint is str:
            return raw
    except ValueError as exc:
        raise SettingsError(f"{var}={raw!r} is not a valid {hint.__name__}") from exc
    raise SettingsError(f"{var}: unsupported setting type {hint!r}")
