"""Router process: wiring only."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import yaml

from interlock._http import EmbeddedHttpServer
from interlock._server import GrpcService
from interlock._telemetry import setup_logging, setup_tracing
from interlock.router.v1 import router_pb2
from interlock.services.router import config
from interlock.services.router.adapters.mesh_clients import BudgetClient, RateLimitClient
from interlock.services.router.adapters.openai import OpenAIProvider
from interlock.services.router.api.http_facade import HttpFacade
from interlock.services.router.api.servicer import RouterServicer
from interlock.services.router.domain.flow import ChatFlow
from interlock.services.router.domain.provider import ChatProvider
from interlock.services.router.domain.routing import (
    ProviderConfig,
    RoutingConfig,
    RoutingConfigError,
    default_routing_document,
    parse_routing_config,
)

log = logging.getLogger("interlock.router")

# Local OpenAI-compatible servers (the built-in fake, vLLM, llama.cpp) take any bearer token.
_NO_KEY = "interlock-no-key"


def load_routing(settings: config.RouterSettings) -> RoutingConfig:
    document: Any
    if settings.routing_path:
        document = yaml.safe_load(Path(settings.routing_path).read_text())
        if not isinstance(document, dict):
            raise RoutingConfigError(f"{settings.routing_path}: must be a YAML mapping")
    else:
        document = default_routing_document(settings.fake_provider_url)
    overrides: Any = {}
    if settings.price_overrides_path:
        loaded = yaml.safe_load(Path(settings.price_overrides_path).read_text()) or {}
        overrides = loaded.get("models", {}) if isinstance(loaded, dict) else None
        if not isinstance(overrides, dict):
            raise RoutingConfigError(f"{settings.price_overrides_path}: must be a mapping with `models`")
    version = hashlib.sha256(json.dumps([document, overrides], sort_keys=True, default=str).encode()).hexdigest()[:12]
    return parse_routing_config(document, version, overrides)


def build_provider(cfg: ProviderConfig) -> ChatProvider:
    api_key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else _NO_KEY
    if not api_key:
        raise RoutingConfigError(f"provider {cfg.name}: environment variable {cfg.api_key_env} is not set")
    return OpenAIProvider(name=cfg.name, base_url=cfg.base_url, api_key=api_key, timeout_s=cfg.timeout_s)


async def serve(settings: config.RouterSettings, stop: asyncio.Event | None = None) -> None:
    routing = load_routing(settings)
    providers = {name: build_provider(cfg) for name, cfg in routing.providers.items()}
    ratelimit = RateLimitClient(settings.ratelimit_target, settings.ratelimit_fail_open)
    budget = BudgetClient(settings.budget_target, settings.auth_cache_ttl_s)
    flow = ChatFlow(ratelimit, budget, providers, lambda name: routing.providers[name].timeout_s)
    servicer = RouterServicer(routing, flow, budget)
    facade = (
        EmbeddedHttpServer(
            HttpFacade(lambda: servicer.config, flow, budget.authenticate),
            settings.http_host,
            settings.http_port,
            grace_s=settings.grace_s,
        )
        if settings.http_port >= 0
        else None
    )

    async def start_facade() -> None:
        if facade is not None:
            url = await facade.start()
            log.info("HTTP facade serving", extra={"fields": {"address": url}})

    async def stop_facade() -> None:
        if facade is not None:
            await facade.stop()

    async def close() -> None:
        for provider in providers.values():
            await provider.aclose()
        await ratelimit.aclose()
        await budget.aclose()

    service = GrpcService(
        name="router",
        host=settings.host,
        port=settings.port,
        services=[(router_pb2.DESCRIPTOR.services_by_name["RouterService"], servicer)],
        on_start=[start_facade],
        on_draining=[stop_facade],
        on_stop=[close],
        grace_s=settings.grace_s,
    )
    await service.run(stop)


def main() -> None:
    settings = config.load()
    setup_logging("router", settings.log_level)
    provider = setup_tracing("router", settings.otlp_endpoint or None)
    try:
        asyncio.run(serve(settings))
    finally:
        provider.shutdown()


if __name__ == "__main__":
    main()
