"""The life of one chat call: admit, reserve, call the provider, settle.

Pure orchestration over ports (rate limiter, budget, providers); the adapters behind the
ports do the I/O. Rate-limit admission and budget reservation run concurrently; whatever
happens after a reservation was granted ends in exactly one commit or release.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from interlock.errors import BudgetExceededError, RateLimitedError, UpstreamError
from interlock.services.router.domain.chat import ChatCall, input_token_bound, tools_token_bound
from interlock.services.router.domain.provider import (
    ChatProvider,
    ProviderError,
    ProviderRequest,
    StreamDelta,
    StreamEnd,
    StreamToolCallDelta,
    TokenUsage,
    ToolCall,
)

log = logging.getLogger("interlock.router.flow")


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated owner of the API key a call came with."""

    org: str
    project: str
    developer: str
    api_key_id: str


@dataclass(frozen=True, slots=True)
class Admission:
    allowed: bool
    limit_name: str = ""
    retry_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class Reservation:
    granted: bool
    exceeded_scope: str = ""
    remaining_nanos: int = 0


@dataclass(frozen=True, slots=True)
class ChatResult:
    request_id: str
    model: str
    provider: str
    text: str
    finish_reason: str
    usage: TokenUsage
    cost_nanos: int
    tool_calls: tuple[ToolCall, ...] = ()


class AdmissionPort(Protocol):
    async def admit(self, caller: Caller, call: ChatCall, timeout_s: float | None) -> Admission: ...


class BudgetPort(Protocol):
    async def reserve(
        self, request_id: str, caller: Caller, amount_nanos: int, timeout_s: float | None
    ) -> Reservation: ...

    async def commit(self, call: ChatCall, provider: str, usage: TokenUsage, cost_nanos: int) -> None: ...

    async def release(self, request_id: str) -> None: ...


class ChatFlow:
    def __init__(
        self,
        admission: AdmissionPort,
        budget: BudgetPort,
        providers: Mapping[str, ChatProvider],
        default_timeout_s: Callable[[str], float],
    ) -> None:
        self._admission = admission
        self._budget = budget
        self._providers = providers
        self._default_timeout = default_timeout_s

    def worst_case_nanos(self, call: ChatCall) -> int:
        bound = input_token_bound(call.messages) + tools_token_bound(call.tools)
        return call.route.pricing.cost_nanos(bound, call.max_tokens)

    async def _admit_and_reserve(self, caller: Caller, call: ChatCall, timeout_s: float | None) -> None:
        admission, reservation = await asyncio.gather(
            self._admission.admit(caller, call, timeout_s),
            self._budget.reserve(call.request_id, caller, self.worst_case_nanos(call), timeout_s),
            return_exceptions=True,
        )
        failure = next((r for r in (admission, reservation) if isinstance(r, BaseException)), None)
        granted = isinstance(reservation, Reservation) and reservation.granted
        if failure is None and isinstance(admission, Admission) and not admission.allowed:
            failure = RateLimitedError(
                f"rate limit {admission.limit_name!r} reached",
                retry_after_s=admission.retry_after_s,
                metadata={"scope": admission.limit_name},
            )
        if failure is None and isinstance(reservation, Reservation) and not reservation.granted:
            failure = BudgetExceededError(
                f"budget {reservation.exceeded_scope} has {reservation.remaining_nanos} nano-USD left,"
                f" less than this call's worst-case cost",
                metadata={"scope": reservation.exceeded_scope, "remaining_nanos": str(reservation.remaining_nanos)},
            )
        if failure is not None:
            if granted:
                await self._budget.release(call.request_id)
            raise failure

    def _request(self, call: ChatCall, timeout_s: float | None) -> ProviderRequest:
        limit = self._default_timeout(call.route.provider)
        return ProviderRequest(
            upstream_model=call.route.upstream_model,
            messages=call.messages,
            max_tokens=call.max_tokens,
            temperature=call.temperature,
            top_p=call.top_p,
            stop=call.stop,
            tools=call.tools,
            tool_choice=call.tool_choice,
            json_mode=call.json_mode,
            request_id=call.request_id,
            timeout_s=min(limit, timeout_s) if timeout_s else limit,
        )

    async def _settle(self, call: ChatCall, usage: TokenUsage) -> int:
        cost = call.route.pricing.cost_nanos(
            usage.input_tokens,
            usage.output_tokens,
            cached_input_tokens=usage.cached_input_tokens,
            cache_write_tokens=usage.cache_write_tokens,
        )
        await self._budget.commit(call, call.route.provider, usage, cost)
        return cost

    async def chat(self, caller: Caller, call: ChatCall, timeout_s: float | None) -> ChatResult:
        await self._admit_and_reserve(caller, call, timeout_s)
        provider = self._providers[call.route.provider]
        try:
            answer = await provider.chat(self._request(call, timeout_s))
        except BaseException as exc:
            await asyncio.shield(self._budget.release(call.request_id))
            if isinstance(exc, ProviderError):
                raise _upstream(exc) from exc
            raise
        cost = await asyncio.shield(self._settle(call, answer.usage))
        return ChatResult(
            call.request_id,
            call.route.name,
            provider.name,
            answer.text,
            answer.finish_reason,
            answer.usage,
            cost,
            answer.tool_calls,
        )

    async def stream(
        self, caller: Caller, call: ChatCall, timeout_s: float | None
    ) -> AsyncIterator[str | StreamToolCallDelta | ChatResult]:
        """Yield text deltas and tool-call pieces, then one ChatResult."""
        await self._admit_and_reserve(caller, call, timeout_s)
        provider = self._providers[call.route.provider]
        parts: list[str] = []
        settled = False
        try:
            async for item in provider.stream(self._request(call, timeout_s)):
                if isinstance(item, StreamDelta):
                    parts.append(item.text)
                    yield item.text
                elif isinstance(item, StreamToolCallDelta):
                    yield item
                elif isinstance(item, StreamEnd):
                    settled = True
                    cost = await asyncio.shield(self._settle(call, item.usage))
                    yield ChatResult(
                        call.request_id,
                        call.route.name,
                        provider.name,
                        "".join(parts),
                        item.finish_reason,
                        item.usage,
                        cost,
                        item.tool_calls,
                    )
                    return
            raise ProviderError(provider.name, "protocol", "stream ended without usage")
        except ProviderError as exc:
            if not settled:
                await asyncio.shield(self._budget.release(call.request_id))
            raise _upstream(exc) from exc
        except BaseException:
            if not settled:
                # The caller went away mid-stream: the provider may bill what it generated,
                # so settle at the reserved worst case rather than under-count spend.
                worst = TokenUsage(input_token_bound(call.messages), call.max_tokens)
                await asyncio.shield(self._settle(call, worst))
            raise


def _upstream(exc: ProviderError) -> UpstreamError:
    return UpstreamError(
        f"provider {exc.provider} failed: {exc.kind}",
        retry_after_s=exc.retry_after_s,
        metadata={"provider": exc.provider, "kind": exc.kind},
    )
