"""interlock.traceingest.v1.TraceIngestService: QueryCosts, GetTrace, ListRuns and GetRun over the store."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, Literal, TypeAlias

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from interlock.errors import AuthenticationError, InvalidArgumentError, NotFoundError, UnavailableError
from interlock.services.traceingest.adapters.budget_auth import BudgetAuthenticator, Tenant
from interlock.services.traceingest.adapters.clickhouse import ClickHouseError
from interlock.services.traceingest.adapters.store import TraceStore
from interlock.services.traceingest.domain import CostQuery, SpanRecord, parse_trace_id
from interlock.services.traceingest.domain.runs import RunCall, RunSummary, parse_run_id
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


def _summary_message(run: RunSummary) -> pb.RunSummary:
    return pb.RunSummary(
        run_id=run.run_id,
        trace_ids=list(run.trace_ids),
        org=run.org,
        project=run.project,
        agents=list(run.agents),
        calls=run.calls,
        errors=run.errors,
        input_tokens=run.input_tokens,
        output_tokens=run.output_tokens,
        cost_nanos=run.cost_nanos,
        started_at=_timestamp(run.started_at_ns),
        ended_at=_timestamp(run.ended_at_ns),
    )


def _call_message(call: RunCall) -> pb.RecordedCall:
    return pb.RecordedCall(
        trace_id=call.trace_id,
        span_id=call.span_id,
        request_id=call.request_id,
        agent=call.agent,
        step=call.step,
        request_model=call.request_model,
        response_model=call.response_model,
        provider=call.provider,
        request_json=call.request_json,
        response_json=call.response_json,
        request_digest=call.request_digest,
        message_digests=list(call.message_digests),
        input_tokens=call.input_tokens,
        output_tokens=call.output_tokens,
        cost_nanos=call.cost_nanos,
        latency_ms=call.latency_ms,
        status=call.status,
        error=call.error,
        config_version=call.config_version,
        attempts=call.attempts,
        start_time=_timestamp(call.start_time_ns),
    )


def _summarize(run_id: str, calls: list[RunCall]) -> RunSummary:
    return RunSummary(
        run_id=run_id,
        org=",".join(sorted({c.org for c in calls})),
        project=",".join(sorted({c.project for c in calls})),
        trace_ids=tuple(sorted({c.trace_id for c in calls})),
        agents=tuple(sorted({c.agent for c in calls if c.agent})),
        calls=len(calls),
        errors=sum(c.status == "ERROR" for c in calls),
        input_tokens=sum(c.input_tokens for c in calls),
        output_tokens=sum(c.output_tokens for c in calls),
        cost_nanos=sum(c.cost_nanos for c in calls),
        started_at_ns=min(c.start_time_ns for c in calls),
        ended_at_ns=max(c.start_time_ns + int(c.latency_ms * 1e6) for c in calls),
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

    async def _tenant(self, context: Context) -> Tenant | None:
        """The caller's project when it sent an API key; None for an operator's keyless call."""
        key = api_key_of(context)
        if key:
            if self.auth is None:
                raise AuthenticationError("this trace-ingest checks no API keys (no budget service configured)")
            return await self.auth.authenticate(key)
        if self.require_api_key:
            raise AuthenticationError("missing API key: send `authorization: Bearer <key>` metadata")
        return None

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
        tenant = await self._tenant(context)
        if tenant is not None:
            query = query.scoped_to(tenant.org, tenant.project)
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
        tenant = await self._tenant(context)
        try:
            # A keyed caller sees only traces its project made calls in; another project's
            # trace is answered exactly as a trace that does not exist.
            if tenant is not None and not await self.store.trace_has_calls_of(trace_id, tenant.org, tenant.project):
                return pb.GetTraceResponse()
            spans = await self.store.get_trace(trace_id)
        except ClickHouseError as exc:
            raise _unavailable(exc) from exc
        return pb.GetTraceResponse(spans=[_span_message(s) for s in spans])

    async def ListRuns(self, request: pb.ListRunsRequest, context: Context) -> pb.ListRunsResponse:
        since_ns: int | None = None
        if request.HasField("since"):
            since_ns = request.since.ToNanoseconds()
        tenant = await self._tenant(context)
        org, project = (tenant.org, tenant.project) if tenant is not None else ("", "")
        try:
            runs = await self.store.list_runs(org, project, since_ns, request.limit)
        except ClickHouseError as exc:
            raise _unavailable(exc) from exc
        return pb.ListRunsResponse(runs=[_summary_message(r) for r in runs])

    async def GetRun(self, request: pb.GetRunRequest, context: Context) -> pb.GetRunResponse:
        run_id = parse_run_id(request.run_id)
        tenant = await self._tenant(context)
        org, project = (tenant.org, tenant.project) if tenant is not None else ("", "")
        try:
            calls, spans = await self.store.get_run(run_id, org, project)
        except ClickHouseError as exc:
            raise _unavailable(exc) from exc
        if not calls:
            raise NotFoundError(f"no recorded run {run_id!r}", metadata={"run_id": run_id})
        return pb.GetRunResponse(
            summary=_summary_message(_summarize(run_id, calls)),
            spans=[_span_message(s) for s in spans],
            calls=[_call_message(c) for c in calls],
        )
