"""Spans reach Jaeger (built from its Go module, run as a process) through trace-ingest.

Trace-ingest runs in this process on a real ClickHouse server and forwards what it
stores to a real Jaeger v2; each test finds the same trace, span for span, in
ClickHouse (GetTrace / the spans table) and through Jaeger's query API. The last test
makes a real router call through the whole mesh started as processes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import clickhouse_connect
import grpc
import httpx
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind

from interlock.devservers import JaegerServer, free_port
from interlock.devservers._ports import wait_port_free
from interlock.router.v1 import router_pb2
from interlock.services.traceingest.config import TraceIngestSettings
from interlock.services.traceingest.domain import REDACTED
from interlock.services.traceingest.main import build_trace_ingest
from interlock.testing import auth, chat_params, create_key, jaeger_spans, router_stub, start_mesh, wait_for
from interlock.traceingest.v1 import traceingest_pb2 as pb
from interlock.traceingest.v1.traceingest_pb2_grpc import TraceIngestServiceStub

if TYPE_CHECKING:
    from interlock.traceingest.v1.traceingest_pb2_grpc import TraceIngestServiceAsyncStub

pytestmark = pytest.mark.integration

T = TypeVar("T")
SpanKey = tuple[str, str, str]
"""(service, span name, span id): how a span is compared between ClickHouse and Jaeger."""


async def eventually(check: Callable[[], Awaitable[T | None]], what: str, within_s: float = 60.0) -> T:
    """Poll `check` until it returns a value (not None); fail naming `what` when it never does."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        value = await check()
        if value is not None:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


def _settings(tmp_path: Path, clickhouse_url: str, jaeger_otlp_endpoint: str) -> TraceIngestSettings:
    return TraceIngestSettings(
        port=0,
        clickhouse_url=clickhouse_url,
        database=f"jaeger_{uuid.uuid4().hex[:10]}",
        spool_path=str(tmp_path / "spool.db"),
        dlq_spool_path=str(tmp_path / "spool.dlq.db"),
        budget_target="",
        jaeger_otlp_endpoint=jaeger_otlp_endpoint,
        jaeger_flush_interval_s=0.05,
        retry_initial_s=0.05,
        retry_max_s=0.5,
        grace_s=2.0,
    )


@asynccontextmanager
async def running(settings: TraceIngestSettings) -> AsyncIterator[tuple[TraceIngestServiceAsyncStub, int]]:
    """Trace-ingest on a free port until the block ends, then a graceful stop."""
    service = build_trace_ingest(settings, tracer_provider=TracerProvider())
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


def _agent_run(port: int, run_name: str) -> tuple[ReadableSpan, ReadableSpan]:
    """An agent's root and child span sent with the standard OTLP exporter (blocking: run in a thread)."""
    provider = TracerProvider(resource=Resource.create({"service.name": "agent-app"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"127.0.0.1:{port}", insecure=True)))
    tracer = provider.get_tracer("test.agent")
    with tracer.start_as_current_span(run_name, kind=SpanKind.SERVER) as root:
        root.set_attribute("http.request.header.authorization", "Bearer sk-test-0123456789abcdef")
        root.set_attribute("agent.name", "planner")
        with tracer.start_as_current_span("llm call", kind=SpanKind.CLIENT) as child:
            child.set_attribute("gen_ai.usage.input_tokens", 12)
            child.set_attribute("note", "Bearer abcdefgh12345678")
    provider.shutdown()
    assert isinstance(root, ReadableSpan) and isinstance(child, ReadableSpan)
    return root, child


async def _stored(stub: TraceIngestServiceAsyncStub, trace_id: str, count: int) -> set[SpanKey]:
    async def check() -> set[SpanKey] | None:
        response = await stub.GetTrace(pb.GetTraceRequest(trace_id=trace_id))
        spans = {(s.service_name, s.name, s.span_id) for s in response.spans}
        return spans if len(spans) >= count else None

    return await eventually(check, f"{count} spans of trace {trace_id} in ClickHouse")


async def _in_jaeger(query_url: str, trace_id: str, expected: set[SpanKey]) -> set[SpanKey]:
    async def check() -> set[SpanKey] | None:
        spans = set(await asyncio.to_thread(jaeger_spans, query_url, trace_id))
        return spans if expected <= spans else None

    return await eventually(check, f"spans {sorted(expected)} of trace {trace_id} in Jaeger")


def _jaeger_tags(query_url: str, trace_id: str) -> dict[str, dict[str, Any]]:
    """Span name -> its tags as Jaeger's query API returns them."""
    body = httpx.get(f"{query_url}/api/traces/{trace_id}", timeout=5.0).json()
    return {s["operationName"]: {t["key"]: t["value"] for t in s["tags"]} for s in body["data"][0]["spans"]}


async def test_otlp_spans_land_in_clickhouse_and_jaeger_alike(
    jaeger: JaegerServer, clickhouse_url: str, tmp_path: Path
) -> None:
    settings = _settings(tmp_path, clickhouse_url, jaeger.otlp_endpoint)
    async with running(settings) as (stub, port):
        root, child = await asyncio.to_thread(_agent_run, port, "agent run")
        trace_id = format(root.context.trace_id, "032x")
        expected = {
            ("agent-app", "agent run", format(root.context.span_id, "016x")),
            ("agent-app", "llm call", format(child.context.span_id, "016x")),
        }
        assert await _stored(stub, trace_id, 2) == expected
        assert await _in_jaeger(jaeger.query_url, trace_id, expected) == expected

    # Jaeger holds what ClickHouse holds: the secrets are withheld there too.
    tags = _jaeger_tags(jaeger.query_url, trace_id)
    assert tags["agent run"]["http.request.header.authorization"] == REDACTED
    assert tags["agent run"]["agent.name"] == "planner"
    assert tags["llm call"]["note"] == REDACTED
    assert tags["llm call"]["gen_ai.usage.input_tokens"] == 12


async def test_ingestion_goes_on_while_jaeger_is_down_and_catches_up_when_it_returns(
    clickhouse_url: str, tmp_path: Path
) -> None:
    # A Jaeger of this test's own, so stopping it leaves the session's alone.
    otlp_port, query_port = free_port(), free_port()
    first = JaegerServer(tmp_path / "jaeger-a", otlp_port, query_port)
    first.start()
    first.stop()
    assert wait_port_free(otlp_port) and wait_port_free(query_port)

    settings = _settings(tmp_path, clickhouse_url, first.otlp_endpoint)
    async with running(settings) as (stub, port):
        # Jaeger is down: Export still succeeds and the spans are stored.
        root, child = await asyncio.to_thread(_agent_run, port, "agent run while jaeger is down")
        trace_id = format(root.context.trace_id, "032x")
        expected = {
            ("agent-app", "agent run while jaeger is down", format(root.context.span_id, "016x")),
            ("agent-app", "llm call", format(child.context.span_id, "016x")),
        }
        assert await _stored(stub, trace_id, 2) == expected
        ch = clickhouse_connect.get_client(dsn=clickhouse_url)
        rows = ch.query(
            f"SELECT count() FROM {settings.database}.spans WHERE trace_id = {{t:String}}",
            parameters={"t": trace_id},
        ).result_rows
        assert rows[0][0] == 2

        # More spans while it is still down: ingestion never waits for Jaeger.
        later, _ = await asyncio.to_thread(_agent_run, port, "second run while jaeger is down")
        await _stored(stub, format(later.context.trace_id, "032x"), 2)

        # Jaeger comes back on the same ports: the spans held for it arrive.
        with JaegerServer(tmp_path / "jaeger-b", otlp_port, query_port) as second:
            assert await _in_jaeger(second.query_url, trace_id, expected) == expected


@pytest.mark.e2e
def test_router_call_through_the_mesh_is_one_trace_in_clickhouse_and_jaeger(
    jaeger: JaegerServer, clickhouse_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    mesh = start_mesh(tmp_path_factory.mktemp("mesh-jaeger"), clickhouse=clickhouse_url, jaeger=jaeger.otlp_endpoint)
    try:
        key = create_key(mesh, "search", "alice")
        channel, stub = router_stub(mesh)
        with channel:
            response = stub.Chat(router_pb2.ChatRequest(params=chat_params()), metadata=auth(key), timeout=30)
        trace_id = response.trace_id
        assert len(trace_id) == 32

        with grpc.insecure_channel(mesh.cfg.target("traceingest")) as ti_channel:
            traces = TraceIngestServiceStub(ti_channel)

            def stored() -> set[SpanKey]:
                spans = traces.GetTrace(pb.GetTraceRequest(trace_id=trace_id), timeout=10).spans
                return {(s.service_name, s.name, s.span_id) for s in spans}

            def all_hops() -> set[SpanKey] | None:
                spans = stored()
                services = {service for service, _, _ in spans}
                names = {name for _, name, _ in spans}
                chat = any(n.endswith("RouterService/Chat") for n in names)
                commit = any(n.endswith("BudgetService/Commit") for n in names)
                return spans if {"router", "ratelimit", "budget"} <= services and chat and commit else None

            in_clickhouse = wait_for(all_hops, "the router call's spans from every service in ClickHouse")

            def same_in_jaeger() -> set[SpanKey] | None:
                spans = set(jaeger_spans(jaeger.query_url, trace_id))
                return spans if in_clickhouse <= spans else None

            in_jaeger = wait_for(same_in_jaeger, "the same spans in Jaeger")
            # Whatever Jaeger has of the trace, ClickHouse has too (it may have more by now).
            assert in_jaeger <= stored()
        assert any(name.endswith("RouterService/Chat") for _, name, _ in in_jaeger)
    finally:
        mesh.stop()
