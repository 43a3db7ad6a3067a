"""Stores consumed usage records in ClickHouse, tracing each record under its producer's trace.

The Kafka and spool consumers hand over a batch; this module decodes it, opens one CONSUMER
processing span per record as a child of the W3C context in the record's headers (the
instrumentation's receive span has ended by then), and writes the batch with one INSERT
under a CLIENT span whose parent is the first record's processing span and which links to
the others. Processing spans stay open until the insert landed, so each record's trace
covers produce, consume and store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from interlock.services.traceingest.adapters.dead_letters import DeadLetter, DeadLetterSink
from interlock.services.traceingest.adapters.retry import DEFAULT_BACKOFF, Backoff, retry_until_stopped
from interlock.services.traceingest.adapters.store import USAGE_TABLE, TraceStore
from interlock.services.traceingest.domain import UsageRecord

log = logging.getLogger("interlock.traceingest.usage")
_tracer = trace.get_tracer("interlock.services.traceingest")
_MAX_LINKS = 128
"""Links an insert span carries to the batch's other processing spans: the SDK's default limit
(OTEL_SPAN_LINK_COUNT_LIMIT), which drops the rest anyway; building them costs per record."""

Headers = Sequence[tuple[str, bytes]]


class HeaderGetter(Getter[Headers]):
    """Reads W3C context from Kafka-style record headers: (name, bytes) pairs."""

    def get(self, carrier: Headers, key: str) -> list[str] | None:
        wanted = key.lower()
        values = [bytes(v).decode("latin-1") for k, v in carrier if k.lower() == wanted and v is not None]
        return values or None

    def keys(self, carrier: Headers) -> list[str]:
        return [k for k, _ in carrier]


HEADER_GETTER = HeaderGetter()


@dataclass(frozen=True)
class InboundRecord:
    """A consumed record, whatever it came from."""

    key: str
    value: bytes
    headers: Headers
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)
    """Messaging attributes for the processing span (system, destination, offset...)."""


@dataclass(frozen=True)
class PreparedBatch:
    """Records decoded and traced, waiting to be stored."""

    rows: list[UsageRecord]
    spans: list[trace.Span]
    """Open processing spans of `rows`, in the same order; `store_prepared` ends them."""
    rejected: list[DeadLetter]
    """Records that can never be stored, for the dead-letter sink."""


class UsageIngestor:
    """Decodes usage records and inserts them, retrying while ClickHouse fails."""

    def __init__(
        self,
        store: TraceStore,
        decode: Callable[[bytes], UsageRecord],
        *,
        process_span_name: str,
        backoff: Backoff = DEFAULT_BACKOFF,
        tracer: trace.Tracer | None = None,
        dead_letters: DeadLetterSink | None = None,
    ) -> None:
        self.dead_letters = dead_letters
        self.tracer = tracer or _tracer
        self.store = store
        self.decode = decode
        self.process_span_name = process_span_name
        self.backoff = backoff

    async def ingest(self, records: Sequence[InboundRecord], stop: asyncio.Event) -> bool:
        """Store every valid record of `records`.

        True when they are in ClickHouse and the records that cannot be stored (retrying
        cannot fix them) are in the dead-letter sink. False when `stop` came first; then
        nothing may be committed, and the records will be delivered again.
        """
        return await self.store_prepared(self.prepare(records), stop)

    def prepare(self, records: Sequence[InboundRecord]) -> PreparedBatch:
        """Decode and check `records` and open their processing spans; no I/O, so a consumer
        can prepare its next batch while the previous one is being stored."""
        spans: list[trace.Span] = []
        rows: list[UsageRecord] = []
        rejected: list[DeadLetter] = []
        for record in records:
            # A record without headers has no producer context to extract: skip the propagators.
            parent = propagate.extract(record.headers, getter=HEADER_GETTER) if record.headers else Context()
            span = self.tracer.start_span(
                self.process_span_name,
                context=parent,
                kind=SpanKind.CONSUMER,
                attributes={**record.attributes, "messaging.operation.type": "process"},
            )
            try:
                row = self.decode(record.value)
                problems = row.problems()
                if problems:
                    raise ValueError("; ".join(problems))
            except Exception as exc:  # noqa: BLE001 - a poison record is skipped, never retried forever
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, "undecodable usage event"))
                with trace.use_span(span, end_on_exit=True):
                    log.error(
                        "usage record is not a valid UsageEvent; dead-lettered",
                        extra={"fields": {"key": record.key, "error": str(exc), **_loggable(record.attributes)}},
                    )
                reason = f"{type(exc).__name__}: {exc}"
                rejected.append(DeadLetter(record.key, record.value, record.headers, reason, record.attributes))
                continue
            span.set_attribute("interlock.usage.event_id", row.event_id)
            spans.append(span)
            rows.append(row)
        return PreparedBatch(rows, spans, rejected)

    def abandon(self, batch: PreparedBatch | None) -> None:
        """End the spans of a prepared batch that will not be stored now (it is read again)."""
        if batch is None:
            return
        for span in batch.spans:
            span.set_status(Status(StatusCode.ERROR, "not stored; will be redelivered"))
            span.end()

    async def store_prepared(self, batch: PreparedBatch, stop: asyncio.Event) -> bool:
        """Store a prepared batch; same answer as `ingest`. Batches of one consumer must be
        stored one after another, in order: the copy check of a batch reads what the batches
        before it stored."""
        rows, spans, rejected = batch.rows, batch.spans, batch.rejected
        if rows and not await self._insert(rows, spans, stop):
            return False
        if rejected and self.dead_letters is not None:
            sink = self.dead_letters

            async def send() -> None:
                await sink.send(rejected)

            return await retry_until_stopped(
                send, what=f"dead-lettering of {len(rejected)} usage records", backoff=self.backoff, stop=stop
            )
        return True

    async def _insert(self, rows: list[UsageRecord], spans: list[trace.Span], stop: asyncio.Event) -> bool:
        new = 0

        async def insert() -> None:
            nonlocal new
            with self.tracer.start_as_current_span(
                f"clickhouse insert {USAGE_TABLE}",
                context=trace.set_span_in_context(spans[0]),
                kind=SpanKind.CLIENT,
                links=[Link(s.get_span_context()) for s in spans[1 : 1 + _MAX_LINKS]],
                attributes={
                    "db.system": "clickhouse",
                    "db.system.name": "clickhouse",
                    "db.operation": "INSERT",
                    "db.operation.name": "INSERT",
                    "db.namespace": self.store.database,
                    "db.collection.name": USAGE_TABLE,
                    "db.operation.batch.size": len(rows),
                },
            ) as insert_span:
                new = await self.store.insert_usage(rows)
                insert_span.set_attribute("interlock.usage.new_events", new)

        stored = await retry_until_stopped(
            insert, what=f"insert of {len(rows)} usage events", backoff=self.backoff, stop=stop
        )
        for span in spans:
            if not stored:
                span.set_status(Status(StatusCode.ERROR, "not stored before stop; will be redelivered"))
            span.end()
        if stored:
            log.debug("stored usage events", extra={"fields": {"events": len(rows), "new": new}})
        return stored


def _loggable(attributes: Mapping[str, AttributeValue]) -> dict[str, str]:
    return {k: str(v) for k, v in attributes.items()}
