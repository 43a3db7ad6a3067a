"""Trace-ingest against real Kafka and a real ClickHouse server, and in embedded mode.

The service runs in this process (GrpcService.run with a stop event on a free port);
usage events are produced as budget does (Kafka record or spool append with a W3C
traceparent header) and read back through ClickHouse and the service's own gRPC API.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import clickhouse_connect
import grpc
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from interlock.devservers import ClickHouseServer, free_port
from interlock.errors import InvalidArgumentError, from_rpc_error
from interlock.services.traceingest.config import TraceIngestSettings
from interlock.services.traceingest.domain import REDACTED
from interlock.services.traceingest.main import build_trace_ingest
from interlock.spool import UsageSpool
from interlock.traceingest.v1 import traceingest_pb2 as pb
from interlock.traceingest.v1.traceingest_pb2_grpc import TraceIngestServiceStub
from interlock.usage.v1.usage_pb2 import UsageEvent

if TYPE_CHECKING:
    from interlock.traceingest.v1.traceingest_pb2_grpc import TraceIngestServiceAsyncStub

pytestmark = pytest.mark.integration

T = TypeVar("T")
INSERT = "clickhouse insert usage_events"


def _name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


async def eventually(check: Callable[[], Awaitable[T | None]], within_s: float = 60.0, what: str = "condition") -> T:
    """Poll `check` until it returns something other than None/False."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        value = await check()
        if value is not None and value is not False:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.fixture
def service_tracing() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """A tracer provider for the in-process service (the global one stays untouched)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "trace-ingest"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def _producer_tracer() -> tuple[trace.Tracer, TracerProvider]:
    """A tracer for the test's own 'budget' spans, apart from the global provider."""
    provider = TracerProvider(resource=Resource.create({"service.name": "budget"}))
    return provider.get_tracer("test.budget"), provider


def _traced_headers(tracer: trace.Tracer, name: str) -> tuple[list[tuple[str, bytes]], ReadableSpan]:
    with tracer.start_as_current_span(name, kind=SpanKind.PRODUCER) as span:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
    assert "traceparent" in carrier
    assert isinstance(span, ReadableSpan)
    return [(k, v.encode()) for k, v in carrier.items()], span


def _event(org: str, model: str, cost: int, event_id: str | None = None, **more: Any) -> UsageEvent:
    return UsageEvent(
        event_id=event_id or _name("req"),
        org=org,
        project="chat",
        developer="dev-1",
        api_key_id="key_pub_1",
        provider="openai",
        model=model,
        input_tokens=100,
        output_tokens=10,
        cost_nanos=cost,
        status="ok",
        occurred_at=Timestamp(seconds=1_760_000_000, nanos=250_000_000),
        **more,
    )


@asynccontextmanager
async def running(
    settings: TraceIngestSettings, tracer_provider: TracerProvider | None = None
) -> AsyncIterator[tuple[TraceIngestServiceAsyncStub, int]]:
    """The service on a free port until the block ends, then a graceful stop."""
    service = build_trace_ingest(settings, tracer_provider=tracer_provider)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    while service.bound_port == 0:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.bound_port}")
    try:
        await asyncio.wait_for(channel.channel_ready(), 20)
        stub: Any = TraceIngestServiceStub(channel)  # the async stub, for an aio channel
        yield stub, service.bound_port
    finally:
        await channel.close()
        stop.set()
        await asyncio.wait_for(task, 60)


async def _export_spans(port: int, spans: Sequence[ReadableSpan]) -> None:
    # The OTLP exporter blocks; in a thread, so the service on this event loop can answer.
    def export() -> str:
        exporter = OTLPSpanExporter(endpoint=f"127.0.0.1:{port}", insecure=True)
        try:
            return exporter.export(spans).name
        finally:
            exporter.shutdown()

    assert await asyncio.to_thread(export) == "SUCCESS"


def _agent_spans(port: int, name: str) -> tuple[ReadableSpan, ReadableSpan]:
    """An app's root and child span, exported with the standard OTLP exporter (blocking: call in a thread)."""
    provider = TracerProvider(resource=Resource.create({"service.name": "agent-app"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"127.0.0.1:{port}", insecure=True)))
    tracer = provider.get_tracer("test.agent")
    with tracer.start_as_current_span(name, kind=SpanKind.SERVER) as root:
        root.set_attribute("http.request.header.authorization", "Bearer sk-test-0123456789abcdef")
        root.set_attribute("x-api-key", "il_live_secret")
        with tracer.start_as_current_span("llm call", kind=SpanKind.CLIENT) as child:
            child.set_attribute("gen_ai.usage.input_tokens", 12)
            child.set_attribute("tags", ["a", "b"])
    provider.shutdown()
    assert isinstance(root, ReadableSpan) and isinstance(child, ReadableSpan)
    return root, child


async def _trace_names(stub: TraceIngestServiceAsyncStub, trace_id: str, expected: set[str]) -> list[pb.Span]:
    async def check() -> list[pb.Span] | None:
        response = await stub.GetTrace(pb.GetTraceRequest(trace_id=trace_id))
        return list(response.spans) if expected <= {s.name for s in response.spans} else None

    return await eventually(check, what=f"spans {expected} in trace {trace_id}")


async def _committed(bootstrap: str, group: str, topic: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic and meta.offset > 0)


def _count(client: Any, sql: str, **params: str) -> int:
    return int(client.query(sql, parameters=params).result_rows[0][0])


def _settings(tmp_path: Path, **fields: Any) -> TraceIngestSettings:
    base = TraceIngestSettings(
        port=0,
        chdb_path=str(tmp_path / "chdb"),
        spool_path=str(tmp_path / "spool.db"),
        dlq_spool_path=str(tmp_path / "spool.dlq.db"),
        retry_initial_s=0.05,
        retry_max_s=0.5,
        grace_s=2.0,
    )
    return replace(base, **fields)


def _kafka_settings(
    tmp_path: Path, clickhouse_url: str, kafka_bootstrap: str, **fields: Any
) -> tuple[TraceIngestSettings, str, str, str]:
    """Kafka-mode settings of one test: its own database, topic and consumer group (returned too)."""
    database, topic, group = _name("it"), _name("usage"), _name("group")
    settings = _settings(
        tmp_path,
        clickhouse_url=clickhouse_url,
        database=database,
        kafka_bootstrap=kafka_bootstrap,
        usage_topic=topic,
        consumer_group=group,
        **fields,
    )
    return settings, database, topic, group


async def test_kafka_usage_lands_once_in_clickhouse_traced_and_summed(
    kafka_bootstrap: str,
    clickhouse_url: str,
    service_tracing: tuple[TracerProvider, InMemorySpanExporter],
    tmp_path: Path,
) -> None:
    provider, service_spans = service_tracing
    settings, database, topic, group = _kafka_settings(tmp_path, clickhouse_url, kafka_bootstrap)
    org = _name("org")
    ch = clickhouse_connect.get_client(dsn=clickhouse_url)
    tracer, producer_provider = _producer_tracer()
    headers, publish = _traced_headers(tracer, f"{topic} publish")
    trace_id = format(publish.context.trace_id, "032x")
    repeated = _event(org, "gpt-4o-mini", 3_000, trace_id=trace_id, run_id="run-1", agent="planner")
    others = [_event(org, "gpt-4o", 50_000), _event(org, "gpt-4o-mini", 1_000), _event(_name("org"), "gpt-4o", 7)]

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        async with running(settings, provider) as (stub, port):
            await producer.send_and_wait(
                topic, repeated.SerializeToString(), key=repeated.event_id.encode(), headers=headers
            )
            one_row = f"SELECT count() FROM {database}.usage_events FINAL WHERE event_id = {{e:String}}"

            async def stored() -> bool:
                try:
                    return _count(ch, one_row, e=repeated.event_id) == 1
                except Exception:  # noqa: BLE001 - the table appears with the first insert
                    return False

            await eventually(stored, what="the usage row")
            row = ch.query(
                f"SELECT org, model, cost_nanos, input_tokens, occurred_at, trace_id, run_id, agent"
                f" FROM {database}.usage_events FINAL WHERE event_id = {{e:String}}",
                parameters={"e": repeated.event_id},
            ).result_rows[0]
            assert row[:4] == (org, "gpt-4o-mini", 3_000, 100)
            assert row[4].isoformat().startswith("2025-10-09T08:53:20.250")
            assert row[5:] == (trace_id, "run-1", "planner")

            # A redelivery (same event id) collapses: two copies stored, one row read.
            await producer.send_and_wait(
                topic, repeated.SerializeToString(), key=repeated.event_id.encode(), headers=headers
            )
            for event in others:
                await producer.send_and_wait(topic, event.SerializeToString(), key=event.event_id.encode())

            async def all_committed() -> bool:
                return await _committed(kafka_bootstrap, group, topic) == 5

            await eventually(all_committed, what="offsets committed after the inserts")
            assert _count(ch, one_row, e=repeated.event_id) == 1

            response = await stub.QueryCosts(pb.QueryCostsRequest(group_by=["model"], org=org))
            assert list(response.group_by) == ["model"]
            assert [
                (list(r.keys), r.requests, r.input_tokens, r.output_tokens, r.cost_nanos) for r in response.rows
            ] == [
                (["gpt-4o"], 1, 100, 10, 50_000),
                (["gpt-4o-mini"], 2, 200, 20, 4_000),
            ]
            total = await stub.QueryCosts(pb.QueryCostsRequest(org=org))
            assert [(r.requests, r.cost_nanos) for r in total.rows] == [(3, 54_000)]
            by_run = await stub.QueryCosts(pb.QueryCostsRequest(group_by=["agent", "run_id"], org=org, project="chat"))
            assert [(list(r.keys), r.requests) for r in by_run.rows][-1] == (["planner", "run-1"], 1)
            later = Timestamp(seconds=1_760_000_001)
            assert list((await stub.QueryCosts(pb.QueryCostsRequest(org=org, since=later))).rows) == []

            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.QueryCosts(pb.QueryCostsRequest(group_by=["model", "api_key"]))
            error = from_rpc_error(caught.value)
            assert isinstance(error, InvalidArgumentError) and error.field == "group_by"

            # One trace covers publish -> process -> insert. The service's spans went to the
            # in-memory exporter; send them and the producer's span through OTLP and read back.
            mine = [s for s in service_spans.get_finished_spans() if s.context.trace_id == publish.context.trace_id]
            process = [s for s in mine if s.name == f"{topic} process"]
            assert process and all(
                s.parent is not None and s.parent.span_id == publish.context.span_id for s in process
            )
            assert all(s.kind is SpanKind.CONSUMER for s in process)
            inserts = [s for s in mine if s.name == INSERT]
            assert inserts and inserts[0].parent is not None
            assert inserts[0].parent.span_id in {s.context.span_id for s in process}
            await _export_spans(port, [publish, *mine])
            spans = await _trace_names(stub, trace_id, {f"{topic} publish", f"{topic} process", INSERT})
            assert {s.service_name for s in spans if s.name == f"{topic} publish"} == {"budget"}
            assert [s.start_time.ToNanoseconds() for s in spans] == sorted(s.start_time.ToNanoseconds() for s in spans)
    finally:
        await producer.stop()
        producer_provider.shutdown()


async def test_kafka_trickle_lingers_into_one_insert(
    kafka_bootstrap: str,
    clickhouse_url: str,
    service_tracing: tuple[TracerProvider, InMemorySpanExporter],
    tmp_path: Path,
) -> None:
    """Events arriving apart within the linger are stored by one INSERT, not one per fetch."""
    provider, service_spans = service_tracing
    settings, database, topic, _ = _kafka_settings(tmp_path, clickhouse_url, kafka_bootstrap, usage_linger_s=4.0)
    org = _name("org")
    ch = clickhouse_connect.get_client(dsn=clickhouse_url)

    async def stored(count: int) -> bool:
        try:
            return _count(ch, f"SELECT count() FROM {database}.usage_events WHERE org = {{o:String}}", o=org) == count
        except Exception:  # noqa: BLE001 - the table appears with the first insert
            return False

    async def insert_sizes(events: int) -> list[int] | None:
        """Batch sizes of the INSERTs so far, once they hold `events` events (spans end after the rows land)."""
        spans = service_spans.get_finished_spans()
        sizes = [s.attributes.get("db.operation.batch.size") for s in spans if s.name == INSERT and s.attributes]
        done = [n for n in sizes if isinstance(n, int)]
        return done if sum(done) >= events else None

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        async with running(settings, provider):
            # The consumer is in its group and caught up once this first event is stored.
            first = _event(org, "gpt-4o", 1)
            await producer.send_and_wait(topic, first.SerializeToString(), key=first.event_id.encode())
            await eventually(lambda: stored(1), what="the first event")
            assert await eventually(lambda: insert_sizes(1), what="the first insert") == [1]
            for n in range(3):
                event = _event(org, "gpt-4o", 10 + n)
                await producer.send_and_wait(topic, event.SerializeToString(), key=event.event_id.encode())
                await asyncio.sleep(0.3)  # each lands in a fetch of its own
            await eventually(lambda: stored(4), what="the three later events")
            assert await eventually(lambda: insert_sizes(4), what="the later inserts") == [1, 3]
    finally:
        await producer.stop()


async def test_otlp_spans_are_stored_redacted_and_read_back_by_trace(
    clickhouse_url: str, service_tracing: tuple[TracerProvider, InMemorySpanExporter], tmp_path: Path
) -> None:
    database = _name("it")
    settings = _settings(tmp_path, clickhouse_url=clickhouse_url, database=database)
    provider, service_spans = service_tracing
    async with running(settings, provider) as (stub, port):
        root, _ = await asyncio.to_thread(_agent_spans, port, "agent run")
        trace_id = format(root.context.trace_id, "032x")

        spans = await _trace_names(stub, trace_id, {"agent run", "llm call"})
        assert [s.name for s in spans] == ["agent run", "llm call"]
        run, call = spans
        assert (run.service_name, run.kind, run.parent_span_id) == ("agent-app", "SERVER", "")
        assert call.parent_span_id == run.span_id == format(root.context.span_id, "016x")
        assert call.kind == "CLIENT" and call.status_code == "UNSET"
        assert dict(call.attributes)["gen_ai.usage.input_tokens"] == "12"
        assert dict(call.attributes)["tags"] == '["a","b"]'
        assert dict(run.attributes)["http.request.header.authorization"] == REDACTED
        assert dict(run.attributes)["x-api-key"] == REDACTED
        assert run.end_time.ToNanoseconds() >= call.end_time.ToNanoseconds() > call.start_time.ToNanoseconds()

        ch = clickhouse_connect.get_client(dsn=clickhouse_url)
        leaked = (
            f"SELECT count() FROM {database}.spans WHERE arrayExists(v -> v LIKE '%secret%', mapValues(attributes))"
        )
        assert _count(ch, leaked) == 0
        # Storing spans made no spans: the export path does not trace itself.
        assert service_spans.get_finished_spans() == ()

        for bad in ["", "XYZ", trace_id.upper(), "0" * 32]:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GetTrace(pb.GetTraceRequest(trace_id=bad))
            error = from_rpc_error(caught.value)
            assert isinstance(error, InvalidArgumentError) and error.field == "trace_id"
        assert list((await stub.GetTrace(pb.GetTraceRequest(trace_id="ab" * 16))).spans) == []


async def test_embedded_mode_spool_and_chdb_end_to_end(
    service_tracing: tuple[TracerProvider, InMemorySpanExporter], tmp_path: Path
) -> None:
    provider, service_spans = service_tracing
    settings = _settings(tmp_path)
    assert settings.clickhouse_url == "" and settings.kafka_bootstrap == ""
    org = _name("org")
    tracer, producer_provider = _producer_tracer()
    headers, publish = _traced_headers(tracer, "spool publish")
    trace_id = format(publish.context.trace_id, "032x")
    repeated = _event(org, "gpt-4o-mini", 2_000, trace_id=trace_id)
    other = _event(org, "claude-sonnet", 9_000)
    spool = UsageSpool(Path(settings.spool_path))
    try:
        async with running(settings, provider) as (stub, port):
            # As budget does: append the event (twice: a replay after a budget crash).
            await spool.append(repeated.event_id, repeated.SerializeToString(), headers)
            await spool.append(repeated.event_id, repeated.SerializeToString(), headers)
            last = await spool.append(other.event_id, other.SerializeToString(), [])

            async def consumed() -> bool:
                return await spool.committed(settings.consumer_group) == last

            await eventually(consumed, what="the spool commit after the insert")
            response = await stub.QueryCosts(pb.QueryCostsRequest(group_by=["org", "model"], org=org))
            assert [(list(r.keys), r.requests, r.cost_nanos) for r in response.rows] == [
                ([org, "claude-sonnet"], 1, 9_000),
                ([org, "gpt-4o-mini"], 1, 2_000),
            ]

            mine = [s for s in service_spans.get_finished_spans() if s.context.trace_id == publish.context.trace_id]
            assert {s.name for s in mine} >= {"interlock.usage.v1 process", INSERT}
            await _export_spans(port, [publish, *mine])
            await _trace_names(stub, trace_id, {"spool publish", "interlock.usage.v1 process", INSERT})

        # Committed records were pruned; the data outlives a restart in the chdb directory.
        assert await spool.read(settings.consumer_group, 10) == []
        async with running(settings) as (stub, _):
            total = await stub.QueryCosts(pb.QueryCostsRequest(org=org))
            assert [(r.requests, r.cost_nanos) for r in total.rows] == [(2, 11_000)]
            assert {s.name for s in (await stub.GetTrace(pb.GetTraceRequest(trace_id=trace_id))).spans} >= {INSERT}
    finally:
        spool.close()
        producer_provider.shutdown()


async def test_clickhouse_downtime_loses_nothing(tmp_path: Path) -> None:
    port = free_port()
    database = _name("it")
    settings = _settings(tmp_path, clickhouse_url=f"http://127.0.0.1:{port}", database=database)
    org = _name("org")
    events = [_event(org, "gpt-4o", 1_000 + i) for i in range(3)]
    spool = UsageSpool(Path(settings.spool_path))
    server = ClickHouseServer(tmp_path / "clickhouse", http_port=port)
    try:
        async with running(settings) as (stub, service_port):
            # ClickHouse is not running yet: events and spans must wait, not vanish.
            for event in events[:2]:
                await spool.append(event.event_id, event.SerializeToString(), [])
            down_root, _ = await asyncio.to_thread(_agent_spans, service_port, "while down")
            await asyncio.sleep(1.0)
            assert await spool.committed(settings.consumer_group) == 0
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.QueryCosts(pb.QueryCostsRequest(org=org))
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

            await asyncio.to_thread(server.start)
            ch = clickhouse_connect.get_client(dsn=server.url)

            async def counted(expected: int) -> bool:
                try:
                    sql = f"SELECT count() FROM {database}.usage_events FINAL WHERE org = {{org:String}}"
                    return _count(ch, sql, org=org) == expected
                except Exception:  # noqa: BLE001 - the table appears with the first insert
                    return False

            await eventually(lambda: counted(2), what="events stored once ClickHouse is up")
            trace_id = format(down_root.context.trace_id, "032x")
            await _trace_names(stub, trace_id, {"while down", "llm call"})

            # Down again, one more event, up again on the same data.
            await asyncio.to_thread(server.stop)
            await spool.append(events[2].event_id, events[2].SerializeToString(), [])
            await asyncio.sleep(0.5)
            await asyncio.to_thread(server.start)
            ch = clickhouse_connect.get_client(dsn=server.url)
            await eventually(lambda: counted(3), what="the event held during the second outage")
            total = await stub.QueryCosts(pb.QueryCostsRequest(org=org))
            assert [(r.requests, r.cost_nanos) for r in total.rows] == [(3, 3_003)]
    finally:
        spool.close()
        await asyncio.to_thread(server.stop)
