"""Budget service process: wiring only."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from interlock._idle import set_cpu_policy
from interlock._server import GrpcService, run_event_loop, set_cpu_priority
from interlock._telemetry import setup_logging, setup_tracing
from interlock.budget.v1 import budget_pb2
from interlock.services.budget import config
from interlock.services.budget.adapters.ledger import BudgetLedger
from interlock.services.budget.adapters.outbox_publisher import OutboxPublisher
from interlock.services.budget.adapters.sqlite_ledger import SqliteLedger
from interlock.services.budget.adapters.usage_sink import KafkaUsageSink, SpoolUsageSink, UsageSink
from interlock.services.budget.api.servicer import BudgetServicer


def open_ledger(settings: config.BudgetSettings) -> BudgetLedger:
    if settings.database_url:
        from interlock.services.budget.adapters.postgres_ledger import PostgresLedger

        return PostgresLedger(settings.database_url)
    return SqliteLedger(Path(settings.db_path))


async def serve(settings: config.BudgetSettings, stop: asyncio.Event | None = None) -> None:
    ledger = open_ledger(settings)
    sink: UsageSink
    alert_sink: UsageSink
    if settings.kafka_bootstrap:
        sink = KafkaUsageSink(settings.kafka_bootstrap, settings.usage_topic)
        alert_sink = KafkaUsageSink(settings.kafka_bootstrap, settings.alerts_topic)
    else:
        sink = SpoolUsageSink(Path(settings.spool_path), settings.usage_topic)
        # Alerts get their own spool: the usage spool's reader expects usage events only.
        alert_sink = SpoolUsageSink(Path(settings.alerts_spool_path), settings.alerts_topic)
    publisher: OutboxPublisher | None = None

    def on_commit() -> None:
        if publisher is not None:
            publisher.notify()

    servicer = BudgetServicer(
        ledger,
        settings.reservation_ttl_s,
        on_commit=on_commit,
        lease_ttl_s=settings.lease_ttl_s,
        lease_max_share=settings.lease_max_share,
    )
    publisher = OutboxPublisher(
        ledger, sink, servicer.run_in_ledger_thread, alert_sink=alert_sink, linger_s=settings.publish_linger_s
    )
    expiry: asyncio.Task[None] | None = None

    async def start() -> None:
        nonlocal expiry
        await publisher.start()
        expiry = asyncio.create_task(servicer.expire_loop(settings.expire_interval_s), name="reservation-expiry")

    async def stop_all() -> None:
        if expiry is not None:
            expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await expiry
        await publisher.stop()
        servicer.shutdown()
        ledger.close()

    service = GrpcService(
        name="budget",
        host=settings.host,
        port=settings.port,
        services=[(budget_pb2.DESCRIPTOR.services_by_name["BudgetService"], servicer)],
        on_start=[start],
        on_stop=[stop_all],
        grace_s=settings.grace_s,
    )
    await service.run(stop)


def main() -> None:
    settings = config.load()
    set_cpu_priority(settings.nice, "INTERLOCK_BUDGET_NICE")
    setup_logging("budget", settings.log_level)
    set_cpu_policy(settings.cpu_policy, "INTERLOCK_BUDGET_CPU_POLICY")
    provider = setup_tracing("budget", settings.otlp_endpoint or None)
    try:
        run_event_loop(serve(settings))
    finally:
        provider.shutdown()


if __name__ == "__main__":
    main()
