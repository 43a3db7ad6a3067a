"""Forwarding to Jaeger without Jaeger: the redacted copy of an OTLP request, and the
forwarder's batching, retries and bounded queue against an in-process OTLP receiver."""

from __future__ import annotations

from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status
from polling import wait_until

from interlock.devservers import free_port
from interlock.services.traceingest.adapters.jaeger_forwarder import JaegerForwarder
from interlock.services.traceingest.adapters.retry import Backoff
from interlock.services.traceingest.api.otlp import redacted_request, spans_from_request
from interlock.services.traceingest.domain import REDACTED

FAST = Backoff(initial_s=0.01, max_s=0.05)


def _kv(key: str, value: AnyValue) -> KeyValue:
    return KeyValue(key=key, value=value)


def _text(value: str) -> AnyValue:
    return AnyValue(string_value=value)


def _span(n: int, **fields: Any) -> Span:
    base: dict[str, Any] = {"trace_id": bytes([1]) * 16, "span_id": n.to_bytes(8, "big"), "name": f"span {n}"}
    base.update(fields)
    return Span(**base)


def _request(*spans: Span, service: str = "agent-app") -> ExportTraceServiceRequest:
    resource = Resource(attributes=[_kv("service.name", _text(service)), _kv("db.password", _text("hunter2"))])
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(resource=resource, scope_spans=[ScopeSpans(spans=list(spans))])]
    )


def _secret_laden_request() -> ExportTraceServiceRequest:
    nested = AnyValue(
        kvlist_value=KeyValueList(
            values=[_kv("api_key", _text("il_live_abc")), _kv("model", _text("gpt-4o-mini"))],
        )
    )
    listed = AnyValue(array_value=ArrayValue(values=[_text("ok"), _text("Bearer abcdefgh12345678")]))
    span = _span(
        1,
        attributes=[
            _kv("http.request.header.authorization", _text("Bearer sk-abcdefghijklmnop1234")),
            _kv("gen_ai.usage.input_tokens", AnyValue(int_value=12)),
            _kv("request", nested),
            _kv("headers", listed),
        ],
        events=[Span.Event(name="retry", attributes=[_kv("x-api-key", _text("il_live_def"))])],
        links=[Span.Link(trace_id=bytes([2]) * 16, span_id=bytes([3]) * 8, attributes=[_kv("token", _text("t0k"))])],
        status=Status(code=Status.STATUS_CODE_ERROR, message="Bearer sk-abcdefghijklmnop1234"),
    )
    bad_ids = _span(2, trace_id=b"short")
    return _request(span, bad_ids)


def test_redacted_copy_withholds_secrets_everywhere_and_keeps_the_original() -> None:
    original = _secret_laden_request()
    before = original.SerializeToString()
    copy, count = redacted_request(original)

    assert original.SerializeToString() == before
    assert count == 1
    spans = copy.resource_spans[0].scope_spans[0].spans
    assert [s.name for s in spans] == ["span 1"]  # the span with a short trace id is left out, as for ClickHouse
    attributes = {kv.key: kv.value for kv in spans[0].attributes}
    assert attributes["http.request.header.authorization"].string_value == REDACTED
    assert attributes["gen_ai.usage.input_tokens"].int_value == 12
    nested = {kv.key: kv.value.string_value for kv in attributes["request"].kvlist_value.values}
    assert nested == {"api_key": REDACTED, "model": "gpt-4o-mini"}
    assert [v.string_value for v in attributes["headers"].array_value.values] == ["ok", REDACTED]
    assert spans[0].events[0].attributes[0].value.string_value == REDACTED
    assert spans[0].links[0].attributes[0].value.string_value == REDACTED
    assert spans[0].status.message == REDACTED
    resource = {kv.key: kv.value.string_value for kv in copy.resource_spans[0].resource.attributes}
    assert resource == {"service.name": "agent-app", "db.password": REDACTED}


def test_jaeger_gets_the_same_spans_as_clickhouse() -> None:
    original = _secret_laden_request()
    copy, _ = redacted_request(original)
    stored, rejected = spans_from_request(original)
    forwarded, rejected_in_copy = spans_from_request(copy)
    assert forwarded == stored
    assert (rejected, rejected_in_copy) == (1, 0)


def test_a_full_queue_drops_and_counts_without_blocking() -> None:
    forwarder = JaegerForwarder(f"127.0.0.1:{free_port()}", queue_limit=5, backoff=FAST)
    assert forwarder.offer(_request(_span(1), _span(2), _span(3)), 3)
    assert not forwarder.offer(_request(_span(4), _span(5), _span(6)), 3)
    assert forwarder.offer(_request(_span(7), _span(8)), 2)
    assert not forwarder.offer(_request(_span(9)), 1)
    assert (forwarder.queued_spans, forwarder.dropped_spans, forwarder.forwarded_spans) == (5, 4, 0)


class FakeJaeger:
    """An OTLP TraceService that refuses the first `failures` exports with UNAVAILABLE."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.received: list[ExportTraceServiceRequest] = []

    async def Export(
        self, request: ExportTraceServiceRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        if self.failures:
            self.failures -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "not yet")
        self.received.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def span_names(self) -> list[str]:
        return [
            span.name
            for request in self.received
            for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]


async def _serve(fake: FakeJaeger) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(fake, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def test_queued_requests_go_out_in_batches_after_failures() -> None:
    fake = FakeJaeger(failures=2)
    server, endpoint = await _serve(fake)
    forwarder = JaegerForwarder(endpoint, batch_size=3, flush_interval_s=0.01, backoff=FAST)
    try:
        for n in range(0, 8, 2):
            assert forwarder.offer(_request(_span(n), _span(n + 1)), 2)
        await forwarder.start()
        await wait_until(lambda: forwarder.forwarded_spans == 8, "all 8 spans forwarded")
    finally:
        await forwarder.stop()
        await server.stop(None)
    assert fake.span_names() == [f"span {n}" for n in range(8)]
    # Whole requests are merged while they fit: 2+2 would be 4 > 3, so one request per call here.
    assert [sum(len(s.spans) for r in req.resource_spans for s in r.scope_spans) for req in fake.received] == [2] * 4
    assert (forwarder.queued_spans, forwarder.dropped_spans) == (0, 0)


async def test_small_requests_are_merged_into_one_export() -> None:
    fake = FakeJaeger()
    server, endpoint = await _serve(fake)
    forwarder = JaegerForwarder(endpoint, batch_size=10, flush_interval_s=0.01, backoff=FAST)
    try:
        for n in range(5):
            forwarder.offer(_request(_span(n), service=f"svc-{n}"), 1)
        await forwarder.start()
        await wait_until(lambda: forwarder.forwarded_spans == 5, "5 spans forwarded")
    finally:
        await forwarder.stop()
        await server.stop(None)
    assert len(fake.received) == 1
    services = [r.resource.attributes[0].value.string_value for r in fake.received[0].resource_spans]
    assert services == [f"svc-{n}" for n in range(5)]


async def test_stop_with_jaeger_unreachable_drops_what_is_queued_and_counts_it() -> None:
    # Nothing listens on a port just reported free: every export fails.
    endpoint = f"127.0.0.1:{free_port()}"
    forwarder = JaegerForwarder(endpoint, flush_interval_s=0.01, backoff=FAST, stop_flush_timeout_s=0.2)
    await forwarder.start()
    assert forwarder.offer(_request(_span(1), _span(2)), 2)
    await forwarder.stop()
    assert (forwarder.queued_spans, forwarder.dropped_spans, forwarder.forwarded_spans) == (0, 2, 0)
    assert not forwarder.offer(_request(_span(3)), 1)
    assert forwarder.dropped_spans == 3
