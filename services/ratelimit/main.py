"""Rate-limiter process: wiring only."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import yaml

from interlock._filewatch import FileWatcher
from interlock._server import GrpcService, run_event_loop, set_cpu_priority
from interlock._telemetry import setup_logging, setup_tracing
from interlock.ratelimit.v1 import ratelimit_pb2
from interlock.services.ratelimit import config
from interlock.services.ratelimit.adapters.stores import MemoryWindowStore, RedisWindowStore, WindowStore
from interlock.services.ratelimit.api.servicer import RateLimitServicer
from interlock.services.ratelimit.domain.limits import LimitConfig, parse_limit_config

log = logging.getLogger("interlock.ratelimit")


def parse_limits_yaml(text: str) -> LimitConfig:
    return parse_limit_config([d for d in yaml.safe_load_all(text) if d is not None])


async def _every(interval_s: float, action_name: str, action: Callable[[], Awaitable[None]]) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            await action()
        except Exception as exc:  # noqa: BLE001 - keep serving with what we have
            log.warning(f"{action_name} failed", extra={"fields": {"error": str(exc)}})


async def serve(settings: config.RateLimitSettings, stop: asyncio.Event | None = None) -> None:
    store: WindowStore = RedisWindowStore(settings.redis_url) if settings.redis_url else MemoryWindowStore()
    servicer = RateLimitServicer(LimitConfig(), store, settings.lease_fill, settings.max_lease_ms)
    tasks: list[asyncio.Task[None]] = []
    if settings.limits_path:
        watcher = FileWatcher(settings.limits_path, parse_limits_yaml, servicer.swap_config, settings.reload_interval_s)
        servicer.swap_config(watcher.load())
        tasks.append(asyncio.create_task(watcher.run()))
    await servicer.refresh_overrides()
    if settings.redis_url:
        tasks.append(
            asyncio.create_task(_every(settings.overrides_refresh_s, "overrides refresh", servicer.refresh_overrides))
        )

    async def stop_tasks() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await store.aclose()

    service = GrpcService(
        name="ratelimit",
        host=settings.host,
        port=settings.port,
        services=[(ratelimit_pb2.DESCRIPTOR.services_by_name["RateLimitService"], servicer)],
        on_stop=[stop_tasks],
        grace_s=settings.grace_s,
    )
    await service.run(stop)


def main() -> None:
    settings = config.load()
    set_cpu_priority(settings.nice, "INTERLOCK_RATELIMIT_NICE")
    setup_logging("ratelimit", settings.log_level)
    provider = setup_tracing("ratelimit", settings.otlp_endpoint or None)
    try:
        run_event_loop(serve(settings))
    finally:
        provider.shutdown()


if __name__ == "__main__":
    main()
