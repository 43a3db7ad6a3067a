"""Consumes usage events from the local spool (embedded mode) and stores them.

Same contract as the Kafka consumer: the group's offset is committed only after the
ClickHouse insert succeeded, and records everyone has committed are pruned.
"""

from __future__ import annotations

import asyncio
import logging

from interlock.services.traceingest.adapters.retry import DEFAULT_BACKOFF, Backoff, log_if_crashed, sleep_unless
from interlock.services.traceingest.adapters.usage_ingest import InboundRecord, UsageIngestor
from interlock.spool import SpoolRecord, UsageSpool

log = logging.getLogger("interlock.traceingest.spool")


class SpoolUsageConsumer:
    """Polls `spool` every `poll_interval_s` as consumer group `group`.

    `destination` is the topic the events stand for, as the producer names it on its span.
    """

    def __init__(
        self,
        spool: UsageSpool,
        group: str,
        ingestor: UsageIngestor,
        *,
        destination: str = "interlock.usage.v1",
        max_records: int = 500,
        poll_interval_s: float = 0.1,
        backoff: Backoff = DEFAULT_BACKOFF,
    ) -> None:
        self.spool = spool
        self.group = group
        self.ingestor = ingestor
        self.destination = destination
        self.max_records = max_records
        self.poll_interval_s = poll_interval_s
        self.backoff = backoff
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        log.info("consuming usage events", extra={"fields": {"spool": str(self.spool.path), "group": self.group}})
        self._task = asyncio.create_task(self._run(), name="interlock-usage-spool-consumer")
        self._task.add_done_callback(log_if_crashed)

    async def stop(self) -> None:
        """Stop after the batch in hand is stored and committed (or given up), then close the spool."""
        self._stop.set()
        if self._task is not None:
            await self._task
        self.spool.close()

    async def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                records = await self.spool.read(self.group, self.max_records)
                if not records:
                    await sleep_unless(self._stop, self.poll_interval_s)
                    continue
                if not await self.ingestor.ingest([self._inbound(r) for r in records], self._stop):
                    return  # stopping: the batch stays uncommitted and is read again at the next start
                await self.spool.commit(self.group, records[-1].offset)
                await self.spool.prune()
                failures = 0
                if len(records) < self.max_records:
                    # A short batch means the spool is drained: let events gather for one
                    # interval, so a steady trickle is stored in a few INSERTs, not one per event.
                    await sleep_unless(self._stop, self.poll_interval_s)
            except Exception as exc:  # noqa: BLE001 - nothing was committed; the batch is read again
                failures += 1
                log.error("usage batch failed; reading it again", exc_info=exc, extra={"fields": {"attempt": failures}})
                await sleep_unless(self._stop, self.backoff.delay(failures))

    def _inbound(self, record: SpoolRecord) -> InboundRecord:
        return InboundRecord(
            key=record.key,
            value=record.value,
            headers=record.headers,
            attributes={
                "messaging.system": "interlock.spool",
                "messaging.destination.name": self.destination,
                "messaging.consumer.group.name": self.group,
                "interlock.spool.offset": record.offset,
                "messaging.message.key": record.key,
            },
        )
