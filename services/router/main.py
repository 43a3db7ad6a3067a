"""Router process: wiring only."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

from interlock._http import EmbeddedHttpServer
from interlock._server import GrpcService, run_event_loop, set_cpu_affinity, set_cpu_priority
from interlock._telemetry import setup_logging, setup_tracing
from interlock.pricing import NANOS_PER_USD
from interlock.router.v1 import router_pb2
from interlock.services.router import config
from interlock.services.router.adapters.budget_leases import LeasePolicy
from interlock.services.router.adapters.live_routing import LiveRouting, RoutingSources
from interlock.services.router.adapters.load_shedding import LoadShedder, SheddingPolicy
from interlock.services.router.adapters.mesh_clients import BudgetClient, RateLimitClient
from interlock.services.router.adapters.prompt_tokens import load_tokenizer
from interlock.services.router.api.http_facade import HttpFacade
from interlock.services.router.api.servicer import RouterServicer
from interlock.services.router.domain.chain import ChainExecutor
from interlock.services.router.domain.flow import ChatFlow
from interlock.services.router.domain.redaction import RedactionRules

log = logging.getLogger("interlock.router")


async def serve(settings: config.RouterSettings, stop: asyncio.Event | None = None) -> None:
    live = LiveRouting(RoutingSources(settings.routing_path, settings.price_overrides_path, settings.fake_provider_url))
    ratelimit = RateLimitClient(
        settings.ratelimit_target,
        settings.ratelimit_fail_open,
        settings.ratelimit_timeout_s,
        correct_in_background=True,
        lease_ms=settings.ratelimit_lease_ms,
        lease_max_requests=settings.ratelimit_lease_max_requests,
    )
    leases = LeasePolicy(
        slice_nanos=round(settings.budget_lease_usd * NANOS_PER_USD),
        ttl_s=settings.budget_lease_ttl_s,
        idle_s=settings.budget_lease_idle_s,
    )
    budget = BudgetClient(
        settings.budget_target,
        settings.auth_cache_ttl_s,
        leases,
        commit_after_answer=settings.commit_after_answer,
        background_commit_s=settings.background_commit_s,
        background_commit_linger_s=settings.background_commit_linger_s,
    )
    flow = ChatFlow(
        ratelimit,
        budget,
        ChainExecutor(clock=time.monotonic, rng=random.Random(), sleep=asyncio.sleep),
        RedactionRules.from_settings(settings.redact_patterns, settings.redact_fields),
    )
    shedder = LoadShedder(SheddingPolicy(max_in_flight=settings.max_in_flight, max_lag_s=settings.max_loop_lag_s))
    servicer = RouterServicer(live, flow, budget, shedder)
    facade = (
        EmbeddedHttpServer(
            HttpFacade(lambda: live.current, flow, budget.authenticate, shedder),
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

    watcher: asyncio.Task[None] | None = None

    async def start() -> None:
        nonlocal watcher
        # Before serving: the first call would otherwise wait ~0.1 s for the vocabulary.
        by = "cl100k" if load_tokenizer() else "UTF-8 byte bound"
        log.info("prompt tokens estimated", extra={"fields": {"by": by}})
        watcher = asyncio.create_task(live.watch(settings.reload_interval_s), name="routing-watch")
        shedder.start()
        await start_facade()

    async def close() -> None:
        shedder.stop()
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        await live.aclose()
        await ratelimit.aclose()
        await budget.aclose(commit_grace_s=settings.grace_s)

    service = GrpcService(
        name="router",
        host=settings.host,
        port=settings.port,
        services=[(router_pb2.DESCRIPTOR.services_by_name["RouterService"], servicer)],
        on_start=[start],
        on_draining=[stop_facade],
        on_stop=[close],
        grace_s=settings.grace_s,
        loop_port=settings.loop_grpc_port,
    )
    await service.run(stop)


def main() -> None:
    settings = config.load()
    set_cpu_priority(settings.nice, "INTERLOCK_ROUTER_NICE")
    set_cpu_affinity(settings.cpus, "INTERLOCK_ROUTER_CPUS")
    setup_logging("router", settings.log_level)
    # The mesh clients trace their own calls (no interceptors on the hot path).
    provider = setup_tracing("router", settings.otlp_endpoint or None, instrument_grpc_clients=False)
    try:
        run_event_loop(serve(settings))
    finally:
        provider.shutdown()


if __name__ == "__main__":
    main()
