"""Buffers spans from OTLP Export and writes them to ClickHouse in batches.

Writes happen when `batch_size` spans are waiting or every `flush_interval_s`. While
ClickHouse is down the buffer is kept and retried with backoff; once it holds
`buffer_limit` spans, `offer` refuses more, so Export answers UNAVAILABLE and the
exporter retries later instead of the spans being dropped here.

Nothing on this path makes spans: tracing the span writer would feed its own input.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from opentelemetry.instrumentation.utils import suppress_instrumentation

from interlock.services.traceingest.adapters.retry import DEFAULT_BACKOFF, Backoff, log_if_crashed, sleep_unless
from interlock.services.traceingest.adapters.store import TraceStore
from interlock.services.traceingest.domain import SpanRecord

log = logging.getLogger("interlock.traceingest.spans")


class SpanWriter:
    """The span buffer and its flush task."""

    def __init__(
        self,
        store: TraceStore,
        *,
        batch_size: int = 1000,
        flush_interval_s: float = 0.2,
        buffer_limit: int = 100_000,
        backoff: Backoff = DEFAULT_BACKOFF,
        stop_flush_timeout_s: float = 5.0,
    ) -> None:
        self.store = store
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.buffer_limit = buffer_limit
        self.backoff = backoff
        self.stop_flush_timeout_s = stop_flush_timeout_s
        self._buffer: list[SpanRecord] = []
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._failures = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def buffered(self) -> int:
        """Spans accepted but not yet written."""
        return len(self._buffer)

    def offer(self, spans: Sequence[SpanRecord]) -> bool:
        """Queue `spans` for writing; False (nothing queued) when the buffer is full or stopping."""
        if self._stop.is_set() or len(self._buffer) + len(spans) > self.buffer_limit:
            return False
        self._buffer.extend(spans)
        if len(self._buffer) >= self.batch_size:
            self._wake.set()
        return True

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="interlock-span-writer")
        self._task.add_done_callback(log_if_crashed)

    async def stop(self) -> None:
        """Refuse new spans, then write what is buffered (for at most stop_flush_timeout_s)."""
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            await self._task
        deadline = time.monotonic() + self.stop_flush_timeout_s
        while self._buffer and time.monotonic() < deadline:
            if not await self._flush_once():
                await asyncio.sleep(min(self.backoff.initial_s, max(0.0, deadline - time.monotonic())))
        if self._buffer:
            log.error("dropping unwritten spans at stop", extra={"fields": {"spans": len(self._buffer)}})
            self._buffer.clear()

    async def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.flush_interval_s)
            self._wake.clear()
            while self._buffer and not self._stop.is_set():
                if not await self._flush_once():
                    await sleep_unless(self._stop, self.backoff.delay(self._failures))
                    break

    async def _flush_once(self) -> bool:
        """Write the oldest batch; True when written, False (batch kept) when ClickHouse failed."""
        batch = self._buffer[: self.batch_size]
        try:
            with suppress_instrumentation():
                await self.store.insert_spans(batch)
        except Exception as exc:  # noqa: BLE001 - the batch is kept and retried
            self._failures += 1
            log.warning(
                "span insert failed; keeping spans and retrying",
                extra={"fields": {"error": str(exc), "spans": len(self._buffer), "attempt": self._failures}},
            )
            return False
        # Spans offered while the insert ran were appended after the batch.
        del self._buffer[: len(batch)]
        self._failures = 0
        return True
