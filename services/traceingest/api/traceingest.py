"""interlock.traceingest.v1.TraceIngestService: QueryCosts and GetTrace over the store."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, TypeAlias

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from interlock.errors import InvalidArgumentError, UnavailableError
from interlock.services.traceingest.adapters.clickhouse import ClickHouseError
from interlock.services.traceingest.adapters.store import TraceStore
from interlock.services.traceingest.domain import CostQuery, SpanRecord, parse_trace_id
from interlock.traceingest.v1 import traceingest_pb2 as pb

log = logging.getLogger("interlock.traceingest.api")
Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
SERVICE = pb.DESCRIPTOR.services_by_name["TraceIngestService"]


def _timestamp(unix_ns: int) -> Timestamp:
    seconds, nanos = divmod(unix_ns, 1_000_000_000)
    return Timestamp(seconds=seconds, nanos=nanos)


def _span_message(span: SpanRecord) -> pb.Span:
    return pb.Span(
        trace_id=span.trace_id,
        span_id=span.span_id,
        parent_span_id=span.parent_span_id,
        service_name=span.service_name,
        name=span.name,
        kind=span.kind,
        start_time=_timestamp(span.start_time_ns),
        end_time=_timestamp(span.end_time_ns),
        status_code=span.status_code,
        attributes=dict(span.attributes),
    )


def _unavailable(exc: ClickHouseError) -> UnavailableError:
    log.warning("query failed", extra={"fields": {"error": str(exc)}})
    # The driver's message may name hosts; callers only need to know to retry.
    return UnavailableError("trace store (ClickHouse) is unavailable", retry_after_s=1.0)


class TraceIngestServicer:
    """Answers usage and trace queries from ClickHouse."""

    def __init__(self, store: TraceStore) -> None:
        self.store = store

    async def QueryCosts(self, request: pb.QueryCostsRequest, context: Context) -> pb.QueryCostsResponse:
        since: datetime | None = None
        if request.HasField("since"):
            try:
                since = request.since.ToDatetime(tzinfo=UTC)
            except (ValueError, OverflowError) as exc:
                raise InvalidArgumentError("is not a valid timestamp", field="since") from exc
        query = CostQuery.parse(list(request.group_by), since, request.org, request.project)
        try:
            rows = await self.store.query_costs(query)
        except ClickHouseError as exc:
            raise _unavailable(exc) from exc
        return pb.QueryCostsResponse(
            group_by=[d.value for d in query.group_by],
            rows=[
                pb.CostRow(
                    keys=list(r.keys),
                    requests=r.requests,
                    input_tokens=r.input_tokens,
                    output_tokens=r.output_tokens,
                    cost_nanos=r.cost_nanos,
                )
                for r in rows
            ],
        )

    async def GetTrace(self, request: pb.GetTraceRequest, context: Context) -> pb.GetTraceResponse:
        trace_id = parse_trace_id(request.trace_id)
        try:
            spans = await self.store.get_trace(trace_id)
        except ClickHouseError as exc:
            raise _unavailable(exc) from exc
        return pb.GetTraceResponse(spans=[_span_message(s) for s in spans])
