"""Where usage records that can never be stored go: a dead-letter topic, with the reason.

A record that does not decode as a UsageEvent, or decodes to a row that would corrupt
sums, is published to `<topic>.dlq` (or a spool file beside the usage spool when
embedded) with headers saying why and where it came from; the batch around it is stored
and committed as usual, so one bad record never blocks the rest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from opentelemetry.util.types import AttributeValue

from interlock.spool import UsageSpool

REASON_HEADER = "interlock.dlq.reason"
SOURCE_HEADER = "interlock.dlq.source"
"""`<topic>/<partition>/<offset>` of the original record (spool: `<topic>/spool/<offset>`)."""


@dataclass(frozen=True)
class DeadLetter:
    """A rejected record as it arrived, and why it was rejected."""

    key: str
    value: bytes
    headers: Sequence[tuple[str, bytes]]
    reason: str
    attributes: Mapping[str, AttributeValue]

    def dlq_headers(self) -> list[tuple[str, bytes]]:
        a = self.attributes
        topic = a.get("messaging.destination.name", "")
        partition = a.get("messaging.destination.partition.id", "spool")
        offset = a.get("messaging.kafka.offset", a.get("interlock.spool.offset", ""))
        kept = [(k, v) for k, v in self.headers if k not in (REASON_HEADER, SOURCE_HEADER)]
        # Headers are bytes on the wire; the reason is cut so one record cannot bloat them.
        return [
            *kept,
            (REASON_HEADER, self.reason[:1000].encode()),
            (SOURCE_HEADER, f"{topic}/{partition}/{offset}".encode()),
        ]


class DeadLetterSink(Protocol):
    async def start(self) -> None: ...

    async def send(self, letters: Sequence[DeadLetter]) -> None:
        """Return only when every letter is durably stored; raise otherwise."""
        ...

    async def stop(self) -> None: ...


class KafkaDeadLetters:
    """An idempotent producer (acks=all) to the dead-letter topic."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self._producer: Any = None

    async def start(self) -> None:
        return None  # connects on first use: the broker may be down while trace-ingest starts

    async def _get(self) -> Any:
        if self._producer is None:
            from aiokafka import AIOKafkaProducer

            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                acks="all",
                enable_idempotence=True,
                client_id="interlock-trace-ingest-dlq",
            )
            await producer.start()
            self._producer = producer
        return self._producer

    async def send(self, letters: Sequence[DeadLetter]) -> None:
        producer = await self._get()
        futures = [
            await producer.send(self.topic, value=d.value, key=d.key.encode() or None, headers=d.dlq_headers())
            for d in letters
        ]
        for future in futures:
            await future

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


class SpoolDeadLetters:
    """Dead letters of embedded mode: a spool file (same format as the usage spool)."""

    def __init__(self, path: Path) -> None:
        self._spool = UsageSpool(path)
        self.path = path

    async def start(self) -> None:
        return None

    async def send(self, letters: Sequence[DeadLetter]) -> None:
        for d in letters:
            await self._spool.append(d.key, d.value, d.dlq_headers())

    async def stop(self) -> None:
        self._spool.close()
