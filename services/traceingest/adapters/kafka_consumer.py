"""Consumes usage events from Kafka and stores them: at-least-once delivery, counted once.

Offsets are committed only after the batch's ClickHouse insert succeeded (and its bad
records reached the dead-letter topic); a batch that could not be stored is read again
(after a restart, a rebalance, or a seek back here), and the store drops the copies
before they are inserted (see `store.py`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from interlock.services.traceingest.adapters.retry import DEFAULT_BACKOFF, Backoff, log_if_crashed, sleep_unless
from interlock.services.traceingest.adapters.usage_ingest import InboundRecord, UsageIngestor

log = logging.getLogger("interlock.traceingest.kafka")


class KafkaUsageConsumer:
    """One aiokafka consumer in group `group_id` on `topic`, feeding a UsageIngestor."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        group_id: str,
        ingestor: UsageIngestor,
        *,
        max_records: int = 500,
        poll_timeout_ms: int = 200,
        backoff: Backoff = DEFAULT_BACKOFF,
        prepare: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.prepare = prepare
        """Run before consuming, retried with the connection (creates the topics)."""
        self.bootstrap = bootstrap
        self.topic = topic
        self.group_id = group_id
        self.ingestor = ingestor
        self.max_records = max_records
        self.poll_timeout_ms = poll_timeout_ms
        self.backoff = backoff
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._consumer: Any = None

    async def start(self) -> None:
        # Connecting happens in the task: a broker that is down at start is waited for, not fatal.
        self._task = asyncio.create_task(self._run(), name="interlock-usage-kafka-consumer")
        self._task.add_done_callback(log_if_crashed)

    async def stop(self) -> None:
        """Stop after the batch in hand is stored and committed (or given up), then leave the group."""
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _connect(self) -> Any:
        from aiokafka import AIOKafkaConsumer

        failures = 0
        while not self._stop.is_set():
            consumer = AIOKafkaConsumer(
                self.topic,
                bootstrap_servers=self.bootstrap,
                group_id=self.group_id,
                client_id="interlock-trace-ingest",
                enable_auto_commit=False,
                auto_offset_reset="earliest",
            )
            try:
                if self.prepare is not None:
                    await self.prepare()
                await consumer.start()
            except Exception as exc:  # noqa: BLE001 - the broker may come up later
                failures += 1
                await consumer.stop()
                log.warning(
                    "kafka unavailable; retrying",
                    extra={"fields": {"bootstrap": self.bootstrap, "error": str(exc), "attempt": failures}},
                )
                await sleep_unless(self._stop, self.backoff.delay(failures))
                continue
            log.info("consuming usage events", extra={"fields": {"topic": self.topic, "group": self.group_id}})
            return consumer
        return None

    async def _run(self) -> None:
        consumer = await self._connect()
        if consumer is None:
            return
        failures = 0
        try:
            while not self._stop.is_set():
                batches: dict[Any, list[Any]] = {}
                try:
                    batches = await consumer.getmany(timeout_ms=self.poll_timeout_ms, max_records=self.max_records)
                    if not batches:
                        continue
                    if not await self.ingestor.ingest(self._inbound(batches), self._stop):
                        return  # stopping: leave the batch uncommitted for the next consumer
                    failures = 0
                except Exception as exc:  # noqa: BLE001 - keep consuming; never skip a batch
                    failures += 1
                    log.error(
                        "usage batch failed; reading it again",
                        exc_info=exc,
                        extra={"fields": {"attempt": failures}},
                    )
                    self._rewind(consumer, batches)
                    await sleep_unless(self._stop, self.backoff.delay(failures))
                    continue
                await self._commit(consumer, {tp: records[-1].offset + 1 for tp, records in batches.items()})
        finally:
            await consumer.stop()

    def _rewind(self, consumer: Any, batches: dict[Any, list[Any]]) -> None:
        for tp, records in batches.items():
            try:
                consumer.seek(tp, records[0].offset)
            except Exception as exc:  # noqa: BLE001 - e.g. revoked: its new owner reads from the commit
                log.warning("cannot rewind partition", extra={"fields": {"partition": str(tp), "error": str(exc)}})

    async def _commit(self, consumer: Any, offsets: dict[Any, int]) -> None:
        try:
            await consumer.commit(offsets)
        except Exception as exc:  # noqa: BLE001 - stored already; a redelivery collapses in ClickHouse
            log.warning("offset commit failed; events may be delivered again", extra={"fields": {"error": str(exc)}})

    def _inbound(self, batches: dict[Any, list[Any]]) -> list[InboundRecord]:
        inbound = []
        for records in batches.values():
            for record in records:
                key = record.key.decode("utf-8", "replace") if record.key is not None else ""
                inbound.append(
                    InboundRecord(
                        key=key,
                        value=record.value or b"",
                        headers=list(record.headers or ()),
                        attributes={
                            "messaging.system": "kafka",
                            "messaging.destination.name": record.topic,
                            "messaging.consumer.group.name": self.group_id,
                            "messaging.destination.partition.id": str(record.partition),
                            "messaging.kafka.offset": record.offset,
                            "messaging.kafka.message.key": key,
                        },
                    )
                )
        return inbound
