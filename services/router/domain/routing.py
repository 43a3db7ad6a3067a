"""Routing config: which provider serves which model, at what price. Immutable once parsed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from interlock.pricing import ModelPricing, UnknownPriceError

PROVIDER_KINDS = ("openai",)
PRICE_PROVIDER: dict[str, str] = {}
"""genai-prices provider id of each provider kind, where it differs from the kind."""


class RoutingConfigError(ValueError):
    """The routing config is not valid; the message names the path of the bad value."""


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """One upstream account."""

    name: str
    """Provider id used in routes, usage events and spans, e.g. `openai`."""
    kind: str
    """Wire format: one of PROVIDER_KINDS."""
    base_url: str
    """API root, e.g. https://api.openai.com/v1."""
    api_key_env: str = ""
    """Environment variable holding the secret; the config never holds secrets."""
    timeout_s: float = 60.0
    """Deadline of one attempt when the caller sets none."""


@dataclass(frozen=True, slots=True)
class ModelRoute:
    """How a model name callers use maps to a provider's model."""

    name: str
    provider: str
    upstream_model: str
    pricing: ModelPricing


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    version: str
    """Content hash or label; every request is served by one version."""
    providers: Mapping[str, ProviderConfig] = field(default_factory=dict)
    models: Mapping[str, ModelRoute] = field(default_factory=dict)


def _str(raw: Mapping[str, Any], key: str, path: str, default: str | None = None) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or not value:
        raise RoutingConfigError(f"{path}.{key}: must be a non-empty string")
    return value


def _custom_price(name: str, price: Mapping[str, Any], path: str, window: int | None) -> ModelPricing:
    values: dict[str, Decimal | None] = {}
    for key in ("input_per_mtok", "output_per_mtok", "cached_input_per_mtok"):
        raw = price.get(key)
        if raw is None:
            if key != "cached_input_per_mtok":
                raise RoutingConfigError(f"{path}.{key}: required for a custom price (USD per million tokens)")
            values[key] = None
            continue
        try:
            value = Decimal(str(raw))
        except ArithmeticError:
            raise RoutingConfigError(f"{path}.{key}: must be a number") from None
        if value < 0 or not value.is_finite():
            raise RoutingConfigError(f"{path}.{key}: must be a non-negative number")
        values[key] = value
    assert values["input_per_mtok"] is not None and values["output_per_mtok"] is not None
    return ModelPricing.custom(
        name, values["input_per_mtok"], values["output_per_mtok"], values["cached_input_per_mtok"], window
    )


def _pricing(
    name: str, upstream: str, kind: str, m: Mapping[str, Any], path: str, overrides: Mapping[str, Any]
) -> ModelPricing:
    window = m.get("context_window")
    if window is not None and (not isinstance(window, int) or isinstance(window, bool) or window <= 0):
        raise RoutingConfigError(f"{path}.context_window: must be a positive integer")
    override = overrides.get(name)
    if override is not None:
        if not isinstance(override, dict):
            raise RoutingConfigError(f"price overrides.{name}: must be a mapping")
        return _custom_price(name, override, f"price overrides.{name}", override.get("context_window") or window)
    price = m.get("price") or {}
    if not isinstance(price, dict):
        raise RoutingConfigError(f"{path}.price: must be a mapping")
    if "input_per_mtok" in price or "output_per_mtok" in price:
        return _custom_price(name, price, f"{path}.price", window)
    try:
        return ModelPricing.resolve(str(price.get("provider") or kind), str(price.get("model") or upstream), window)
    except UnknownPriceError as exc:
        raise RoutingConfigError(
            f"{path}.price: {exc}; name a known model (price.model) or give input_per_mtok/output_per_mtok"
        ) from exc


def parse_routing_config(
    raw: Mapping[str, Any], version: str, price_overrides: Mapping[str, Any] | None = None
) -> RoutingConfig:
    """Validate a routing document completely before anything uses it.

    `price_overrides` maps model names to custom prices ({input_per_mtok, output_per_mtok,
    cached_input_per_mtok?, context_window?}) for private models or negotiated rates.
    """
    providers: dict[str, ProviderConfig] = {}
    raw_providers = raw.get("providers")
    if not isinstance(raw_providers, list) or not raw_providers:
        raise RoutingConfigError("providers: must be a non-empty list")
    for i, p in enumerate(raw_providers):
        path = f"providers[{i}]"
        if not isinstance(p, dict):
            raise RoutingConfigError(f"{path}: must be a mapping")
        name = _str(p, "name", path)
        kind = _str(p, "kind", path, "openai")
        if kind not in PROVIDER_KINDS:
            raise RoutingConfigError(f"{path}.kind: {kind!r} is not one of {', '.join(PROVIDER_KINDS)}")
        if name in providers:
            raise RoutingConfigError(f"{path}.name: {name!r} appears twice")
        timeout = p.get("timeout_s", 60.0)
        if not isinstance(timeout, int | float) or timeout <= 0:
            raise RoutingConfigError(f"{path}.timeout_s: must be a positive number")
        providers[name] = ProviderConfig(
            name=name,
            kind=kind,
            base_url=_str(p, "base_url", path),
            api_key_env=str(p.get("api_key_env") or ""),
            timeout_s=float(timeout),
        )
    models: dict[str, ModelRoute] = {}
    raw_models = raw.get("models")
    if not isinstance(raw_models, list) or not raw_models:
        raise RoutingConfigError("models: must be a non-empty list")
    for i, m in enumerate(raw_models):
        path = f"models[{i}]"
        if not isinstance(m, dict):
            raise RoutingConfigError(f"{path}: must be a mapping")
        name = _str(m, "name", path)
        if name in models:
            raise RoutingConfigError(f"{path}.name: {name!r} appears twice")
        provider = _str(m, "provider", path)
        if provider not in providers:
            raise RoutingConfigError(f"{path}.provider: {provider!r} is not a configured provider")
        upstream = _str(m, "upstream_model", path, name)
        pricing = _pricing(
            name,
            upstream,
            PRICE_PROVIDER.get(providers[provider].kind, providers[provider].kind),
            m,
            path,
            price_overrides or {},
        )
        models[name] = ModelRoute(name=name, provider=provider, upstream_model=upstream, pricing=pricing)
    return RoutingConfig(version=version, providers=providers, models=models)


def default_routing_document(fake_provider_url: str) -> dict[str, Any]:
    """Routes for `interlock up` without provider keys: popular model names on the built-in fake."""
    names = ["gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1-nano"]
    return {
        "providers": [{"name": "openai", "kind": "openai", "base_url": fake_provider_url, "api_key_env": ""}],
        "models": [{"name": n, "provider": "openai"} for n in names],
    }
