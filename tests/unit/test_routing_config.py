"""Routing config: the old one-provider form, chains of deployments, and every error with its path."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from interlock import cli
from interlock.services.router.domain.resilience import BreakerPolicy, RetryPolicy
from interlock.services.router.domain.routing import (
    ConfigIssue,
    ModelRoute,
    RoutingConfigError,
    config_version,
    parse_routing_config,
)

PROVIDERS: list[dict[str, Any]] = [
    {"name": "openai", "kind": "openai", "base_url": "https://api.openai.com/v1", "api_key_env": "OPENAI_API_KEY"},
    {"name": "backup", "kind": "openai", "base_url": "http://127.0.0.1:1/v1", "timeout_s": 15},
]
CUSTOM = {"input_per_mtok": 1, "output_per_mtok": 2}


def errors_of(doc: dict[str, Any], overrides: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    with pytest.raises(RoutingConfigError) as info:
        parse_routing_config(doc, "v", overrides)
    return [(e.path, e.message) for e in info.value.errors]


def test_old_single_provider_form_is_a_chain_of_one() -> None:
    doc = {
        "providers": PROVIDERS,
        "models": [
            {"name": "gpt-4o-mini", "provider": "openai"},
            {"name": "local", "provider": "backup", "upstream_model": "llama", "price": CUSTOM, "context_window": 8192},
        ],
    }
    config = parse_routing_config(doc, "v1")
    route = config.models["local"]
    assert (route.provider, route.upstream_model, route.pricing.context_window) == ("backup", "llama", 8192)
    (d,) = route.deployments
    assert (d.key, d.weight, d.priority, d.timeout_s) == ("backup/llama", 1.0, 0, 15.0)
    assert d.pricing is route.pricing and route.retry == RetryPolicy()
    assert config.models["gpt-4o-mini"].deployments[0].context_window == 128000  # from genai-prices
    assert config.schema_version == 2 and config.version == "v1"


def test_direct_construction_still_makes_a_chain_of_one() -> None:
    pricing = parse_routing_config({"providers": PROVIDERS, "models": [{"name": "gpt-4o", "provider": "openai"}]}, "v")
    p = pricing.models["gpt-4o"].pricing
    route = ModelRoute("m", "openai", "gpt-4o", p)
    assert [d.key for d in route.deployments] == ["openai/gpt-4o"] and len(route.tiers) == 1


def test_chain_with_tiers_weights_retry_and_breaker() -> None:
    doc = {
        "schema_version": 2,
        "providers": PROVIDERS,
        "defaults": {
            "retry": {"max_attempts": 3, "backoff_base_s": 0.05},
            "circuit_breaker": {"consecutive_failures": 4, "cool_down_s": 10},
        },
        "models": [
            {
                "name": "chat",
                "retry": {"backoff_max_s": 2, "retry_on": ["server_error", "timeout"]},
                "deployments": [
                    {"provider": "openai", "upstream_model": "gpt-4o-mini", "priority": 0, "weight": 90},
                    {"provider": "backup", "upstream_model": "gpt-4o-mini", "priority": 0, "weight": 10},
                    {"provider": "openai", "upstream_model": "gpt-4.1-mini", "timeout_s": 5},
                    {"provider": "backup", "upstream_model": "big", "price": CUSTOM, "context_window": 1_000_000},
                ],
            },
            {"name": "plain", "provider": "openai", "upstream_model": "gpt-4o-mini"},
        ],
    }
    route = parse_routing_config(doc, "v").models["chat"]
    assert [(t.priority, [d.key for d in t.deployments]) for t in route.tiers] == [
        (0, ["openai/gpt-4o-mini", "backup/gpt-4o-mini"]),
        (2, ["openai/gpt-4.1-mini"]),  # unnumbered deployments take their list position
        (3, ["backup/big"]),
    ]
    assert route.tiers[0].cumulative_weights == (90.0, 100.0)
    assert (route.provider, route.upstream_model) == ("openai", "gpt-4o-mini")
    assert route.deployments[2].timeout_s == 5.0 and route.deployments[1].timeout_s == 15.0
    assert route.retry == RetryPolicy(
        max_attempts=3, backoff_base_s=0.05, backoff_max_s=2.0, retry_on=frozenset({"server_error", "timeout"})
    )
    assert {d.breaker for d in route.deployments} == {BreakerPolicy(consecutive_failures=4, cool_down_s=10.0)}
    # A budget reservation must cover the dearest deployment of the chain.
    dearest = max(d.pricing.cost_nanos(1000, 1000) for d in route.deployments)
    assert route.worst_case_cost_nanos(1000, 1000) == dearest > route.pricing.cost_nanos(1000, 1000)


def test_price_override_prices_every_deployment_of_its_model() -> None:
    doc = {
        "providers": PROVIDERS,
        "models": [
            {
                "name": "chat",
                "deployments": [{"provider": "openai", "upstream_model": "gpt-4o"}, {"provider": "backup"}],
            }
        ],
    }
    route = parse_routing_config(doc, "v", {"chat": {"input_per_mtok": 3, "output_per_mtok": 4}}).models["chat"]
    assert {d.pricing.usd_per_mtok()[:2] for d in route.deployments} == {(Decimal(3), Decimal(4))}


def test_provider_options_are_kept_as_text() -> None:
    providers = [{**PROVIDERS[1], "options": {"deployment": "gpt-4o-mini", "api_version": 2024}}]
    config = parse_routing_config(
        {"providers": providers, "models": [{"name": "m", "provider": "backup"}]}, "v", {"m": CUSTOM}
    )
    assert config.providers["backup"].options == {"deployment": "gpt-4o-mini", "api_version": "2024"}


def test_every_error_is_reported_with_its_exact_path() -> None:
    doc = {
        "schema_version": 3,
        "colour": "blue",
        "providers": [
            {"name": "openai", "kind": "openai", "base_url": "https://api.openai.com/v1"},
            {"name": "openai", "kind": "telnet", "base_url": "", "timeout_s": 0},
        ],
        "defaults": {"retry": {"max_attempts": 0, "retry_on": ["auth", "teapot"]}},
        "models": [
            {"name": "gpt-4o", "provider": "openai"},
            "not a mapping",
            {
                "name": "chain",
                "circuit_breaker": {
                    "consecutive_failures": 9,
                    "failure_ratio": 1.5,
                    "cool_down_s": -1,
                    "half_open_probes": 0,
                },
                "retry": {"backoff_base_s": 2, "backoff_max_s": 1, "fallback_on": ["bad_request"]},
                "deployments": [
                    {"provider": "openai", "upstream_model": "gpt-4o-mini"},
                    {"provider": "openai", "upstream_model": "gpt-4o", "weight": -3, "wieght": 1},
                    {"provider": "nobody", "priority": -1, "timeout_s": "soon"},
                    {"provider": "openai", "upstream_model": "gpt-4o-mini"},
                    {"provider": "openai", "upstream_model": "x", "price": {"input_per_mtok": -1}},
                ],
            },
            {"name": "gpt-4o", "provider": "openai", "deployments": []},
            {"name": "gpt-4.1-mini", "provider": "openai", "retry": {"retry_on": ["context_length_exceeded"]}},
        ],
    }
    assert errors_of(doc) == [
        ("colour", "unknown key; expected one of schema_version, providers, defaults, models"),
        ("schema_version", "this router reads schema versions 1 to 2"),
        (
            "providers[1].kind",
            "'telnet' is not one of openai, anthropic, azure_openai, cohere, gemini, mistral, ollama",
        ),
        ("providers[1].name", "'openai' appears twice"),
        ("providers[1].base_url", "must be a non-empty string"),
        ("providers[1].timeout_s", "must be a positive number"),
        ("defaults.retry.max_attempts", "must be a positive integer"),
        ("defaults.retry.retry_on[0]", "auth is never retried: another attempt cannot fix it"),
        (
            "defaults.retry.retry_on[1]",
            "'teapot' is not one of rate_limited, overloaded, context_length_exceeded, content_filtered, auth,"
            " bad_request, server_error, timeout, protocol",
        ),
        ("models[1]", "must be a mapping"),
        ("models[2].retry.fallback_on[0]", "bad_request is never retried: another attempt cannot fix it"),
        ("models[2].retry.backoff_max_s", "must be at least backoff_base_s"),
        ("models[2].circuit_breaker.failure_ratio", "must be a number from 0 (off) to 1"),
        ("models[2].circuit_breaker.cool_down_s", "must be a positive number"),
        ("models[2].circuit_breaker.half_open_probes", "must be a positive integer"),
        (
            "models[2].deployments[1].wieght",
            "unknown key; expected one of provider, upstream_model, weight, priority, timeout_s, price,"
            " context_window, max_output_tokens",
        ),
        ("models[2].deployments[1].weight", "must be a positive number"),
        (
            "models[2].circuit_breaker",
            "deployment 'openai/gpt-4o' has a different circuit_breaker in models[0]; a deployment has one"
            " breaker, so give both models the same thresholds",
        ),
        ("models[2].deployments[2].provider", "'nobody' is not a configured provider"),
        ("models[2].deployments[2].priority", "must be an integer >= 0"),
        ("models[2].deployments[2].timeout_s", "must be a positive number"),
        ("models[2].deployments[3].upstream_model", "deployment 'openai/gpt-4o-mini' appears twice in this chain"),
        ("models[2].deployments[4].price.input_per_mtok", "must be a non-negative number"),
        ("models[2].deployments[4].price.output_per_mtok", "required for a custom price (USD per million tokens)"),
        ("models[3].name", "'gpt-4o' appears twice"),
        ("models[3].deployments", "give deployments or provider, not both"),
        ("models[3].deployments", "must be a non-empty list"),
        (
            "models[4].retry.retry_on[0]",
            "the same deployment cannot take a longer prompt; list it in fallback_on",
        ),
    ]


def test_error_message_lists_every_path_one_per_line() -> None:
    doc = {"providers": [], "models": [{"name": "m", "provider": "openai", "upstream_model": "no-such-model"}]}
    with pytest.raises(RoutingConfigError) as info:
        parse_routing_config(doc, "v")
    assert str(info.value).splitlines() == [
        "providers: must be a non-empty list",
        "models[0].provider: 'openai' is not a configured provider",
    ]
    assert info.value.errors[0] == ConfigIssue("providers", "must be a non-empty list")


def test_an_unpriced_deployment_names_its_path() -> None:
    doc = {
        "providers": PROVIDERS,
        "models": [
            {"name": "m", "deployments": [{"provider": "openai", "upstream_model": "gpt-4o"}, {"provider": "openai"}]}
        ],
    }
    ((path, message),) = errors_of(doc)
    assert path == "models[0].deployments[1].price" and "no price for model 'm'" in message


def test_single_message_errors_keep_working() -> None:
    err = RoutingConfigError("routing.yaml: must be a YAML mapping")
    assert err.errors == (ConfigIssue("routing.yaml", "must be a YAML mapping"),)
    assert str(err) == "routing.yaml: must be a YAML mapping"


def test_config_version_is_a_content_hash() -> None:
    doc = {"providers": PROVIDERS, "models": [{"name": "gpt-4o", "provider": "openai"}]}
    assert config_version(doc) == config_version({"models": doc["models"], "providers": PROVIDERS})
    assert config_version(doc) != config_version(doc, {"gpt-4o": CUSTOM})
    assert len(config_version(doc)) == 12


def test_cli_config_validate_prints_the_version_or_every_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = {"providers": PROVIDERS, "models": [{"name": "gpt-4o", "provider": "openai"}]}
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(good))
    assert cli.main(["config", "validate", str(tmp_path / "good.yaml")]) == 0
    assert capsys.readouterr().out == config_version(good) + "\n"

    bad = {"providers": PROVIDERS, "models": [{"name": "m", "deployments": [{"provider": "x", "weight": 0}]}]}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    assert cli.main(["config", "validate", str(tmp_path / "bad.yaml")]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "models[0].deployments[0].provider: 'x' is not a configured provider",
        "models[0].deployments[0].weight: must be a positive number",
    ]
    assert cli.main(["config", "validate", str(tmp_path / "bad.yaml"), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["errors"][1] == {
        "path": "models[0].deployments[0].weight",
        "message": "must be a positive number",
    }
    assert cli.main(["config", "validate", str(tmp_path / "good.yaml"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "valid": True,
        "version": config_version(good),
        "models": ["gpt-4o"],
    }


def test_calls_without_max_tokens_reserve_the_largest_maximum_output_of_the_chain() -> None:
    from interlock.services.router.domain.chat import validate_chat
    from interlock.services.router.domain.flow import ChatFlow
    from interlock.services.router.domain.provider import ChatMessage

    doc = {
        "providers": PROVIDERS,
        "models": [
            {
                "name": "chain",
                "deployments": [
                    {"provider": "openai", "upstream_model": "gpt-4o-mini"},  # built-in: 16,384
                    {"provider": "backup", "upstream_model": "llama", "price": CUSTOM, "max_output_tokens": 2048},
                ],
            },
            {"name": "local", "provider": "backup", "upstream_model": "llama", "price": CUSTOM},
        ],
    }
    config = parse_routing_config(doc, "v1")
    chain = config.models["chain"]
    assert [d.max_output_tokens for d in chain.deployments] == [16_384, 2048]
    assert chain.max_output_tokens == 16_384
    assert config.models["local"].max_output_tokens == 4096  # unknown model: the documented default

    def call(max_tokens: int | None) -> Any:
        return validate_chat(
            config,
            model="chain",
            messages=[ChatMessage("user", "hi")],
            max_tokens=max_tokens,
            temperature=None,
            request_id="r",
            run_id="",
            agent="",
        )

    omitted, explicit = call(None), call(100)
    assert (omitted.max_tokens, explicit.max_tokens) == (16_384, 100)
    assert ChatFlow.worst_case_nanos(omitted) > ChatFlow.worst_case_nanos(explicit)
    # The fallback with a smaller maximum is asked for its maximum, not more than it can give.
    asked = [ChatFlow._request(omitted, d, 5.0).max_tokens for d in chain.deployments]
    assert asked == [16_384, 2048]
    assert errors_of(
        {
            "providers": PROVIDERS,
            "models": [
                {"name": "x", "provider": "backup", "upstream_model": "m", "price": CUSTOM, "max_output_tokens": 0}
            ],
        }
    ) == [("models[0].max_output_tokens", "must be a positive integer")]
