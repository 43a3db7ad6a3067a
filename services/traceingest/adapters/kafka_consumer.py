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
from interlock.services.traceingest.adapters.usage_ingest import InboundRecord, PreparedBatch, UsageIngestor

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
        linger_s: float = 0.0,
        backoff: Backoff = DEFAULT_BACKOFF,
        prepare: Callable[[], Awaitable[object]] | None = None,
        receive_spans: bool = True,
    ) -> None:
        self.receive_spans = receive_spans
        """Let the aiokafka instrumentation open its receive span per record (about half of this
        consumer's CPU per event). Off, each record is still traced by its processing span."""
        self.prepare = prepare
        """Run before consuming, retried with the connection (creates the topics)."""
        self.bootstrap = bootstrap
        self.topic = topic
        self.group_id = group_id
        self.ingestor = ingestor
        self.max_records = max_records
        self.poll_timeout_ms = poll_timeout_ms
        self.linger_s = linger_s
        """How long a batch short of `max_records` keeps fetching before it is stored: a trickle
        of events is then stored by a few INSERTs a second rather than one per fetch."""
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
        # Pipelined: batch N is stored while batch N+1 is fetched, decoded and traced. Stores run
        # one at a time in offset order (a batch's copy check reads what the one before stored),
        # and a batch's offsets are committed only after it is stored.
        in_flight: tuple[dict[Any, list[Any]], asyncio.Task[bool]] | None = None
        # The instrumentation wraps getmany; its original is the unwrapped `__wrapped__`.
        getmany = consumer.getmany if self.receive_spans else getattr(consumer.getmany, "__wrapped__", consumer.getmany)
        try:
            while not self._stop.is_set():
                batches: dict[Any, list[Any]] = {}
                prepared: PreparedBatch | None = None
                try:
                    await self._fetch(getmany, batches)
                    if batches:
                        prepared = self.ingestor.prepare(self._inbound(batches))
                except Exception as exc:  # noqa: BLE001 - keep consuming; never skip a batch
                    failures = self._failed(exc, failures)
                    self._rewind(consumer, batches)  # the batch being stored goes on
                    await sleep_unless(self._stop, self.backoff.delay(failures))
                    continue
                if in_flight is not None:
                    stored_batches, storing = in_flight
                    in_flight = None
                    try:
                        stored = await storing
                    except Exception as exc:  # noqa: BLE001 - read both batches again, older first
                        failures = self._failed(exc, failures)
                        self.ingestor.abandon(prepared)
                        self._rewind(consumer, batches)
                        self._rewind(consumer, stored_batches)
                        await sleep_unless(self._stop, self.backoff.delay(failures))
                        continue
                    if not stored:
                        self.ingestor.abandon(prepared)
                        return  # stopping: leave the batches uncommitted for the next consumer
                    failures = 0
                    await self._commit(consumer, _next_offsets(stored_batches))
                if prepared is not None:
                    storing = asyncio.create_task(self.ingestor.store_prepared(prepared, self._stop))
                    in_flight = (batches, storing)
        finally:
            try:
                if in_flight is not None:
                    # Stopping with a batch in hand: it is stored (or given up) first, then committed.
                    stored_batches, storing = in_flight
                    try:
                        if await storing:
                            await self._commit(consumer, _next_offsets(stored_batches))
                    except Exception as exc:  # noqa: BLE001 - uncommitted: the next consumer reads it again
                        log.warning("usage batch not stored at stop", extra={"fields": {"error": str(exc)}})
            finally:
                await consumer.stop()

    async def _fetch(self, getmany: Any, batches: dict[Any, list[Any]]) -> None:
        """Fetch into `batches` (filled in place, so a failure midway rewinds what was fetched):
        the records there are, then, while short of `max_records`, those arriving within
        `linger_s` of the first."""
        batches.update(await getmany(timeout_ms=self.poll_timeout_ms, max_records=self.max_records))
        if not batches or self.linger_s <= 0:
            return
        count = sum(len(records) for records in batches.values())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.linger_s
        while count < self.max_records and not self._stop.is_set():
            left_ms = int((deadline - loop.time()) * 1000)
            if left_ms <= 0:
                return
            more = await getmany(timeout_ms=min(left_ms, self.poll_timeout_ms), max_records=self.max_records - count)
            for tp, records in more.items():
                batches.setdefault(tp, []).extend(records)
                count += len(records)

    @staticmethod
    def _failed(exc: Exception, failures: int) -> int:
        log.error("usage batch failed; reading it again", exc_info=exc, extra={"fields": {"attempt": failures + 1}})
        return failures + 1

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


def _next_offsets(batches: dict[Any, list[Any]]) -> dict[Any, int]:
    """The offsets to commit once `batches` are stored: one past each partition's last record."""
    return {tp: records[-1].offset + 1 for tp, records in batches.items()}
