"""Rate-limiter process: wiring only."""

from __future__ import annotations

import asyncio
from pathlib import Path

import yaml

from interlock._server import GrpcService
from interlock._telemetry import setup_logging, setup_tracing
from interlock.ratelimit.v1 import ratelimit_pb2
from interlock.services.ratelimit import config
from interlock.services.ratelimit.adapters.stores import CounterStore, MemoryCounterStore, RedisCounterStore
from interlock.services.ratelimit.api.servicer import RateLimitServicer
from interlock.services.ratelimit.domain.limits import LimitConfig, parse_limit_config


def load_limits(path: str) -> LimitConfig:
    if not path:
        return LimitConfig()
    docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d is not None]
    return parse_limit_config(docs)


async def serve(settings: config.RateLimitSettings, stop: asyncio.Event | None = None) -> None:
    store: CounterStore = RedisCounterStore(settings.redis_url) if settings.redis_url else MemoryCounterStore()
    servicer = RateLimitServicer(load_limits(settings.limits_path), store)
    service = GrpcService(
        name="ratelimit",
        host=settings.host,
        port=settings.port,
        services=[(ratelimit_pb2.DESCRIPTOR.services_by_name["RateLimitService"], servicer)],
        on_stop=[store.aclose],
        grace_s=settings.grace_s,
    )
    await service.run(stop)


def main() -> None:
    settings = config.load()
    setup_logging("ratelimit", settings.log_level)
    provider = setup_tracing("ratelimit", settings.otlp_endpoint or None)
    try:
        asyncio.run(serve(settings))
    finally:
        provider.shutdown()


if __name__ == "__main__":
    main()
