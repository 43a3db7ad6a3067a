"""gRPC clients of the rate-limiter and budget services, behind the router's ports.

Fail-open or fail-closed when a dependency is down is a setting per dependency: the
rate-limiter may fail open (availability over exact limits) but the budget fails closed
by default, because budgets are hard.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict

import grpc

from interlock.budget.v1 import budget_pb2, budget_pb2_grpc
from interlock.errors import AuthenticationError, InterlockError, UnavailableError, from_rpc_error
from interlock.ratelimit.v1 import ratelimit_pb2, ratelimit_pb2_grpc
from interlock.services.router.domain.chat import ChatCall
from interlock.services.router.domain.flow import Admission, Caller, Reservation
from interlock.services.router.domain.provider import TokenUsage

log = logging.getLogger("interlock.router.mesh")
RATE_LIMIT_DOMAIN = "interlock"
_CHANNEL_OPTIONS = [("grpc.keepalive_time_ms", 30_000), ("grpc.enable_retries", 1)]


def _error(exc: grpc.RpcError, dependency: str) -> InterlockError:
    err = from_rpc_error(exc)
    if isinstance(err, UnavailableError):
        return UnavailableError(f"{dependency} is unavailable", metadata={"dependency": dependency})
    return err


class RateLimitClient:
    def __init__(self, target: str, fail_open: bool) -> None:
        self._channel = grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
        self._stub = ratelimit_pb2_grpc.RateLimitServiceStub(self._channel)
        self._fail_open = fail_open

    async def admit(self, caller: Caller, call: ChatCall, timeout_s: float | None) -> Admission:
        def d(*entries: tuple[str, str]) -> ratelimit_pb2.Descriptor:
            return ratelimit_pb2.Descriptor(entries=[ratelimit_pb2.Entry(key=k, value=v) for k, v in entries])

        request = ratelimit_pb2.ShouldRateLimitRequest(
            domain=RATE_LIMIT_DOMAIN,
            descriptors=[
                d(("api_key", caller.api_key_id)),
                d(("project", f"{caller.org}/{caller.project}")),
                d(("provider", call.route.provider), ("model", call.route.name)),
            ],
            hits_addend=1,
        )
        try:
            response = await self._stub.ShouldRateLimit(request, timeout=timeout_s or 5.0)
        except grpc.RpcError as exc:
            if self._fail_open and exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                log.warning("rate-limiter unavailable; admitting (fail-open)")
                return Admission(True)
            raise _error(exc, "rate-limiter") from None
        if response.overall_code != ratelimit_pb2.CODE_OVER_LIMIT:
            return Admission(True)
        over = [s for s in response.statuses if s.code == ratelimit_pb2.CODE_OVER_LIMIT]
        worst = max(over, key=lambda s: s.duration_until_reset_ms)
        return Admission(False, worst.current_limit.name, worst.duration_until_reset_ms / 1000)

    async def aclose(self) -> None:
        await self._channel.close()


class BudgetClient:
    def __init__(self, target: str, auth_cache_ttl_s: float = 30.0) -> None:
        self._channel = grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
        self._stub = budget_pb2_grpc.BudgetServiceStub(self._channel)
        self._auth_ttl = auth_cache_ttl_s
        # Valid keys only, bounded; a revoked key stops working within the TTL.
        self._auth_cache: OrderedDict[str, tuple[float, Caller]] = OrderedDict()

    async def authenticate(self, api_key: str) -> Caller:
        now = time.monotonic()
        # Cache by digest so the process never keeps a table of plaintext keys.
        cache_key = hashlib.sha256(api_key.encode()).hexdigest()
        hit = self._auth_cache.get(cache_key)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            response = await self._stub.AuthenticateApiKey(
                budget_pb2.AuthenticateApiKeyRequest(api_key=api_key), timeout=5.0
            )
        except grpc.RpcError as exc:
            err = _error(exc, "budget")
            if isinstance(err, AuthenticationError):
                raise AuthenticationError("API key is not valid") from None
            raise err from None
        p = response.principal
        caller = Caller(p.org, p.project, p.developer, p.api_key_id)
        self._auth_cache[cache_key] = (now + self._auth_ttl, caller)
        self._auth_cache.move_to_end(cache_key)
        while len(self._auth_cache) > 10_000:
            self._auth_cache.popitem(last=False)
        return caller

    async def reserve(self, request_id: str, caller: Caller, amount_nanos: int, timeout_s: float | None) -> Reservation:
        request = budget_pb2.ReserveRequest(
            request_id=request_id,
            principal=budget_pb2.Principal(
                org=caller.org, project=caller.project, developer=caller.developer, api_key_id=caller.api_key_id
            ),
            amount_nanos=amount_nanos,
        )
        try:
            response = await self._stub.Reserve(request, timeout=timeout_s or 5.0)
        except grpc.RpcError as exc:
            raise _error(exc, "budget") from None
        return Reservation(response.granted, response.exceeded_scope, response.remaining_nanos)

    async def commit(self, call: ChatCall, provider: str, usage: TokenUsage, cost_nanos: int) -> None:
        request = budget_pb2.CommitRequest(
            request_id=call.request_id,
            cost_nanos=cost_nanos,
            provider=provider,
            model=call.route.name,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            run_id=call.run_id,
            agent=call.agent,
        )
        # A commit must land: retry transient failures; the call is idempotent by request id.
        delay = 0.05
        for attempt in range(5):
            try:
                await self._stub.Commit(request, timeout=5.0)
                return
            except grpc.RpcError as exc:
                code = exc.code()
                if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) or attempt == 4:
                    raise _error(exc, "budget") from None
                log.warning("budget commit failed; retrying", extra={"fields": {"request_id": call.request_id}})
                await asyncio.sleep(delay)
                delay *= 2

    async def release(self, request_id: str) -> None:
        try:
            await self._stub.Release(budget_pb2.ReleaseRequest(request_id=request_id), timeout=5.0)
        except grpc.RpcError:
            # The reservation expires on its own; the caller's error matters more than this one.
            log.warning("budget release failed; reservation will expire", extra={"fields": {"request_id": request_id}})

    async def aclose(self) -> None:
        await self._channel.close()
