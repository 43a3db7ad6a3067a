"""Routing config: which deployments serve each model, how calls retry and fall back, at what price.

Immutable once parsed. A model (the name callers use) maps to an ordered chain of
deployments (provider + upstream model), grouped in priority tiers; within a tier, weights
share the traffic (load balancing, canaries). The old single-provider model form is still
valid and becomes a chain of one. Validation reports every error with its path.

    schema_version: 2                  # optional; this router reads 1 and 2
    providers:
      - {name: openai, kind: openai, base_url: https://api.openai.com/v1, api_key_env: OPENAI_API_KEY}
      - {name: azure-eu, kind: openai, base_url: https://x.openai.azure.com/openai/v1, timeout_s: 30}
    defaults:                          # optional; every model inherits these
      retry: {max_attempts: 2, backoff_base_s: 0.1, backoff_max_s: 5}
      circuit_breaker: {consecutive_failures: 5, failure_ratio: 0.5, window_s: 30, min_calls: 20,
                        cool_down_s: 30, half_open_probes: 1}
    models:
      - {name: gpt-4o-mini, provider: openai}          # old form: a chain of one
      - name: chat
        retry: {max_attempts: 3}                        # overrides single keys of defaults.retry
        deployments:
          - {provider: azure-eu, upstream_model: gpt-4o-mini, priority: 0, weight: 90}
          - {provider: openai, upstream_model: gpt-4o-mini, priority: 0, weight: 10}   # canary
          - {provider: openai, upstream_model: gpt-4.1-mini, context_window: 1047576}  # priority 2
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple

from interlock.pricing import ModelPricing, UnknownPriceError
from interlock.services.router.domain.provider import ProviderErrorKind as K
from interlock.services.router.domain.resilience import (
    ERROR_KINDS,
    TERMINAL_KINDS,
    BreakerPolicy,
    RetryPolicy,
    cumulative_weights,
)

PROVIDER_KINDS = ("openai", "anthropic", "azure_openai", "cohere", "gemini", "mistral", "ollama")
PRICE_PROVIDER: dict[str, str] = {"gemini": "google", "azure_openai": "azure"}
"""genai-prices provider id of each provider kind, where it differs from the kind."""

_DEFAULT_RETRY = RetryPolicy()
_DEFAULT_BREAKER = BreakerPolicy()

SCHEMA_VERSION = 2
"""Newest routing document schema this router reads (1: one provider per model; 2: chains)."""


class ConfigIssue(NamedTuple):
    """One problem in a routing document."""

    path: str
    """Where, e.g. `models[2].deployments[1].weight`."""
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class RoutingConfigError(ValueError):
    """The routing config is not valid; `errors` lists every problem with its path."""

    def __init__(self, errors: str | Sequence[tuple[str, str]]) -> None:
        if isinstance(errors, str):
            # Older call sites pass "path: message" as one string.
            path, sep, message = errors.partition(": ")
            errors = [(path, message) if sep else ("", errors)]
        self.errors: tuple[ConfigIssue, ...] = tuple(ConfigIssue(p, m) for p, m in errors)
        super().__init__("\n".join(map(str, self.errors)))


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
    options: Mapping[str, str] = field(default_factory=dict)
    """Settings of the wire format, e.g. Azure OpenAI's `deployment` and `api_version`."""


DEFAULT_MAX_OUTPUT_TOKENS = 4096
"""Maximum output assumed for a model whose own is not known; set `max_output_tokens` in the
routing config to reserve (and allow) a model's real maximum."""
_KNOWN_MAX_OUTPUT = (
    # (model id prefix, most output tokens per answer), longest prefix first where they overlap.
    ("gpt-4o-mini", 16_384),
    ("gpt-4o", 16_384),
    ("gpt-4.1", 32_768),
    ("claude-3-5-haiku", 8_192),
    ("claude-sonnet-4", 64_000),
    ("gemini-2.0-flash", 8_192),
    ("gemini-2.5-flash", 65_536),
    ("command-r-plus", 4_096),
    ("command-a-03-2025", 8_192),
)


def known_max_output_tokens(upstream_model: str) -> int | None:
    """The built-in maximum output of a well-known model id (fault suffixes `@...` ignored)."""
    model = upstream_model.partition("@")[0]
    return next((limit for prefix, limit in _KNOWN_MAX_OUTPUT if model.startswith(prefix)), None)


@dataclass(frozen=True, slots=True)
class Deployment:
    """One place a model can be served: a provider account and its model id."""

    provider: str
    upstream_model: str
    pricing: ModelPricing
    weight: float = 1.0
    """Share of its tier's traffic, relative to the other deployments of the tier."""
    priority: int = 0
    """Tier: lower tiers are tried first; higher ones are fallbacks."""
    timeout_s: float = 60.0
    """Longest one attempt on this deployment may take."""
    breaker: BreakerPolicy = _DEFAULT_BREAKER
    """Thresholds of this deployment's circuit breaker (one breaker per `key`)."""
    max_output_tokens: int | None = None
    """Most tokens the model writes in one answer, when known (config or built-in table)."""
    key: str = field(init=False, compare=False)
    """`provider/upstream_model`: breakers and throttles are kept per key, across models and config versions."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.provider}/{self.upstream_model}")

    @property
    def context_window(self) -> int | None:
        return self.pricing.context_window


@dataclass(frozen=True, slots=True)
class Tier:
    """Deployments of one priority; traffic is shared among them by weight."""

    priority: int
    deployments: tuple[Deployment, ...]
    cumulative_weights: tuple[float, ...]
    """Running sums of the deployments' weights, for a pick without allocation."""


@dataclass(frozen=True, slots=True)
class ModelRoute:
    """How a model name callers use maps to its deployments.

    `provider`, `upstream_model` and `pricing` are those of the primary deployment (the
    first of the first tier), for callers that predate chains.
    """

    name: str
    provider: str
    upstream_model: str
    pricing: ModelPricing
    deployments: tuple[Deployment, ...] = ()
    """The chain in config order; empty means one deployment made of the fields above."""
    retry: RetryPolicy = _DEFAULT_RETRY
    tiers: tuple[Tier, ...] = field(init=False, compare=False, repr=False)
    """The chain grouped by priority, lowest first."""

    def __post_init__(self) -> None:
        chain = self.deployments or (Deployment(self.provider, self.upstream_model, self.pricing),)
        object.__setattr__(self, "deployments", chain)
        tiers = []
        for priority in sorted({d.priority for d in chain}):
            members = tuple(d for d in chain if d.priority == priority)
            tiers.append(Tier(priority, members, cumulative_weights([d.weight for d in members])))
        object.__setattr__(self, "tiers", tuple(tiers))

    @property
    def max_output_tokens(self) -> int:
        """What a call that gives no max_tokens may produce: the largest maximum output of the
        chain (any deployment may serve it), or DEFAULT_MAX_OUTPUT_TOKENS where none is known."""
        return max(d.max_output_tokens or DEFAULT_MAX_OUTPUT_TOKENS for d in self.deployments)

    def worst_case_cost_nanos(self, input_tokens: int, output_tokens: int) -> int:
        """The dearest deployment's cost: what a budget reservation must hold for any fallback."""
        return max(d.pricing.cost_nanos(input_tokens, output_tokens) for d in self.deployments)


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    version: str
    """Content hash or label; every request is served by one version."""
    providers: Mapping[str, ProviderConfig] = field(default_factory=dict)
    models: Mapping[str, ModelRoute] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION


def config_version(document: Any, price_overrides: Any = None) -> str:
    """Content hash of a routing document and its price overrides (12 hex digits)."""
    blob = json.dumps([document, price_overrides or {}], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# Validation helpers: each records its problem and returns None, so parsing goes on and
# one run reports every error.


class _Issues:
    def __init__(self) -> None:
        self.items: list[ConfigIssue] = []

    def add(self, path: str, message: str) -> None:
        issue = ConfigIssue(path, message)
        if issue not in self.items:
            self.items.append(issue)


def _keys(raw: Mapping[str, Any], allowed: tuple[str, ...], path: str, issues: _Issues) -> None:
    # Typos must not pass silently: `wieght: 10` would otherwise leave the weight at 1.
    for key in raw:
        if key not in allowed:
            issues.add(f"{path}.{key}" if path else str(key), f"unknown key; expected one of {', '.join(allowed)}")


def _str(raw: Mapping[str, Any], key: str, path: str, issues: _Issues, default: str | None = None) -> str | None:
    value = raw.get(key, default)
    if not isinstance(value, str) or not value:
        issues.add(f"{path}.{key}", "must be a non-empty string")
        return None
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive(raw: Mapping[str, Any], key: str, path: str, issues: _Issues, default: float) -> float | None:
    value = raw.get(key, default)
    if not _is_number(value) or value <= 0:
        issues.add(f"{path}.{key}", "must be a positive number")
        return None
    return float(value)


def _non_negative(raw: Mapping[str, Any], key: str, path: str, issues: _Issues, default: float) -> float | None:
    value = raw.get(key, default)
    if not _is_number(value) or value < 0:
        issues.add(f"{path}.{key}", "must be a non-negative number")
        return None
    return float(value)


def _integer(raw: Mapping[str, Any], key: str, path: str, issues: _Issues, default: int, minimum: int) -> int | None:
    value = raw.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        issues.add(
            f"{path}.{key}", "must be a positive integer" if minimum == 1 else f"must be an integer >= {minimum}"
        )
        return None
    return value


def _mapping(value: Any, path: str, issues: _Issues) -> Mapping[str, Any] | None:
    if not isinstance(value, dict):
        issues.add(path, "must be a mapping")
        return None
    return value


def _kinds(raw: Mapping[str, Any], key: str, path: str, issues: _Issues, default: frozenset[str]) -> frozenset[str]:
    value = raw.get(key)
    if value is None:
        return default
    if not isinstance(value, list):
        issues.add(f"{path}.{key}", "must be a list of error kinds")
        return default
    kinds = set()
    for i, kind in enumerate(value):
        if kind not in ERROR_KINDS:
            issues.add(f"{path}.{key}[{i}]", f"{kind!r} is not one of {', '.join(ERROR_KINDS)}")
        elif kind in TERMINAL_KINDS:
            issues.add(f"{path}.{key}[{i}]", f"{kind} is never retried: another attempt cannot fix it")
        elif kind == K.CONTEXT_LENGTH_EXCEEDED and key == "retry_on":
            issues.add(f"{path}.{key}[{i}]", "the same deployment cannot take a longer prompt; list it in fallback_on")
        else:
            kinds.add(kind)
    return frozenset(kinds)


_RETRY_KEYS = ("max_attempts", "backoff_base_s", "backoff_max_s", "retry_on", "fallback_on")
_BREAKER_KEYS = ("consecutive_failures", "failure_ratio", "window_s", "min_calls", "cool_down_s", "half_open_probes")


def _retry(value: Any, path: str, issues: _Issues, base: RetryPolicy) -> RetryPolicy:
    raw = _mapping(value, path, issues)
    if raw is None:
        return base
    _keys(raw, _RETRY_KEYS, path, issues)
    changes: dict[str, Any] = {}
    if (n := _integer(raw, "max_attempts", path, issues, base.max_attempts, 1)) is not None:
        changes["max_attempts"] = n
    if (b := _non_negative(raw, "backoff_base_s", path, issues, base.backoff_base_s)) is not None:
        changes["backoff_base_s"] = b
    if (m := _non_negative(raw, "backoff_max_s", path, issues, base.backoff_max_s)) is not None:
        changes["backoff_max_s"] = m
    changes["retry_on"] = _kinds(raw, "retry_on", path, issues, base.retry_on)
    changes["fallback_on"] = _kinds(raw, "fallback_on", path, issues, base.fallback_on)
    policy = dataclasses.replace(base, **changes)
    if policy.backoff_max_s < policy.backoff_base_s:
        issues.add(f"{path}.backoff_max_s", "must be at least backoff_base_s")
    return policy


def _breaker(value: Any, path: str, issues: _Issues, base: BreakerPolicy) -> BreakerPolicy:
    raw = _mapping(value, path, issues)
    if raw is None:
        return base
    _keys(raw, _BREAKER_KEYS, path, issues)
    changes: dict[str, Any] = {}
    if (n := _integer(raw, "consecutive_failures", path, issues, base.consecutive_failures, 0)) is not None:
        changes["consecutive_failures"] = n
    ratio = raw.get("failure_ratio", base.failure_ratio)
    if not _is_number(ratio) or not 0 <= ratio <= 1:
        issues.add(f"{path}.failure_ratio", "must be a number from 0 (off) to 1")
    else:
        changes["failure_ratio"] = float(ratio)
    for key in ("window_s", "cool_down_s"):
        if (s := _positive(raw, key, path, issues, getattr(base, key))) is not None:
            changes[key] = s
    for key in ("min_calls", "half_open_probes"):
        if (c := _integer(raw, key, path, issues, getattr(base, key), 1)) is not None:
            changes[key] = c
    return dataclasses.replace(base, **changes)


def _custom_price(
    name: str, price: Mapping[str, Any], path: str, window: int | None, issues: _Issues
) -> ModelPricing | None:
    values: dict[str, Decimal | None] = {}
    ok = True
    for key in ("input_per_mtok", "output_per_mtok", "cached_input_per_mtok"):
        raw = price.get(key)
        if raw is None:
            if key != "cached_input_per_mtok":
                issues.add(f"{path}.{key}", "required for a custom price (USD per million tokens)")
                ok = False
            values[key] = None
            continue
        try:
            value = Decimal(str(raw))
        except ArithmeticError:
            issues.add(f"{path}.{key}", "must be a number")
            ok = False
            continue
        if value < 0 or not value.is_finite():
            issues.add(f"{path}.{key}", "must be a non-negative number")
            ok = False
            continue
        values[key] = value
    if not ok:
        return None
    input_price, output_price = values["input_per_mtok"], values["output_per_mtok"]
    assert input_price is not None and output_price is not None
    return ModelPricing.custom(name, input_price, output_price, values["cached_input_per_mtok"], window)


def _pricing(
    name: str,
    upstream: str,
    kind: str,
    m: Mapping[str, Any],
    path: str,
    overrides: Mapping[str, Any],
    issues: _Issues,
) -> ModelPricing | None:
    window = m.get("context_window")
    if window is not None and (not isinstance(window, int) or isinstance(window, bool) or window <= 0):
        issues.add(f"{path}.context_window", "must be a positive integer")
        return None
    override = overrides.get(name)
    if override is not None:
        if not isinstance(override, dict):
            issues.add(f"price overrides.{name}", "must be a mapping")
            return None
        return _custom_price(
            name, override, f"price overrides.{name}", override.get("context_window") or window, issues
        )
    price = m.get("price") or {}
    if not isinstance(price, dict):
        issues.add(f"{path}.price", "must be a mapping")
        return None
    if "input_per_mtok" in price or "output_per_mtok" in price:
        return _custom_price(name, price, f"{path}.price", window, issues)
    try:
        return ModelPricing.resolve(str(price.get("provider") or kind), str(price.get("model") or upstream), window)
    except UnknownPriceError as exc:
        issues.add(f"{path}.price", f"{exc}; name a known model (price.model) or give input_per_mtok/output_per_mtok")
        return None


_PROVIDER_KEYS = ("name", "kind", "base_url", "api_key_env", "timeout_s", "options")
_DEPLOYMENT_KEYS = (
    "provider",
    "upstream_model",
    "weight",
    "priority",
    "timeout_s",
    "price",
    "context_window",
    "max_output_tokens",
)
_SINGLE_KEYS = ("provider", "upstream_model", "price", "context_window", "max_output_tokens")
_MODEL_KEYS = ("name", *_SINGLE_KEYS, "deployments", "retry", "circuit_breaker")


def _providers(raw: Any, issues: _Issues) -> tuple[dict[str, ProviderConfig], set[str]]:
    """Valid providers, and every name given (so a model naming a broken provider is not blamed too)."""
    providers: dict[str, ProviderConfig] = {}
    names: set[str] = set()
    if not isinstance(raw, list) or not raw:
        issues.add("providers", "must be a non-empty list")
        return providers, names
    for i, p in enumerate(raw):
        path = f"providers[{i}]"
        if _mapping(p, path, issues) is None:
            continue
        _keys(p, _PROVIDER_KEYS, path, issues)
        errors_before = len(issues.items)
        name = _str(p, "name", path, issues)
        kind = _str(p, "kind", path, issues, "openai")
        if kind is not None and kind not in PROVIDER_KINDS:
            issues.add(f"{path}.kind", f"{kind!r} is not one of {', '.join(PROVIDER_KINDS)}")
        if name is not None and name in names:
            issues.add(f"{path}.name", f"{name!r} appears twice")
        base_url = _str(p, "base_url", path, issues)
        timeout = _positive(p, "timeout_s", path, issues, 60.0)
        api_key_env = p.get("api_key_env") or ""
        if not isinstance(api_key_env, str):
            issues.add(f"{path}.api_key_env", "must be a string")
        options: dict[str, str] = {}
        raw_options = p.get("options") or {}
        if _mapping(raw_options, f"{path}.options", issues) is not None:
            for key, value in raw_options.items():
                # YAML reads an unquoted 2024-10-21 as a date: any scalar is taken as its text.
                if isinstance(value, dict | list) or value is None:
                    issues.add(f"{path}.options.{key}", "must be a single value")
                else:
                    options[str(key)] = str(value)
        if name is not None:
            names.add(name)
        if len(issues.items) == errors_before:
            assert name is not None and kind is not None and base_url is not None and timeout is not None
            providers[name] = ProviderConfig(name, kind, base_url, api_key_env, timeout, options)
    return providers, names


def parse_routing_config(
    raw: Mapping[str, Any], version: str, price_overrides: Mapping[str, Any] | None = None
) -> RoutingConfig:
    """Validate a routing document completely before anything uses it.

    Raises RoutingConfigError listing every problem with its path. `price_overrides` maps
    model names to custom prices ({input_per_mtok, output_per_mtok, cached_input_per_mtok?,
    context_window?}) for private models or negotiated rates; an override prices every
    deployment of its model.
    """
    issues = _Issues()
    overrides = price_overrides or {}
    _keys(raw, ("schema_version", "providers", "defaults", "models"), "", issues)
    schema = raw.get("schema_version", SCHEMA_VERSION)
    if not isinstance(schema, int) or isinstance(schema, bool) or not 1 <= schema <= SCHEMA_VERSION:
        issues.add("schema_version", f"this router reads schema versions 1 to {SCHEMA_VERSION}")
        schema = SCHEMA_VERSION
    providers, provider_names = _providers(raw.get("providers"), issues)

    retry_default = RetryPolicy()
    breaker_default = BreakerPolicy()
    if "defaults" in raw and (defaults := _mapping(raw["defaults"], "defaults", issues)) is not None:
        _keys(defaults, ("retry", "circuit_breaker"), "defaults", issues)
        if "retry" in defaults:
            retry_default = _retry(defaults["retry"], "defaults.retry", issues, retry_default)
        if "circuit_breaker" in defaults:
            breaker_default = _breaker(defaults["circuit_breaker"], "defaults.circuit_breaker", issues, breaker_default)

    breakers: dict[str, tuple[BreakerPolicy, str]] = {}
    """Deployment key -> its breaker policy and the model that set it: one breaker per deployment."""
    models: dict[str, ModelRoute] = {}
    raw_models = raw.get("models")
    if not isinstance(raw_models, list) or not raw_models:
        issues.add("models", "must be a non-empty list")
        raw_models = []
    names: set[str] = set()
    for i, m in enumerate(raw_models):
        path = f"models[{i}]"
        if _mapping(m, path, issues) is None:
            continue
        _keys(m, _MODEL_KEYS, path, issues)
        errors_before = len(issues.items)
        name = _str(m, "name", path, issues)
        if name is not None and name in names:
            issues.add(f"{path}.name", f"{name!r} appears twice")
        if name is not None:
            names.add(name)
        retry = _retry(m["retry"], f"{path}.retry", issues, retry_default) if "retry" in m else retry_default
        breaker = (
            _breaker(m["circuit_breaker"], f"{path}.circuit_breaker", issues, breaker_default)
            if "circuit_breaker" in m
            else breaker_default
        )
        alias = name or f"models[{i}]"
        if "deployments" in m:
            mixed = [k for k in _SINGLE_KEYS if k in m]
            if mixed:
                issues.add(f"{path}.deployments", f"give deployments or {'/'.join(mixed)}, not both")
            raw_chain = m["deployments"]
            if not isinstance(raw_chain, list) or not raw_chain:
                issues.add(f"{path}.deployments", "must be a non-empty list")
                raw_chain = []
            entries = [(f"{path}.deployments[{j}]", d, j) for j, d in enumerate(raw_chain)]
        else:
            entries = [(path, m, 0)]
        chain: list[Deployment] = []
        seen: set[str] = set()
        for dpath, d, j in entries:
            if _mapping(d, dpath, issues) is None:
                continue
            if dpath != path:
                _keys(d, _DEPLOYMENT_KEYS, dpath, issues)
            provider = _str(d, "provider", dpath, issues)
            if provider is not None and provider not in provider_names:
                issues.add(f"{dpath}.provider", f"{provider!r} is not a configured provider")
            upstream = _str(d, "upstream_model", dpath, issues, name)
            weight = _positive(d, "weight", dpath, issues, 1.0)
            # Unnumbered deployments take their list position: a plain list is an ordered fallback chain.
            priority = _integer(d, "priority", dpath, issues, j, 0)
            config = providers.get(provider or "")
            timeout = _positive(d, "timeout_s", dpath, issues, config.timeout_s if config else 60.0)
            max_output = _integer(d, "max_output_tokens", dpath, issues, 0, 1) if "max_output_tokens" in d else 0
            pricing = None
            if config is not None and upstream is not None:
                kind = PRICE_PROVIDER.get(config.kind, config.kind)
                pricing = _pricing(alias, upstream, kind, d, dpath, overrides, issues)
            if provider is not None and upstream is not None:
                key = f"{provider}/{upstream}"
                if key in seen:
                    issues.add(f"{dpath}.upstream_model", f"deployment {key!r} appears twice in this chain")
                seen.add(key)
                earlier = breakers.setdefault(key, (breaker, path))
                if earlier[0] != breaker:
                    issues.add(
                        f"{path}.circuit_breaker",
                        f"deployment {key!r} has a different circuit_breaker in {earlier[1]}; a deployment has one"
                        " breaker, so give both models the same thresholds",
                    )
            if None in (provider, upstream, weight, priority, timeout, pricing, max_output):
                continue
            assert provider and upstream and weight and priority is not None and timeout and pricing
            chain.append(
                Deployment(
                    provider,
                    upstream,
                    pricing,
                    weight,
                    priority,
                    timeout,
                    breaker,
                    max_output_tokens=max_output or known_max_output_tokens(upstream),
                )
            )
        if name is not None and chain and len(issues.items) == errors_before:
            first = min(chain, key=lambda d: d.priority)  # the first of the lowest tier
            models[name] = ModelRoute(name, first.provider, first.upstream_model, first.pricing, tuple(chain), retry)
    if issues.items:
        raise RoutingConfigError(issues.items)
    return RoutingConfig(version=version, providers=providers, models=models, schema_version=schema)
