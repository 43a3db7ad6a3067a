"""interlock.traceingest.v1.TraceIngestService: QueryCosts and GetTrace over the store."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, Literal, TypeAlias

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from interlock.errors import AuthenticationError, InvalidArgumentError, UnavailableError
from interlock.services.traceingest.adapters.budget_auth import BudgetAuthenticator
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


def api_key_of(context: Context) -> str:
    """The key from `authorization: Bearer <key>` or `x-api-key: <key>` metadata, as the router reads it."""
    for key, value in context.invocation_metadata() or ():
        text = value.decode() if isinstance(value, bytes) else value
        if key == "authorization" and text[:7].lower() == "bearer ":
            return text[7:].strip()
        if key == "x-api-key":
            return text.strip()
    return ""


def _instant(request: pb.QueryCostsRequest, name: Literal["since", "until"]) -> datetime | None:
    if not request.HasField(name):
        return None
    try:
        value: datetime = getattr(request, name).ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:
        raise InvalidArgumentError("is not a valid timestamp", field=name) from exc
    return value


class TraceIngestServicer:
    """Answers usage and trace queries from ClickHouse.

    A QueryCosts call with an API key is answered for that key's project only. Without
    one it is an operator's call, allowed unless `require_api_key`.
    """

    def __init__(
        self, store: TraceStore, auth: BudgetAuthenticator | None = None, *, require_api_key: bool = False
    ) -> None:
        self.store = store
        self.auth = auth
        self.require_api_key = require_api_key

    async def QueryCosts(self, request: pb.QueryCostsRequest, context: Context) -> pb.QueryCostsResponse:
        query = CostQuery.parse(
            list(request.group_by),
            _instant(request, "since"),
            request.org,
            request.project,
            limit=request.limit,
            until=_instant(request, "until"),
            repriced=request.repriced,
        )
        key = api_key_of(context)
        if key:
            if self.auth is None:
                raise AuthenticationError("this trace-ingest checks no API keys (no budget service configured)")
            tenant = await self.auth.authenticate(key)
            query = query.scoped_to(tenant.org, tenant.project)
        elif self.require_api_key:
            raise AuthenticationError("missing API key: send `authorization: Bearer <key>` metadata")
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
                    cached_input_tokens=r.cached_input_tokens,
                    reasoning_tokens=r.reasoning_tokens,
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
