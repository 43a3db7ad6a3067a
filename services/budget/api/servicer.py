"""BudgetService: protobuf <-> domain translation over the ledger (SQLite or PostgreSQL)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import propagate

from interlock._telemetry import current_trace_id
from interlock.budget.v1 import budget_pb2
from interlock.errors import AuthenticationError, InvalidArgumentError
from interlock.services.budget.adapters.ledger import BudgetLedger
from interlock.services.budget.domain.model import (
    DEFAULT_ORG,
    BudgetPolicy,
    LeaseChange,
    Principal,
    Scope,
    ScopeKind,
    ScopeSpend,
    check_name,
    check_thresholds,
    split_api_key,
)
from interlock.services.budget.domain.usage import SettledUsage, reservation_key, usage_event_id
from interlock.services.budget.domain.window import Window, check_time_zone

T = TypeVar("T")
Ctx = grpc.aio.ServicerContext[Any, Any]

_KINDS = {
    budget_pb2.SCOPE_KIND_ORG: ScopeKind.ORG,
    budget_pb2.SCOPE_KIND_PROJECT: ScopeKind.PROJECT,
    budget_pb2.SCOPE_KIND_DEVELOPER: ScopeKind.DEVELOPER,
    budget_pb2.SCOPE_KIND_API_KEY: ScopeKind.API_KEY,
}
_WINDOWS = {
    budget_pb2.BUDGET_WINDOW_UNSPECIFIED: Window.NONE,
    budget_pb2.BUDGET_WINDOW_DAY: Window.DAY,
    budget_pb2.BUDGET_WINDOW_WEEK: Window.WEEK,
    budget_pb2.BUDGET_WINDOW_MONTH: Window.MONTH,
}
_WINDOW_PB = {w: pb for pb, w in _WINDOWS.items()}
_MAX_REQUEST_ID = 128
_MAX_BATCH = 1000


def _request_id(value: str) -> str:
    if not value or len(value) > _MAX_REQUEST_ID:
        raise InvalidArgumentError(f"must be 1-{_MAX_REQUEST_ID} characters", field="request_id")
    if "#" in value:
        # `#` separates a request id from its attempt number in ledger keys (`id#2`).
        raise InvalidArgumentError("must not contain '#'", field="request_id")
    return value


def _principal(p: budget_pb2.Principal) -> Principal:
    return Principal(
        org=check_name("principal.org", p.org or DEFAULT_ORG),
        project=check_name("principal.project", p.project),
        developer=check_name("principal.developer", p.developer),
        api_key_id=p.api_key_id,
    )


def _principal_pb(p: Principal) -> budget_pb2.Principal:
    return budget_pb2.Principal(org=p.org, project=p.project, developer=p.developer, api_key_id=p.api_key_id)


def _scope(s: budget_pb2.Scope) -> Scope:
    kind = _KINDS.get(s.kind)
    if kind is None:
        raise InvalidArgumentError("must be ORG, PROJECT, DEVELOPER or API_KEY", field="scope.kind")
    org = check_name("scope.org", s.org or DEFAULT_ORG)
    project = check_name("scope.project", s.project) if kind is not ScopeKind.ORG else ""
    wide = (ScopeKind.ORG, ScopeKind.PROJECT)
    developer = check_name("scope.developer", s.developer) if kind not in wide else ""
    key_id = check_name("scope.api_key_id", s.api_key_id) if kind is ScopeKind.API_KEY else ""
    return Scope(kind, org, project, developer, key_id)


def _timestamp(unix_s: float) -> Timestamp | None:
    if not unix_s:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(unix_s * 1e9))
    return ts


def _refusal(spend: ScopeSpend | None) -> dict[str, Any]:
    """ReserveResponse fields naming the budget that refused: limit, spend, reset time."""
    if spend is None:
        return {}
    return {
        "limit_nanos": spend.limit_nanos or 0,
        "committed_nanos": spend.committed_nanos,
        "reserved_nanos": spend.reserved_nanos,
        "reset_at": _timestamp(spend.span.reset_at),
        "window": spend.window.value,
    }


class BudgetServicer:
    def __init__(
        self,
        ledger: BudgetLedger,
        reservation_ttl_s: float,
        on_commit: Callable[[], None],
        clock: Callable[[], float] = time.time,
        lease_ttl_s: float = 30.0,
        lease_max_share: float = 0.25,
    ) -> None:
        self._ledger = ledger
        self._ttl = reservation_ttl_s
        self._lease_ttl = lease_ttl_s
        self._lease_max_share = lease_max_share
        self._on_commit = on_commit
        self._clock = clock
        # One thread owns the ledger's connection; the event loop never blocks on disk.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger")

    def run_in_ledger_thread(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        return asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)

    async def Reserve(self, request: budget_pb2.ReserveRequest, context: Ctx) -> budget_pb2.ReserveResponse:
        request_id = reservation_key(_request_id(request.request_id), request.attempt)
        principal = _principal(request.principal)
        if request.amount_nanos < 0:
            raise InvalidArgumentError("must not be negative", field="amount_nanos")
        ttl = float(request.ttl_seconds) if request.ttl_seconds else self._ttl
        decision = await self.run_in_ledger_thread(
            self._ledger.reserve, request_id, principal, request.amount_nanos, ttl, self._clock()
        )
        return budget_pb2.ReserveResponse(
            granted=decision.granted,
            exceeded_scope=decision.exceeded_scope,
            remaining_nanos=decision.remaining_nanos,
            **_refusal(decision.refused_by),
        )

    def _settled(self, request: budget_pb2.CommitRequest) -> SettledUsage:
        numbers = ("cost_nanos", "input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens")
        for name in (*numbers, "cache_write_tokens", "latency_ms"):
            if getattr(request, name) < 0:
                raise InvalidArgumentError("must not be negative", field=name)
        request_id = _request_id(request.request_id)
        committed_at = self._clock()
        return SettledUsage(
            request_id=reservation_key(request_id, request.attempt),
            principal=Principal("", "", ""),  # the ledger takes the principal from the reservation or lease
            provider=request.provider,
            model=request.model,
            input_tokens=request.input_tokens,
            output_tokens=request.output_tokens,
            cost_nanos=request.cost_nanos,
            committed_at=committed_at,
            trace_id=current_trace_id(),
            run_id=request.run_id,
            agent=request.agent,
            details={
                "config_version": request.config_version,
                "cached_input_tokens": request.cached_input_tokens,
                "reasoning_tokens": request.reasoning_tokens,
                "cache_write_tokens": request.cache_write_tokens,
                "latency_ms": request.latency_ms,
                "attempt": request.attempt,
                "provider_attempts": request.provider_attempts,
                # Fixed here and stored with the ledger row: every re-send of the event carries it.
                "event_id": usage_event_id(request_id, request.attempt, committed_at),
            },
        )

    async def Commit(self, request: budget_pb2.CommitRequest, context: Ctx) -> budget_pb2.CommitResponse:
        return (await self._commit([request]))[0]

    async def CommitBatch(self, request: budget_pb2.CommitBatchRequest, context: Ctx) -> budget_pb2.CommitBatchResponse:
        if len(request.commits) > _MAX_BATCH:
            raise InvalidArgumentError(f"at most {_MAX_BATCH} commits per batch", field="commits")
        return budget_pb2.CommitBatchResponse(results=await self._commit(request.commits))

    async def _commit(self, requests: Sequence[budget_pb2.CommitRequest]) -> list[budget_pb2.CommitResponse]:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        headers = sorted(carrier.items())
        items = [(self._settled(r), headers, r.lease_id) for r in requests]
        firsts = await self.run_in_ledger_thread(self._ledger.commit_many, items)
        if any(firsts):
            self._on_commit()
        return [budget_pb2.CommitResponse(first_commit=first) for first in firsts]

    async def Lease(self, request: budget_pb2.LeaseRequest, context: Ctx) -> budget_pb2.LeaseResponse:
        if not request.lease_id or len(request.lease_id) > _MAX_REQUEST_ID:
            raise InvalidArgumentError(f"must be 1-{_MAX_REQUEST_ID} characters", field="lease_id")
        for name in ("grow_nanos", "return_nanos"):
            if getattr(request, name) < 0:
                raise InvalidArgumentError("must not be negative", field=name)
        change = LeaseChange(request.grow_nanos, request.return_nanos, request.close)
        ttl = float(request.ttl_seconds) if request.ttl_seconds else self._lease_ttl
        state = await self.run_in_ledger_thread(
            self._ledger.lease,
            request.lease_id,
            _principal(request.principal),
            request.seq,
            change,
            ttl,
            self._clock(),
            self._lease_max_share,
        )
        return budget_pb2.LeaseResponse(
            granted_nanos=state.granted_nanos,
            consumed_nanos=state.consumed_nanos,
            added_nanos=state.added_nanos,
            expires_at=_timestamp(state.expires_at),
            limiting_scope=state.limiting_scope,
        )

    async def Release(self, request: budget_pb2.ReleaseRequest, context: Ctx) -> budget_pb2.ReleaseResponse:
        request_id = reservation_key(_request_id(request.request_id), request.attempt)
        released = await self.run_in_ledger_thread(self._ledger.release, request_id)
        return budget_pb2.ReleaseResponse(released=released)

    async def CreateApiKey(
        self, request: budget_pb2.CreateApiKeyRequest, context: Ctx
    ) -> budget_pb2.CreateApiKeyResponse:
        principal = Principal(
            org=check_name("org", request.org or DEFAULT_ORG),
            project=check_name("project", request.project),
            developer=check_name("developer", request.developer),
        )
        key = await self.run_in_ledger_thread(self._ledger.create_api_key, principal, self._clock())
        owner = Principal(principal.org, principal.project, principal.developer, key.key_id)
        return budget_pb2.CreateApiKeyResponse(
            api_key=key.api_key, api_key_id=key.key_id, principal=_principal_pb(owner)
        )

    async def AuthenticateApiKey(
        self, request: budget_pb2.AuthenticateApiKeyRequest, context: Ctx
    ) -> budget_pb2.AuthenticateApiKeyResponse:
        parts = split_api_key(request.api_key)
        principal = None
        if parts is not None:
            principal = await self.run_in_ledger_thread(self._ledger.authenticate, *parts)
        if principal is None:
            raise AuthenticationError("API key is not valid")
        return budget_pb2.AuthenticateApiKeyResponse(principal=_principal_pb(principal))

    async def SetBudget(self, request: budget_pb2.SetBudgetRequest, context: Ctx) -> budget_pb2.SetBudgetResponse:
        scope = _scope(request.scope)
        if request.limit_nanos < 0:
            raise InvalidArgumentError("must not be negative", field="limit_nanos")
        window = _WINDOWS.get(request.window)
        if window is None:
            raise InvalidArgumentError("must be DAY, WEEK, MONTH or unspecified", field="window")
        policy = BudgetPolicy(
            request.limit_nanos,
            window,
            check_time_zone("time_zone", request.time_zone),
            check_thresholds("alert_thresholds_pct", request.alert_thresholds_pct),
        )
        await self.run_in_ledger_thread(self._ledger.set_budget, scope, policy, self._clock())
        return budget_pb2.SetBudgetResponse(
            scope=request.scope,
            limit_nanos=policy.limit_nanos,
            window=request.window,
            time_zone=policy.time_zone,
            alert_thresholds_pct=policy.alert_thresholds_pct,
        )

    async def GetSpend(self, request: budget_pb2.GetSpendRequest, context: Ctx) -> budget_pb2.GetSpendResponse:
        spend = await self.run_in_ledger_thread(self._ledger.get_spend, _scope(request.scope), self._clock())
        remaining = spend.remaining_nanos
        return budget_pb2.GetSpendResponse(
            limit_nanos=-1 if spend.limit_nanos is None else spend.limit_nanos,
            committed_nanos=spend.committed_nanos,
            reserved_nanos=spend.reserved_nanos,
            window=_WINDOW_PB[spend.window],
            time_zone=spend.time_zone,
            window_start=_timestamp(spend.span.start),
            reset_at=_timestamp(spend.span.reset_at),
            remaining_nanos=-1 if remaining is None else remaining,
            alert_thresholds_pct=spend.alert_thresholds_pct,
        )

    async def expire_loop(self, interval_s: float = 1.0) -> None:
        """Free reservations whose callers died; runs until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            await self.run_in_ledger_thread(self._ledger.expire, self._clock())
