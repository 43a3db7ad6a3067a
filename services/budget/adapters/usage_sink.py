"""Where usage events go: Kafka at scale, the local durable spool when embedded."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from aiokafka import AIOKafkaProducer
from opentelemetry import context, propagate, trace

from interlock.spool import UsageSpool

_tracer = trace.get_tracer("interlock.budget")


@dataclass(frozen=True)
class OutgoingEvent:
    """One event to publish, with the trace context (a W3C carrier) its produce span joins."""

    key: str
    value: bytes
    trace_carrier: Mapping[str, str] = field(default_factory=dict)


class UsageSink(Protocol):
    async def start(self) -> None: ...

    async def publish(self, key: str, value: bytes, headers: Sequence[tuple[str, bytes]]) -> None:
        """Return only when the event is durably stored (Kafka acks=all, or spool fsync)."""
        ...

    async def publish_many(self, events: Sequence[OutgoingEvent]) -> None:
        """Publish in order; return only when every one is durably stored. All or an error:
        on an error some may be stored (the outbox re-sends; consumers drop copies by id)."""
        ...

    async def stop(self) -> None: ...


class KafkaUsageSink:
    """Idempotent producer; the aiokafka instrumentation adds the produce span and traceparent."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            enable_idempotence=True,
            client_id="interlock-budget",
            linger_ms=2,
        )

    async def start(self) -> None:
        await self._producer.start()

    async def publish(self, key: str, value: bytes, headers: Sequence[tuple[str, bytes]]) -> None:
        await self._producer.send_and_wait(self.topic, value=value, key=key.encode(), headers=list(headers))

    async def publish_many(self, events: Sequence[OutgoingEvent]) -> None:
        # Every send is queued before any ack is awaited: the batch shares the producer's
        # linger and round trips instead of paying one each. Idempotence keeps per-partition order.
        acks = []
        for event in events:
            token = context.attach(propagate.extract(event.trace_carrier))
            try:
                acks.append(await self._producer.send(self.topic, value=event.value, key=event.key.encode()))
            finally:
                context.detach(token)
        await asyncio.gather(*acks)

    async def stop(self) -> None:
        await self._producer.stop()


def _with_trace_headers(headers: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """`headers` plus the current trace context (W3C traceparent), as a Kafka produce carries it."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    merged = [(k, v) for k, v in headers if k not in carrier]
    return merged + [(k, v.encode()) for k, v in carrier.items()]


class SpoolUsageSink:
    """Appends to the spool file that trace-ingest tails; traced like a Kafka produce."""

    def __init__(self, path: Path, topic: str) -> None:
        self.topic = topic
        self._spool = UsageSpool(path)

    async def start(self) -> None:
        return None

    def _produce_span(self) -> trace.Span:
        return _tracer.start_span(
            f"{self.topic} publish",
            kind=trace.SpanKind.PRODUCER,
            attributes={"messaging.system": "interlock.spool", "messaging.destination.name": self.topic},
        )

    async def publish(self, key: str, value: bytes, headers: Sequence[tuple[str, bytes]]) -> None:
        span = self._produce_span()
        with trace.use_span(span, end_on_exit=True):
            await self._spool.append(key, value, _with_trace_headers(headers))

    async def publish_many(self, events: Sequence[OutgoingEvent]) -> None:
        # One span per event under its own commit's trace, one spool transaction for them all.
        spans: list[trace.Span] = []
        records: list[tuple[str, bytes, Sequence[tuple[str, bytes]]]] = []
        for event in events:
            token = context.attach(propagate.extract(event.trace_carrier))
            try:
                span = self._produce_span()
                spans.append(span)
                with trace.use_span(span, end_on_exit=False):
                    records.append((event.key, event.value, _with_trace_headers(())))
            finally:
                context.detach(token)
        try:
            await self._spool.append_many(records)
        except BaseException as exc:
            for span in spans:
                span.record_exception(exc)
                span.set_status(trace.StatusCode.ERROR, str(exc))
            raise
        finally:
            for span in spans:
                span.end()

    async def stop(self) -> None:
        self._spool.close()
