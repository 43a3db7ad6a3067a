"""Forwards the spans trace-ingest receives to Jaeger's OTLP/gRPC receiver, best effort.

Jaeger is a viewer, not the record: ClickHouse is. So forwarding never blocks or fails
an Export. Requests wait in a bounded queue and go out in batches from a background
task; while Jaeger is slow or down the queue is kept and retried with backoff, and once
it holds `queue_limit` spans, newer spans are dropped for Jaeger only (counted and
logged; they are still in ClickHouse).

Nothing on this path makes spans: tracing the forwarder would feed its own input.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time

import grpc
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from interlock.services.traceingest.adapters.retry import DEFAULT_BACKOFF, Backoff, log_if_crashed, sleep_unless

log = logging.getLogger("interlock.traceingest.jaeger")

# Jaeger's OTLP receiver takes 4 MiB messages by default; the same bound on our side.
_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# At most one "dropping spans" log line this often, with the running count.
_DROP_LOG_EVERY_S = 10.0


class JaegerForwarder:
    """A bounded queue of OTLP requests and the task that exports them to Jaeger."""

    def __init__(
        self,
        endpoint: str,
        *,
        batch_size: int = 1000,
        flush_interval_s: float = 0.2,
        queue_limit: int = 20_000,
        timeout_s: float = 5.0,
        backoff: Backoff = DEFAULT_BACKOFF,
        stop_flush_timeout_s: float = 2.0,
    ) -> None:
        self.endpoint = endpoint
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.queue_limit = queue_limit
        self.timeout_s = timeout_s
        self.backoff = backoff
        self.stop_flush_timeout_s = stop_flush_timeout_s
        self._queue: collections.deque[tuple[trace_service_pb2.ExportTraceServiceRequest, int]] = collections.deque()
        self._queued = 0
        self._forwarded = 0
        self._dropped = 0
        self._failures = 0
        self._last_drop_log = float("-inf")
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._channel: grpc.aio.Channel | None = None
        self._stub: trace_service_pb2_grpc.TraceServiceStub | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def queued_spans(self) -> int:
        """Spans waiting to be forwarded."""
        return self._queued

    @property
    def forwarded_spans(self) -> int:
        """Spans Jaeger accepted since start."""
        return self._forwarded

    @property
    def dropped_spans(self) -> int:
        """Spans never forwarded: the queue was full, or they were still queued at stop."""
        return self._dropped

    def offer(self, request: trace_service_pb2.ExportTraceServiceRequest, span_count: int) -> bool:
        """Queue `request` (holding `span_count` spans); False when it was dropped instead. Never blocks."""
        if span_count <= 0:
            return True
        if self._stop.is_set() or self._queued + span_count > self.queue_limit:
            self._drop(span_count, "queue full" if not self._stop.is_set() else "stopping")
            return False
        self._queue.append((request, span_count))
        self._queued += span_count
        if self._queued >= self.batch_size:
            self._wake.set()
        return True

    async def start(self) -> None:
        self._channel = grpc.aio.insecure_channel(
            self.endpoint,
            options=[
                ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
                # gRPC's reconnect backoff grows to 2 minutes; Jaeger back after an outage
                # should get spans again within seconds.
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 2000),
            ],
        )
        self._stub = trace_service_pb2_grpc.TraceServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._task = asyncio.create_task(self._run(), name="interlock-jaeger-forwarder")
        self._task.add_done_callback(log_if_crashed)

    async def stop(self) -> None:
        """Take no more spans, forward what is queued (for at most stop_flush_timeout_s), close."""
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            await self._task
        deadline = time.monotonic() + self.stop_flush_timeout_s
        while self._queue and self._stub is not None and time.monotonic() < deadline:
            if not await self._send_once(min(self.timeout_s, max(0.1, deadline - time.monotonic()))):
                break
        if self._queue:
            self._drop(self._queued, "stopping")
            self._queue.clear()
            self._queued = 0
        if self._channel is not None:
            await self._channel.close()
        log.info(
            "jaeger forwarder stopped",
            extra={"fields": {"forwarded_spans": self._forwarded, "dropped_spans": self._dropped}},
        )

    async def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.flush_interval_s)
            self._wake.clear()
            while self._queue and not self._stop.is_set():
                if not await self._send_once(self.timeout_s):
                    await sleep_unless(self._stop, self.backoff.delay(self._failures))
                    break

    def _next_batch(self) -> tuple[trace_service_pb2.ExportTraceServiceRequest, int, int]:
        """The oldest queued requests merged into one: (request, how many queued entries, spans)."""
        batch = trace_service_pb2.ExportTraceServiceRequest()
        entries = spans = size = 0
        for request, count in self._queue:
            request_size = request.ByteSize()
            if entries and (spans + count > self.batch_size or size + request_size > _MAX_MESSAGE_BYTES):
                break
            batch.resource_spans.extend(request.resource_spans)
            entries += 1
            spans += count
            size += request_size
        return batch, entries, spans

    async def _send_once(self, timeout_s: float) -> bool:
        """Export the oldest batch; True when Jaeger took it, False (batch kept) when the call failed."""
        assert self._stub is not None
        batch, entries, spans = self._next_batch()
        try:
            with suppress_instrumentation():
                response = await self._stub.Export(batch, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            self._failures += 1
            if self._failures == 1:
                # Once per outage; the recovery line below closes it.
                log.warning(
                    "jaeger export failed; keeping spans and retrying",
                    extra={"fields": {"endpoint": self.endpoint, "code": exc.code().name, "queued": self._queued}},
                )
            return False
        for _ in range(entries):
            self._queue.popleft()
        self._queued -= spans
        rejected = response.partial_success.rejected_spans
        self._forwarded += spans - rejected
        if rejected:
            self._dropped += rejected
            log.warning(
                "jaeger rejected spans",
                extra={"fields": {"rejected": rejected, "reason": response.partial_success.error_message}},
            )
        if self._failures:
            log.info("jaeger export recovered", extra={"fields": {"failed_attempts": self._failures}})
            self._failures = 0
        return True

    def _drop(self, spans: int, reason: str) -> None:
        self._dropped += spans
        now = time.monotonic()
        if now - self._last_drop_log >= _DROP_LOG_EVERY_S:
            self._last_drop_log = now
            log.warning(
                "dropping spans for jaeger (still stored in ClickHouse)",
                extra={"fields": {"reason": reason, "spans": spans, "dropped_total": self._dropped}},
            )
