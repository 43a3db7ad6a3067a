"""Drains the ledger's outbox into the sinks: usage events, then alert events; at-least-once, in commit order.

An event leaves the outbox only after the sink has it durably; a crash between the two
re-sends it, and consumers collapse repeats by event id. Budget replicas sharing one
PostgreSQL ledger each drain it, so a usage event may be published more than once too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import context, propagate

from interlock.services.budget.adapters.ledger import AlertEntry, BudgetLedger, OutboxEntry
from interlock.services.budget.adapters.usage_sink import OutgoingEvent, UsageSink
from interlock.services.budget.domain.usage import BudgetAlert, SettledUsage
from interlock.usage.v1 import usage_pb2

log = logging.getLogger("interlock.budget.outbox")

USAGE_SCHEMA_VERSION = 2
"""Layout of the UsageEvents written here (2: cache, reasoning, config version, latency, attempt)."""


def to_event(usage: SettledUsage) -> usage_pb2.UsageEvent:
    occurred = Timestamp()
    occurred.FromNanoseconds(int(usage.committed_at * 1e9))
    return usage_pb2.UsageEvent(
        event_id=usage.event_id,
        # The ledger keys attempts `id#n`; callers know the bare id.
        request_id=usage.request_id.partition("#")[0],
        org=usage.principal.org,
        project=usage.principal.project,
        developer=usage.principal.developer,
        api_key_id=usage.principal.api_key_id,
        provider=usage.provider,
        model=usage.model,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cost_nanos=usage.cost_nanos,
        status="ok",
        occurred_at=occurred,
        trace_id=usage.trace_id,
        run_id=usage.run_id,
        agent=usage.agent,
        config_version=str(usage.details.get("config_version", "")),
        cached_input_tokens=int(usage.details.get("cached_input_tokens", 0)),
        reasoning_tokens=int(usage.details.get("reasoning_tokens", 0)),
        cache_write_tokens=int(usage.details.get("cache_write_tokens", 0)),
        latency_ms=int(usage.details.get("latency_ms", 0)),
        attempt=int(usage.details.get("attempt", 0)),
        provider_attempts=int(usage.details.get("provider_attempts", 0)),
        schema_version=USAGE_SCHEMA_VERSION,
    )


def _timestamp(unix_s: float) -> Timestamp | None:
    if not unix_s:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(unix_s * 1e9))
    return ts


def to_alert_event(alert: BudgetAlert) -> usage_pb2.AlertEvent:
    return usage_pb2.AlertEvent(
        event_id=alert.alert_id,
        scope=alert.scope_key,
        threshold_pct=alert.threshold_pct,
        limit_nanos=alert.limit_nanos,
        committed_nanos=alert.committed_nanos,
        window=alert.window.value,
        window_start=_timestamp(alert.window_start),
        reset_at=_timestamp(alert.reset_at),
        request_id=alert.request_id,
        occurred_at=_timestamp(alert.occurred_at),
    )


class OutboxPublisher:
    def __init__(
        self,
        ledger: BudgetLedger,
        sink: UsageSink,
        run_in_ledger_thread: Callable[..., asyncio.Future[object]],
        batch_size: int = 200,
        alert_sink: UsageSink | None = None,
        linger_s: float = 0.0,
    ) -> None:
        """`linger_s`: once woken by a commit, wait this long so the commits arriving meanwhile
        leave in the same publish (one read, one spool transaction or Kafka round trip, one
        mark) instead of one each."""
        self._ledger = ledger
        self._linger_s = linger_s
        self._sink = sink
        self._alert_sink = alert_sink
        self._run = run_in_ledger_thread
        self._batch_size = batch_size
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def notify(self) -> None:
        """A commit wrote an outbox row: publish soon."""
        self._wake.set()

    async def start(self) -> None:
        await self._sink.start()
        if self._alert_sink is not None:
            await self._alert_sink.start()
        self._task = asyncio.create_task(self._run_loop(), name="outbox-publisher")

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            await self._task
        await self._sink.stop()
        if self._alert_sink is not None:
            await self._alert_sink.stop()

    async def _run_loop(self) -> None:
        backoff = 0.1
        while True:
            try:
                published = await self._drain_once()
                backoff = 0.1
            except Exception:
                log.exception("publishing usage events failed; will retry", extra={"fields": {"backoff_s": backoff}})
                if self._stopping.is_set():
                    return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if self._stopping.is_set() and published == 0:
                return
            if published >= self._batch_size:
                continue  # a full batch: more may be waiting
            # Drained. Wait for the next commit (or look again in a while), then let the
            # commits arriving together gather before the next drain.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=0.5)
            self._wake.clear()
            if self._linger_s > 0 and not self._stopping.is_set():
                # A stop cuts the linger short: what is pending leaves now.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=self._linger_s)

    async def _drain_once(self) -> int:
        entries: list[OutboxEntry] = await self._run(self._ledger.pending_events, self._batch_size)  # type: ignore[assignment]
        if not entries:
            return await self._drain_alerts()
        # Every pending event in one publish: under load one round trip (Kafka) or one spool
        # transaction carries the commits that queued while the previous batch was out.
        await self._sink.publish_many([_outgoing(entry) for entry in entries])
        await self._run(self._ledger.mark_published, [entry.seq for entry in entries], time.time())
        return len(entries) + await self._drain_alerts()

    async def _drain_alerts(self) -> int:
        if self._alert_sink is None:
            return 0
        alerts: list[AlertEntry] = await self._run(self._ledger.pending_alerts, self._batch_size)  # type: ignore[assignment]
        done: list[str] = []
        try:
            for entry in alerts:
                token = context.attach(propagate.extract(dict(entry.headers)))
                try:
                    value = to_alert_event(entry.alert).SerializeToString()
                    await self._alert_sink.publish(entry.alert.alert_id, value, [])
                finally:
                    context.detach(token)
                done.append(entry.alert.alert_id)
        finally:
            if done:
                await self._run(self._ledger.mark_alerts_published, done, time.time())
        return len(done)


def _outgoing(entry: OutboxEntry) -> OutgoingEvent:
    # Keyed by org/project: one project's events share a partition, so they keep their order
    # and copies of one event meet the same consumer (trace-ingest drops them). Produced
    # under the trace of the commit that wrote the event.
    principal = entry.usage.principal
    return OutgoingEvent(
        f"{principal.org}/{principal.project}", to_event(entry.usage).SerializeToString(), dict(entry.headers)
    )
