"""The standard OTLP TraceService/Export: OTLP spans in, SpanRecords to the span writer.

With a Jaeger forwarder, the spans the writer accepted also go to Jaeger, as a redacted
copy of the request: the same spans, with the same secrets withheld as in ClickHouse.

This handler makes no spans and is not traced by the kit (tracing it would trace the
export of its own spans, forever).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import grpc
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from interlock.services.traceingest.adapters.jaeger_forwarder import JaegerForwarder
from interlock.services.traceingest.adapters.span_writer import SpanWriter
from interlock.services.traceingest.domain import (
    REDACTED,
    SpanRecord,
    is_secret_key,
    is_secret_value,
    redact_attributes,
)

SERVICE_NAME = "opentelemetry.proto.collector.trace.v1.TraceService"
_UNKNOWN_SERVICE = "unknown_service"


def _plain(value: AnyValue) -> Any:
    """An AnyValue as a JSON-able Python value; nested secrets are redacted here."""
    which = value.WhichOneof("value")
    if which == "string_value":
        return REDACTED if is_secret_value(value.string_value) else value.string_value
    if which == "bool_value":
        return value.bool_value
    if which == "int_value":
        return value.int_value
    if which == "double_value":
        return value.double_value
    if which == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    if which == "array_value":
        return [_plain(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: REDACTED if is_secret_key(kv.key) else _plain(kv.value) for kv in value.kvlist_value.values}
    return None


def render_value(value: AnyValue) -> str:
    """An attribute value as the string stored in ClickHouse."""
    plain = _plain(value)
    if isinstance(plain, str):
        return plain
    if isinstance(plain, bool):
        return "true" if plain else "false"
    if plain is None:
        return ""
    if isinstance(plain, int | float):
        return str(plain)
    return json.dumps(plain, ensure_ascii=False, separators=(",", ":"))


def render_attributes(attributes: Any) -> dict[str, str]:
    """OTLP KeyValues as a redacted string map (a repeated key keeps its last value)."""
    pairs: list[KeyValue] = list(attributes)
    return redact_attributes({kv.key: render_value(kv.value) for kv in pairs})


def _kind(kind: Span.SpanKind.ValueType) -> str:
    try:
        return Span.SpanKind.Name(kind).removeprefix("SPAN_KIND_")
    except ValueError:  # a kind newer than this proto
        return "UNSPECIFIED"


def _status(code: Status.StatusCode.ValueType) -> str:
    try:
        return Status.StatusCode.Name(code).removeprefix("STATUS_CODE_")
    except ValueError:
        return "UNSET"


def _redact_value(value: AnyValue) -> None:
    """Withhold, in place, what `_plain` withholds: credential-looking strings, nested secret keys."""
    which = value.WhichOneof("value")
    if which == "string_value" and is_secret_value(value.string_value):
        value.string_value = REDACTED
    elif which == "array_value":
        for item in value.array_value.values:
            _redact_value(item)
    elif which == "kvlist_value":
        _redact_key_values(value.kvlist_value.values)


def _redact_key_values(pairs: RepeatedCompositeFieldContainer[KeyValue]) -> None:
    for kv in pairs:
        if is_secret_key(kv.key):
            # The key stays, so a reader sees the attribute existed and was withheld.
            kv.value.Clear()
            kv.value.string_value = REDACTED
        else:
            _redact_value(kv.value)


def _valid_ids(span: Span) -> bool:
    return len(span.trace_id) == 16 and len(span.span_id) == 8 and len(span.parent_span_id) in (0, 8)


def redacted_request(
    request: trace_service_pb2.ExportTraceServiceRequest,
) -> tuple[trace_service_pb2.ExportTraceServiceRequest, int]:
    """A copy of `request` holding the spans ClickHouse gets, with their secrets withheld.

    Attributes of resources, scopes, spans, events and links are redacted, and span
    status messages; spans with ids of the wrong length are left out. Returns the copy
    and its span count.
    """
    copy = trace_service_pb2.ExportTraceServiceRequest()
    copy.CopyFrom(request)
    count = 0
    for resource_spans in copy.resource_spans:
        _redact_key_values(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            _redact_key_values(scope_spans.scope.attributes)
            for index in reversed(range(len(scope_spans.spans))):
                if not _valid_ids(scope_spans.spans[index]):
                    del scope_spans.spans[index]
            for span in scope_spans.spans:
                _redact_key_values(span.attributes)
                for event in span.events:
                    _redact_key_values(event.attributes)
                for link in span.links:
                    _redact_key_values(link.attributes)
                if is_secret_value(span.status.message):
                    span.status.message = REDACTED
            count += len(scope_spans.spans)
    return copy, count


def spans_from_request(request: trace_service_pb2.ExportTraceServiceRequest) -> tuple[list[SpanRecord], int]:
    """The request's spans as records, and how many were rejected (ids of the wrong length)."""
    records: list[SpanRecord] = []
    rejected = 0
    for resource_spans in request.resource_spans:
        resource = render_attributes(resource_spans.resource.attributes)
        service_name = resource.get("service.name") or _UNKNOWN_SERVICE
        for scope_spans in resource_spans.scope_spans:
            scope_name = scope_spans.scope.name
            for span in scope_spans.spans:
                if not _valid_ids(span):
                    rejected += 1
                    continue
                records.append(
                    SpanRecord(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        service_name=service_name,
                        name=span.name,
                        kind=_kind(span.kind),
                        start_time_ns=span.start_time_unix_nano,
                        end_time_ns=span.end_time_unix_nano,
                        status_code=_status(span.status.code),
                        status_message=REDACTED if is_secret_value(span.status.message) else span.status.message,
                        scope_name=scope_name,
                        attributes=render_attributes(span.attributes),
                        resource_attributes=resource,
                    )
                )
    return records, rejected


class OtlpTraceServicer:
    """TraceService/Export into the span writer, and to Jaeger when a forwarder is given."""

    def __init__(self, writer: SpanWriter, jaeger: JaegerForwarder | None = None) -> None:
        self.writer = writer
        self.jaeger = jaeger

    async def Export(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        records, rejected = spans_from_request(request)
        if not self.writer.offer(records):
            # UNAVAILABLE is retryable for OTLP exporters: they back off and send again.
            await context.abort(grpc.StatusCode.UNAVAILABLE, "span buffer is full; retry later")
        if self.jaeger is not None and records:
            # Only spans ClickHouse took: a refused Export is sent again, and would repeat in Jaeger.
            self.jaeger.offer(*redacted_request(request))
        response = trace_service_pb2.ExportTraceServiceResponse()
        if rejected:
            response.partial_success.rejected_spans = rejected
            response.partial_success.error_message = "trace_id must be 16 bytes, span ids 8 bytes"
        return response

    def register(self, server: grpc.aio.Server) -> None:
        """Add this servicer to `server` with OTLP's generated registration."""
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, server)  # type: ignore[no-untyped-call]
