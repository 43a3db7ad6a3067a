"""Trace-ingest without servers: OTLP and UsageEvent translation, the usage ingestor's
tracing and retries, and the span writer's batching, over a fake ClickHouse client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import propagate, trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from interlock.services.traceingest.adapters.clickhouse import (
    ClickHouseError,
    Column,
    QueryParams,
    columns_as_json_rows,
)
from interlock.services.traceingest.adapters.dead_letters import DeadLetter
from interlock.services.traceingest.adapters.retry import Backoff
from interlock.services.traceingest.adapters.span_writer import SpanWriter
from interlock.services.traceingest.adapters.store import TraceStore
from interlock.services.traceingest.adapters.usage_ingest import InboundRecord, UsageIngestor
from interlock.services.traceingest.api.otlp import spans_from_request
from interlock.services.traceingest.api.usage_events import decode_usage_event
from interlock.services.traceingest.domain import REDACTED, SpanRecord
from interlock.usage.v1.usage_pb2 import UsageEvent

FAST = Backoff(initial_s=0.01, max_s=0.02)


class FakeClickHouse:
    """Records inserts as decoded JSON rows; fails the next `failures` inserts."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.inserts: list[tuple[str, list[dict[str, Any]]]] = []
        self.commands: list[str] = []

    async def command(self, sql: str) -> None:
        self.commands.append(sql)

    async def insert_json_rows(
        self, table: str, columns: Sequence[str], payload: bytes, settings: QueryParams | None = None
    ) -> None:
        if table.endswith(".schema_migrations"):
            return  # migration bookkeeping; these tests watch the data inserts
        if self.failures:
            self.failures -= 1
            raise ClickHouseError("clickhouse is down")
        self.inserts.append((table, [json.loads(line) for line in payload.splitlines()]))

    async def insert_columns(
        self, table: str, columns: Sequence[Column], data: Sequence[Sequence[Any]], settings: QueryParams | None = None
    ) -> None:
        await self.insert_json_rows(table, [name for name, _ in columns], columns_as_json_rows(columns, data), settings)

    async def select(self, sql: str, params: QueryParams) -> list[list[Any]]:
        return []

    async def close(self) -> None:
        pass


class FakeDeadLetters:
    def __init__(self) -> None:
        self.sent: list[DeadLetter] = []

    async def start(self) -> None:
        pass

    async def send(self, letters: Sequence[DeadLetter]) -> None:
        self.sent.extend(letters)

    async def stop(self) -> None:
        pass


def _kv(key: str, value: AnyValue) -> KeyValue:
    return KeyValue(key=key, value=value)


def test_otlp_spans_become_redacted_records() -> None:
    span = Span(
        trace_id=bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736"),
        span_id=bytes.fromhex("00f067aa0ba902b7"),
        parent_span_id=bytes.fromhex("1111111111111111"),
        name="POST /v1/chat",
        kind=Span.SPAN_KIND_CLIENT,
        start_time_unix_nano=1_700_000_000_123_456_789,
        end_time_unix_nano=1_700_000_000_223_456_789,
        status=Status(code=Status.STATUS_CODE_ERROR, message="boom"),
        attributes=[
            _kv("http.request.header.authorization", AnyValue(string_value="Bearer sk-secret")),
            _kv("gen_ai.usage.input_tokens", AnyValue(int_value=12)),
            _kv("retry", AnyValue(bool_value=True)),
            _kv("ratio", AnyValue(double_value=0.5)),
            _kv("models", AnyValue(array_value=ArrayValue(values=[AnyValue(string_value="a")]))),
            _kv(
                "headers",
                AnyValue(
                    kvlist_value=KeyValueList(
                        values=[_kv("cookie", AnyValue(string_value="s=1")), _kv("accept", AnyValue(string_value="*"))]
                    )
                ),
            ),
        ],
    )
    bad = Span(trace_id=b"\x01" * 8, span_id=b"\x02" * 8, name="short trace id")
    request = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(attributes=[_kv("service.name", AnyValue(string_value="router"))]),
                scope_spans=[ScopeSpans(scope=InstrumentationScope(name="interlock.router"), spans=[span, bad])],
            )
        ]
    )
    records, rejected = spans_from_request(request)
    assert rejected == 1
    assert records == [
        SpanRecord(
            trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
            span_id="00f067aa0ba902b7",
            parent_span_id="1111111111111111",
            service_name="router",
            name="POST /v1/chat",
            kind="CLIENT",
            start_time_ns=1_700_000_000_123_456_789,
            end_time_ns=1_700_000_000_223_456_789,
            status_code="ERROR",
            status_message="boom",
            scope_name="interlock.router",
            attributes={
                "http.request.header.authorization": REDACTED,
                "gen_ai.usage.input_tokens": "12",
                "retry": "true",
                "ratio": "0.5",
                "models": '["a"]',
                "headers": f'{{"cookie":"{REDACTED}","accept":"*"}}',
            },
            resource_attributes={"service.name": "router"},
        )
    ]


def test_usage_event_decodes_every_field() -> None:
    event = UsageEvent(
        event_id="req-1",
        org="acme",
        project="chat",
        developer="dev",
        api_key_id="key_1",
        provider="openai",
        model="gpt-4o-mini",
        input_tokens=10,
        output_tokens=5,
        cost_nanos=1234,
        status="ok",
        occurred_at=Timestamp(seconds=1_700_000_000, nanos=123_000_000),
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        run_id="run-9",
        agent="planner",
    )
    record = decode_usage_event(event.SerializeToString())
    assert record.occurred_at_ms == 1_700_000_000_123
    assert (record.event_id, record.org, record.run_id, record.agent, record.cost_nanos) == (
        "req-1",
        "acme",
        "run-9",
        "planner",
        1234,
    )


def _tracer() -> tuple[trace.Tracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("test"), exporter


def _record(tracer: trace.Tracer, event_id: str) -> tuple[InboundRecord, trace.SpanContext]:
    """A record as a producer would send it: its publish span's context in the headers."""
    with tracer.start_as_current_span("interlock.usage.v1 publish", kind=SpanKind.PRODUCER) as span:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
    event = UsageEvent(event_id=event_id, org="acme", project="chat", cost_nanos=5)
    headers = [(k, v.encode()) for k, v in carrier.items()]
    return InboundRecord(event_id, event.SerializeToString(), headers), span.get_span_context()


async def test_ingest_traces_each_record_under_its_producer_and_retries_until_stored() -> None:
    tracer, exporter = _tracer()
    fake = FakeClickHouse(failures=2)
    ingestor = UsageIngestor(
        TraceStore(fake, "interlock"), decode_usage_event, process_span_name="p process", backoff=FAST, tracer=tracer
    )
    (first, first_parent), (second, second_parent) = _record(tracer, "e1"), _record(tracer, "e2")
    poison = InboundRecord("junk", b"\xff\xff not protobuf", [])

    letters = FakeDeadLetters()
    ingestor.dead_letters = letters
    assert await ingestor.ingest([first, poison, second], asyncio.Event())

    assert [(d.key, d.value) for d in letters.sent] == [("junk", b"\xff\xff not protobuf")]
    assert letters.sent[0].reason.startswith("DecodeError")

    assert [[row["event_id"] for row in rows] for _, rows in fake.inserts] == [["e1", "e2"]]
    spans = exporter.get_finished_spans()
    process = [s for s in spans if s.name == "p process"]
    inserts = [s for s in spans if s.name == "clickhouse insert usage_events"]
    assert len(process) == 3  # the poison record is traced too, as an error
    assert len(inserts) == 3  # two failed attempts, then the one that landed
    by_event = {s.attributes.get("interlock.usage.event_id"): s for s in process if s.attributes}
    for event_id, parent in (("e1", first_parent), ("e2", second_parent)):
        span = by_event[event_id]
        assert span.kind is SpanKind.CONSUMER
        assert span.parent is not None and span.parent.span_id == parent.span_id
        assert span.context.trace_id == parent.trace_id
    landed = inserts[-1]
    assert landed.status.is_ok
    assert landed.kind is SpanKind.CLIENT
    assert landed.parent is not None and landed.parent.span_id == by_event["e1"].context.span_id
    assert [link.context.span_id for link in landed.links] == [by_event["e2"].context.span_id]
    assert landed.attributes is not None
    assert landed.attributes["db.system"] == "clickhouse"
    assert landed.attributes["db.collection.name"] == "usage_events"
    assert landed.attributes["db.operation.batch.size"] == 2
    assert not inserts[0].status.is_ok
    # Each record's processing span stays open until its insert landed.
    assert by_event["e1"].end_time is not None and landed.end_time is not None
    assert by_event["e1"].end_time >= landed.end_time


async def test_ingest_gives_up_only_when_stopping() -> None:
    tracer, _ = _tracer()
    fake = FakeClickHouse(failures=10_000)
    ingestor = UsageIngestor(
        TraceStore(fake, "interlock"), decode_usage_event, process_span_name="p", backoff=FAST, tracer=tracer
    )
    stop = asyncio.Event()
    record, _ = _record(tracer, "e1")
    task = asyncio.create_task(ingestor.ingest([record], stop))
    await asyncio.sleep(0.1)
    assert not task.done()  # still retrying: the batch is never dropped while running
    stop.set()
    assert await asyncio.wait_for(task, 5) is False
    assert fake.inserts == []


def _span(i: int) -> SpanRecord:
    return SpanRecord(f"{i:032x}", f"{i:016x}", "", "svc", f"s{i}", "INTERNAL", i, i + 1, "UNSET")


async def test_span_writer_flushes_on_size_and_on_interval_and_keeps_spans_while_down() -> None:
    fake = FakeClickHouse(failures=1)
    writer = SpanWriter(TraceStore(fake, "interlock"), batch_size=3, flush_interval_s=0.05, backoff=FAST)
    await writer.start()
    try:
        assert writer.offer([_span(i) for i in range(7)])
        for _ in range(100):
            if writer.buffered == 0:
                break
            await asyncio.sleep(0.02)
        # The first attempt failed; nothing was lost and batches kept their order.
        assert [[r["name"] for r in rows] for _, rows in fake.inserts] == [
            ["s0", "s1", "s2"],
            ["s3", "s4", "s5"],
            ["s6"],
        ]
    finally:
        await writer.stop()


async def test_span_writer_refuses_when_full_and_flushes_on_stop() -> None:
    fake = FakeClickHouse()
    writer = SpanWriter(TraceStore(fake, "interlock"), batch_size=100, flush_interval_s=60, buffer_limit=5)
    await writer.start()
    assert writer.offer([_span(i) for i in range(5)])
    assert not writer.offer([_span(9)])
    await writer.stop()
    assert sum(len(rows) for _, rows in fake.inserts) == 5
    assert not writer.offer([_span(10)])
