"""Where usage events go: Kafka at scale, the local durable spool when embedded."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from aiokafka import AIOKafkaProducer
from opentelemetry import propagate, trace

from interlock.spool import UsageSpool

_tracer = trace.get_tracer("interlock.budget")


class UsageSink(Protocol):
    async def start(self) -> None: ...

    async def publish(self, key: str, value: bytes, headers: Sequence[tuple[str, bytes]]) -> None:
        """Return only when the event is durably stored (Kafka acks=all, or spool fsync)."""
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

    async def stop(self) -> None:
        await self._producer.stop()


class SpoolUsageSink:
    """Appends to the spool file that trace-ingest tails; traced like a Kafka produce."""

    def __init__(self, path: Path, topic: str) -> None:
        self.topic = topic
        self._spool = UsageSpool(path)

    async def start(self) -> None:
        return None

    async def publish(self, key: str, value: bytes, headers: Sequence[tuple[str, bytes]]) -> None:
        with _tracer.start_as_current_span(f"{self.topic} publish", kind=trace.SpanKind.PRODUCER) as span:
            span.set_attribute("messaging.system", "interlock.spool")
            span.set_attribute("messaging.destination.name", self.topic)
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            merged = [(k, v) for k, v in headers if k not in carrier]
            merged += [(k, v.encode()) for k, v in carrier.items()]
            await self._spool.append(key, value, merged)

    async def stop(self) -> None:
        self._spool.close()
