"""Spans of the mesh's gRPC hops made by the server kit and `traced_call`, without interceptors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags

from interlock import _rpc_tracing
from interlock._rpc_tracing import traced_call
from interlock._server import add_service
from interlock.ratelimit.v1 import ratelimit_pb2, ratelimit_pb2_grpc
from interlock.services.ratelimit.adapters.stores import MemoryWindowStore
from interlock.services.ratelimit.api.servicer import RateLimitServicer
from interlock.services.ratelimit.domain.limits import LimitConfig

SERVICE = "interlock.ratelimit.v1.RateLimitService"


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """A provider of its own for the module's tracer (the global one stays untouched)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "test"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(_rpc_tracing, "_tracer", provider.get_tracer("test"))
    yield exporter
    provider.shutdown()


@pytest.fixture
async def stub() -> AsyncIterator[ratelimit_pb2_grpc.RateLimitServiceStub]:
    server = grpc.aio.server()
    add_service(
        server,
        ratelimit_pb2.DESCRIPTOR.services_by_name["RateLimitService"],
        RateLimitServicer(LimitConfig(), MemoryWindowStore()),
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield ratelimit_pb2_grpc.RateLimitServiceStub(channel)
    finally:
        await channel.close()
        await server.stop(None)


def _one(found: list[ReadableSpan], kind: SpanKind) -> ReadableSpan:
    matching = [s for s in found if s.kind == kind]
    assert len(matching) == 1, found
    return matching[0]


async def test_server_span_joins_the_callers_trace_under_the_client_span(
    spans: InMemorySpanExporter, stub: ratelimit_pb2_grpc.RateLimitServiceStub
) -> None:
    path = f"/{SERVICE}/ListLimitOverrides"
    caller = _rpc_tracing._tracer.start_span("caller")
    with trace.use_span(caller, end_on_exit=True):
        await traced_call(stub.ListLimitOverrides, path, ratelimit_pb2.ListLimitOverridesRequest(), timeout=5)
    found = [s for s in spans.get_finished_spans() if s.name == path]
    client, server = _one(found, SpanKind.CLIENT), _one(found, SpanKind.SERVER)
    assert client.context is not None and server.context is not None and caller.get_span_context().is_valid
    assert client.context.trace_id == server.context.trace_id == caller.get_span_context().trace_id
    assert client.parent is not None and client.parent.span_id == caller.get_span_context().span_id
    assert server.parent is not None and server.parent.span_id == client.context.span_id
    for span in (client, server):
        assert span.attributes is not None
        assert span.attributes["rpc.system"] == "grpc"
        assert span.attributes["rpc.service"] == SERVICE
        assert span.attributes["rpc.method"] == "ListLimitOverrides"
        assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]
        assert span.status.status_code == StatusCode.UNSET


async def test_a_refused_call_marks_both_spans_with_its_status(
    spans: InMemorySpanExporter, stub: ratelimit_pb2_grpc.RateLimitServiceStub
) -> None:
    path = f"/{SERVICE}/ShouldRateLimit"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        # No domain: INVALID_ARGUMENT from the servicer, through the kit's error mapping.
        await traced_call(stub.ShouldRateLimit, path, ratelimit_pb2.ShouldRateLimitRequest(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # An aborted call's status leaves before its server span ends: wait for the span.
    for _ in range(200):
        found = [s for s in spans.get_finished_spans() if s.name == path]
        if any(s.kind == SpanKind.SERVER for s in found):
            break
        await asyncio.sleep(0.01)
    for span in (_one(found, SpanKind.CLIENT), _one(found, SpanKind.SERVER)):
        assert span.attributes is not None
        assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert span.status.status_code == StatusCode.ERROR


async def test_an_unsampled_trace_records_no_span_on_either_side(
    spans: InMemorySpanExporter, stub: ratelimit_pb2_grpc.RateLimitServiceStub
) -> None:
    parent = NonRecordingSpan(
        SpanContext(trace_id=0xABC, span_id=0xDEF, is_remote=False, trace_flags=TraceFlags(TraceFlags.DEFAULT))
    )
    with trace.use_span(parent):
        await traced_call(
            stub.ListLimitOverrides, f"/{SERVICE}/ListLimitOverrides", ratelimit_pb2.ListLimitOverridesRequest()
        )
    assert spans.get_finished_spans() == ()
