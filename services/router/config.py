"""Router settings, from `INTERLOCK_ROUTER_*` environment variables."""

from __future__ import annotations

from dataclasses import dataclass

from interlock._settings import load_settings


@dataclass(frozen=True)
class RouterSettings:
    host: str = "127.0.0.1"
    """Interface the gRPC server binds."""
    port: int = 50051
    """gRPC port callers use; 0 picks a free one."""
    routing_path: str = ""
    """YAML routing config (providers and models); empty routes the default models to the fake provider."""
    price_overrides_path: str = ""
    """YAML of custom prices for private models: {models: {NAME: {input_per_mtok, output_per_mtok, ...}}}."""
    fake_provider_url: str = "http://127.0.0.1:8089/v1"
    """Base URL of the built-in fake provider, used when no routing config is given."""
    http_host: str = "127.0.0.1"
    """Interface of the OpenAI/Anthropic-compatible HTTP facade."""
    http_port: int = 8080
    """Port of the HTTP facade; 0 picks a free one, -1 turns the facade off."""
    ratelimit_target: str = "127.0.0.1:50052"
    """Rate-limiter gRPC address."""
    ratelimit_fail_open: bool = True
    """Admit calls when the rate-limiter is unreachable (limits then hold per provider only)."""
    budget_target: str = "127.0.0.1:50053"
    """Budget service gRPC address. Budgets always fail closed."""
    auth_cache_ttl_s: float = 30.0
    """How long a valid API key is trusted without asking the budget service again."""
    otlp_endpoint: str = ""
    """OTLP/gRPC endpoint for spans; empty disables export."""
    log_level: str = "info"
    """Log level of the JSON logs on stderr."""
    grace_s: float = 30.0
    """Time in-flight calls (streams too) get to finish after SIGTERM."""


def load() -> RouterSettings:
    return load_settings(RouterSettings, "INTERLOCK_ROUTER_")
