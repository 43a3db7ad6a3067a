from __future__ import annotations

from dataclasses import dataclass

import pytest

from interlock._settings import SettingsError, load_settings


@dataclass(frozen=True)
class Example:
    port: int = 1
    ratio: float = 0.5
    enabled: bool = False
    name: str = "x"
    optional: str | None = None


def test_env_overrides_defaults_by_prefixed_upper_name() -> None:
    env = {"X_PORT": "50051", "X_RATIO": "0.25", "X_ENABLED": "yes", "X_NAME": "router", "X_OPTIONAL": ""}
    assert load_settings(Example, "X_", env) == Example(50051, 0.25, True, "router", None)


def test_defaults_without_env() -> None:
    assert load_settings(Example, "X_", {}) == Example()


def test_bad_value_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="X_PORT"):
        load_settings(Example, "X_", {"X_PORT": "fifty"})
