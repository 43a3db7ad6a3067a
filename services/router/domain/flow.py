"""The life of one chat call: admit, reserve, call the provider, settle.

Pure orchestration over ports (rate limiter, budget, providers); the adapters behind the
ports do the I/O. Rate-limit admission and budget reservation run concurrently; whatever
happens after a reservation was granted ends in exactly one commit or release.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Protocol, TypeVar

from opentelemetry import trace

from interlock import recording
from interlock._telemetry import CurrentSpan
from interlock.errors import (
    BudgetExceededError,
    DeadlineExceededError,
    InterlockError,
    InvalidArgumentError,
    RateLimitedError,
    UpstreamError,
)
from interlock.pricing import NANOS_PER_USD
from interlock.services.router.domain.chain import AttemptRecord, ChainError, ChainExecutor, ChainFailure
from interlock.services.router.domain.chat import ChatCall, input_token_bound, tools_token_bound
from interlock.services.router.domain.provider import (
    ChatMessage,
    ChatProvider,
    ProviderRequest,
    ProviderResponse,
    StreamDelta,
    StreamEnd,
    StreamItem,
    StreamToolCallDelta,
    TokenUsage,
    ToolCall,
)
from interlock.services.router.domain.redaction import (
    RedactionRules,
    input_messages,
    output_messages,
    request_params,
)
from interlock.services.router.domain.routing import Deployment

log = logging.getLogger("interlock.router.flow")
_tracer = trace.get_tracer("interlock.router.flow")

T = TypeVar("T")


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
    decided_at_ms: int = 0
    """The rate-limiter's decision time; 0 when admitted without one (fail-open)."""
    token_estimate: int = 0
    """Tokens charged against TPM limits at admission, corrected by `record_usage`."""
    leased: bool = False
    """Admitted from a rate-limit lease in memory; `decided_at_ms` is the lease's charge time."""


@dataclass(frozen=True, slots=True)
class Reservation:
    granted: bool
    exceeded_scope: str = ""
    remaining_nanos: int = 0
    limit_nanos: int = 0
    """When refused: the refusing budget's limit, its committed and held spend, and reset time."""
    committed_nanos: int = 0
    reserved_nanos: int = 0
    reset_at: float = 0.0
    """Unix seconds; 0 for a budget without a window."""
    window: str = ""


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
    """Rate-limit admission. Each step has a part that decides without waiting (from leases in
    memory, queued corrections) so a call's path only suspends when a service must answer."""

    def admit_now(self, caller: Caller, call: ChatCall) -> Admission | None:
        """A decision without waiting; None when only `admit_remote` can decide."""
        ...

    async def admit_remote(self, caller: Caller, call: ChatCall, timeout_s: float | None) -> Admission: ...

    def record_usage_now(
        self, caller: Caller, call: ChatCall, admission: Admission, usage: TokenUsage
    ) -> Awaitable[None] | None:
        """Replace the admission's token estimate with the billed usage: None when that needed
        no waiting, else the awaitable that finishes it; neither raises."""
        ...


class BudgetPort(Protocol):
    def reserve_now(self, request_id: str, caller: Caller, amount_nanos: int) -> Reservation | None:
        """A reservation without waiting; None when only `reserve_remote` can decide."""
        ...

    async def reserve_remote(
        self, request_id: str, caller: Caller, amount_nanos: int, timeout_s: float | None
    ) -> Reservation: ...

    def commit_now(
        self, call: ChatCall, provider: str, usage: TokenUsage, cost_nanos: int, provider_attempts: int = 0
    ) -> Awaitable[None] | None:
        """Settle the call; `provider_attempts` counts its chain's attempts (retries, fallbacks).
        None when the commit needs no waiting (it is sent after the answer), else the send."""
        ...

    async def release(self, request_id: str) -> None: ...


class ChatFlow:
    """Runs calls; `providers` is passed per call, from the config snapshot the call is pinned to."""

    def __init__(
        self,
        admission: AdmissionPort,
        budget: BudgetPort,
        chain: ChainExecutor,
        redaction: RedactionRules | None = None,
    ) -> None:
        self._admission = admission
        self._budget = budget
        self._chain = chain
        self._redaction = redaction or RedactionRules.parse((), ())

    @staticmethod
    def worst_case_nanos(call: ChatCall) -> int:
        """What the reservation holds: the prompt's upper bound plus max_tokens at the dearest
        deployment of the chain, so any fallback is paid for."""
        bound = input_token_bound(call.messages) + tools_token_bound(call.tools)
        return call.route.worst_case_cost_nanos(bound, call.max_tokens)

    async def _admit_and_reserve(
        self, caller: Caller, call: ChatCall, timeout_s: float | None, span: trace.Span | None
    ) -> Admission:
        worst = self.worst_case_nanos(call)
        # Decided in memory when leases have room (no suspension, the common case under load);
        # what is left is asked of the services, both at once.
        admission: Admission | BaseException | None
        reservation: Reservation | BaseException | None
        try:
            admission = self._admission.admit_now(caller, call)
        except Exception as exc:  # noqa: BLE001 - judged below with the other decision
            admission = exc
        try:
            reservation = self._budget.reserve_now(call.request_id, caller, worst)
        except Exception as exc:  # noqa: BLE001
            reservation = exc
        if admission is None and reservation is None:
            admission, reservation = await asyncio.gather(
                self._admission.admit_remote(caller, call, timeout_s),
                self._budget.reserve_remote(call.request_id, caller, worst, timeout_s),
                return_exceptions=True,
            )
        elif admission is None:
            admission = await _outcome(self._admission.admit_remote(caller, call, timeout_s))
        elif reservation is None:
            reservation = await _outcome(self._budget.reserve_remote(call.request_id, caller, worst, timeout_s))
        failure = next((r for r in (admission, reservation) if isinstance(r, BaseException)), None)
        granted = isinstance(reservation, Reservation) and reservation.granted
        if failure is None and isinstance(admission, Admission) and not admission.allowed:
            failure = RateLimitedError(
                f"rate limit {admission.limit_name!r} reached",
                retry_after_s=admission.retry_after_s,
                metadata={"scope": admission.limit_name},
            )
        if failure is None and isinstance(reservation, Reservation) and not reservation.granted:
            failure = budget_exceeded(reservation, worst)
        if span is not None:
            _record_decisions(span, admission, reservation, worst)
        if failure is not None:
            if granted:
                await self._budget.release(call.request_id)
            raise failure
        assert isinstance(admission, Admission)
        return admission

    @staticmethod
    def _request(call: ChatCall, deployment: Deployment, timeout_s: float) -> ProviderRequest:
        return ProviderRequest(
            upstream_model=deployment.upstream_model,
            messages=call.messages,
            # A fallback with a smaller maximum output gets its maximum, not a request it refuses.
            max_tokens=min(call.max_tokens, deployment.max_output_tokens or call.max_tokens),
            temperature=call.temperature,
            top_p=call.top_p,
            stop=call.stop,
            tools=call.tools,
            tool_choice=call.tool_choice,
            json_mode=call.json_mode,
            request_id=call.request_id,
            timeout_s=timeout_s,
        )

    async def _settle(self, call: ChatCall, deployment: Deployment, usage: TokenUsage, provider_attempts: int) -> int:
        """Commit the call's cost; what has to be waited for is shielded from the caller's
        cancellation (a caller gone mid-commit must not leave its spend unrecorded)."""
        cost = deployment.pricing.cost_nanos(
            usage.input_tokens,
            usage.output_tokens,
            cached_input_tokens=usage.cached_input_tokens,
            cache_write_tokens=usage.cache_write_tokens,
        )
        pending = self._budget.commit_now(call, deployment.provider, usage, cost, provider_attempts)
        if pending is not None:
            await asyncio.shield(pending)
        return cost

    async def _record_usage(self, caller: Caller, call: ChatCall, admission: Admission, usage: TokenUsage) -> None:
        pending = self._admission.record_usage_now(caller, call, admission, usage)
        if pending is not None:
            await asyncio.shield(pending)

    async def chat(
        self, caller: Caller, call: ChatCall, timeout_s: float | None, providers: Mapping[str, ChatProvider]
    ) -> ChatResult:
        span, attempt_spans = _call_span()
        if span is not None:
            _record_request(span, caller, call, self._redaction)
        admission = await self._admit_and_reserve(caller, call, timeout_s, span)
        attempts = 0

        async def attempt(deployment: Deployment, time_left_s: float) -> ProviderResponse:
            nonlocal attempts
            attempts += 1
            if not attempt_spans:  # the call's trace is not sampled: its attempts have no spans
                return await providers[deployment.provider].chat(self._request(call, deployment, time_left_s))
            # One span per provider attempt, parent of the HTTP client span to the provider
            # (none when the call's trace is not sampled).
            with CurrentSpan(
                _tracer,
                f"chat {deployment.upstream_model}",
                kind=trace.SpanKind.CLIENT,
                attributes=lambda: {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": deployment.provider,
                    "gen_ai.system": deployment.provider,
                    "gen_ai.request.model": deployment.upstream_model,
                    "interlock.attempt": attempts - 1,
                },
                child_of_current=True,
            ) as attempt_span:
                answer = await providers[deployment.provider].chat(self._request(call, deployment, time_left_s))
                attempt_span.set_attribute("gen_ai.response.model", deployment.upstream_model)
                attempt_span.set_attribute("gen_ai.usage.input_tokens", answer.usage.input_tokens)
                attempt_span.set_attribute("gen_ai.usage.output_tokens", answer.usage.output_tokens)
                return answer

        try:
            done = await self._chain.call(call.route, attempt, timeout_s)
        except BaseException as exc:
            await asyncio.shield(self._budget.release(call.request_id))
            if isinstance(exc, ChainError):
                raise chain_error(exc) from exc
            raise
        answer = done.value
        if span is not None:
            _record_attempts(span, done.attempts)
        cost = await self._settle(call, done.deployment, answer.usage, len(done.attempts))
        if span is not None:
            _record_answer(
                span,
                call,
                done.deployment,
                answer.usage,
                cost,
                answer.text,
                answer.finish_reason,
                answer.tool_calls,
                self._redaction,
            )
        await self._record_usage(caller, call, admission, answer.usage)
        return ChatResult(
            call.request_id,
            call.route.name,
            done.deployment.provider,
            answer.text,
            answer.finish_reason,
            answer.usage,
            cost,
            answer.tool_calls,
        )

    async def stream(
        self, caller: Caller, call: ChatCall, timeout_s: float | None, providers: Mapping[str, ChatProvider]
    ) -> AsyncIterator[str | StreamToolCallDelta | ChatResult]:
        """Yield text deltas and tool-call pieces, then one ChatResult."""
        span, _ = _call_span()
        if span is not None:
            _record_request(span, caller, call, self._redaction)
        admission = await self._admit_and_reserve(caller, call, timeout_s, span)

        def open_stream(deployment: Deployment, time_left_s: float) -> AsyncIterator[StreamItem]:
            return providers[deployment.provider].stream(self._request(call, deployment, time_left_s))

        chain = self._chain.stream(call.route, open_stream, timeout_s)
        parts: list[str] = []
        settled = False
        try:
            async for item in chain:
                if isinstance(item, StreamDelta):
                    parts.append(item.text)
                    yield item.text
                elif isinstance(item, StreamToolCallDelta):
                    yield item
                elif isinstance(item, StreamEnd):
                    settled = True
                    assert chain.deployment is not None
                    if span is not None:
                        _record_attempts(span, chain.attempts)
                    cost = await self._settle(call, chain.deployment, item.usage, len(chain.attempts))
                    await self._record_usage(caller, call, admission, item.usage)
                    if span is not None:
                        _record_answer(
                            span,
                            call,
                            chain.deployment,
                            item.usage,
                            cost,
                            "".join(parts),
                            item.finish_reason,
                            item.tool_calls,
                            self._redaction,
                        )
                    yield ChatResult(
                        call.request_id,
                        call.route.name,
                        chain.deployment.provider,
                        "".join(parts),
                        item.finish_reason,
                        item.usage,
                        cost,
                        item.tool_calls,
                    )
                    return
        except ChainError as exc:
            if not settled:
                if span is not None:
                    _record_attempts(span, exc.attempts)
                # A stream cut after output began is billed by the provider for what it
                # generated; one that produced nothing is released like a failed call.
                if parts and chain.deployment is not None:
                    usage = produced_usage(call, parts)
                    await self._settle(call, chain.deployment, usage, len(exc.attempts))
                else:
                    await asyncio.shield(self._budget.release(call.request_id))
            raise chain_error(exc) from exc
        except BaseException:
            if not settled:
                # The caller went away mid-stream: settle what was produced so far, not the
                # worst case (the provider stops generating when the connection closes).
                if chain.deployment is not None:
                    # The attempt in progress has no record yet: it is one more than those recorded.
                    usage = produced_usage(call, parts)
                    await self._settle(call, chain.deployment, usage, len(chain.attempts) + 1)
                else:
                    await asyncio.shield(self._budget.release(call.request_id))
            raise
        finally:
            await chain.aclose()


def _call_span() -> tuple[trace.Span | None, bool]:
    """The call's span (the router's server span) once per call, None when it is not
    recorded (the `_record_*` functions then are not called at all); and whether attempts
    get spans of their own: not when the call's trace is known and not sampled."""
    span = trace.get_current_span()
    if span.is_recording():
        return span, True
    return None, not span.get_span_context().is_valid


def _record_attempts(span: trace.Span, attempts: Sequence[AttemptRecord]) -> None:
    """Every attempt of the chain as an event on the call's span."""
    span.set_attribute("interlock.attempts", len(attempts))
    for i, a in enumerate(attempts):
        span.add_event(
            "interlock.attempt",
            {
                "attempt": i,
                "provider": a.deployment.provider,
                "upstream_model": a.deployment.upstream_model,
                "outcome": a.kind or "ok",
                "latency_ms": round(a.latency_s * 1000, 3),
                "backoff_ms": round(a.waited_s * 1000, 3),
            },
        )


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _message_digest(m: ChatMessage) -> str:
    calls = [(c.id, c.name, c.arguments) for c in m.tool_calls]
    return recording.message_digest(m.role, m.content, calls, m.tool_call_id, m.name)


def _record_request(span: trace.Span, caller: Caller, call: ChatCall, rules: RedactionRules) -> None:
    """Who made the call, for which run, agent and step, on the call's span; and for calls
    of a run, the redacted request with digests of the unredacted one, for replay."""
    span.set_attribute("gen_ai.operation.name", "chat")
    span.set_attribute("gen_ai.request.model", call.route.name)
    span.set_attribute("gen_ai.request.max_tokens", call.max_tokens)
    if call.temperature is not None:
        span.set_attribute("gen_ai.request.temperature", call.temperature)
    span.set_attribute("interlock.org", caller.org)
    span.set_attribute("interlock.project", caller.project)
    span.set_attribute("interlock.developer", caller.developer)
    span.set_attribute("interlock.api_key_id", caller.api_key_id)
    span.set_attribute("interlock.request_id", call.request_id)
    span.set_attribute("interlock.config_version", call.config_version)
    if call.agent:
        span.set_attribute(recording.AGENT_ATTRIBUTE, call.agent)
    if call.step:
        span.set_attribute(recording.STEP_ATTRIBUTE, call.step)
    if not call.run_id:
        return
    span.set_attribute(recording.RUN_ID_ATTRIBUTE, call.run_id)
    digests = [_message_digest(m) for m in call.messages]
    span.set_attribute(recording.MESSAGE_DIGESTS_ATTRIBUTE, digests)
    span.set_attribute(
        recording.REQUEST_DIGEST_ATTRIBUTE,
        recording.request_digest(
            call.route.name,
            digests,
            call.max_tokens,
            [(t.name, t.description, t.parameters) for t in call.tools],
            call.tool_choice or "",
            call.temperature,
        ),
    )
    span.set_attribute(recording.INPUT_MESSAGES_ATTRIBUTE, _json(input_messages(call.messages, rules)))
    params = request_params(
        max_tokens=call.max_tokens,
        temperature=call.temperature,
        top_p=call.top_p,
        stop=call.stop,
        tools=call.tools,
        tool_choice=call.tool_choice,
        json_mode=call.json_mode,
        rules=rules,
    )
    span.set_attribute(recording.REQUEST_PARAMS_ATTRIBUTE, _json(params))


async def _outcome(decision: Awaitable[T]) -> T | Exception:
    """The decision, or the exception deciding raised (as `gather(return_exceptions=True)`)."""
    try:
        return await decision
    except Exception as exc:  # noqa: BLE001 - judged by the caller with the other decision
        return exc


def _record_decisions(span: trace.Span, admission: object, reservation: object, worst_case_nanos: int) -> None:
    """The rate-limit and budget decisions on the call's span."""
    if isinstance(admission, Admission):
        span.set_attribute("interlock.ratelimit.decision", "allowed" if admission.allowed else "refused")
        if admission.limit_name:
            span.set_attribute("interlock.ratelimit.limit", admission.limit_name)
    elif isinstance(admission, BaseException):
        span.set_attribute("interlock.ratelimit.decision", "error")
    if isinstance(reservation, Reservation):
        span.set_attribute("interlock.budget.decision", "reserved" if reservation.granted else "refused")
        span.set_attribute("interlock.budget.reserved_nanos", worst_case_nanos if reservation.granted else 0)
        if reservation.exceeded_scope:
            span.set_attribute("interlock.budget.scope", reservation.exceeded_scope)
    elif isinstance(reservation, BaseException):
        span.set_attribute("interlock.budget.decision", "error")


def _record_answer(
    span: trace.Span,
    call: ChatCall,
    deployment: Deployment,
    usage: TokenUsage,
    cost_nanos: int,
    text: str,
    finish_reason: str,
    tool_calls: Sequence[ToolCall],
    rules: RedactionRules,
) -> None:
    """The answer's model, usage and cost (and, for a run, its redacted body) on the call's span."""
    span.set_attribute("gen_ai.provider.name", deployment.provider)
    span.set_attribute("gen_ai.system", deployment.provider)
    span.set_attribute("gen_ai.response.model", deployment.upstream_model)
    span.set_attribute("gen_ai.response.finish_reasons", [finish_reason])
    span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
    span.set_attribute("interlock.cost_nanos", cost_nanos)
    if call.run_id:
        span.set_attribute(
            recording.OUTPUT_MESSAGES_ATTRIBUTE, _json(output_messages(text, finish_reason, tool_calls, rules))
        )


def chain_error(exc: ChainError) -> InterlockError:
    """The caller's typed error for a chain that could not serve the call."""
    metadata = {"reason": exc.reason, "kind": exc.kind, "provider": exc.provider, "attempts": str(len(exc.attempts))}
    if exc.reason == ChainFailure.DEADLINE:
        return DeadlineExceededError(f"{exc}", metadata=metadata)
    if exc.reason == ChainFailure.UNAVAILABLE and exc.kind == "rate_limited":
        return RateLimitedError(f"{exc}", retry_after_s=exc.retry_after_s, metadata={**metadata, "scope": "provider"})
    if exc.reason == ChainFailure.TERMINAL and exc.kind in ("bad_request", "context_length_exceeded"):
        return InvalidArgumentError(f"the provider refused the request: {exc}", field="messages", metadata=metadata)
    return UpstreamError(f"{exc}", retry_after_s=exc.retry_after_s, metadata=metadata)


def produced_usage(call: ChatCall, parts: Sequence[str]) -> TokenUsage:
    """Tokens to bill for a stream that ended before the provider reported usage.

    Input: the reservation's upper bound (the provider read the whole prompt). Output: a
    deterministic estimate of the text already streamed, rounded up: at least one token
    per delta (providers send whole tokens) and at least one per 4 UTF-8 bytes, never
    more than max_tokens.
    """
    size = sum(len(p.encode("utf-8", "surrogatepass")) for p in parts)
    output = min(call.max_tokens, max(len(parts), math.ceil(size / 4)))
    return TokenUsage(input_token_bound(call.messages), output)


def budget_exceeded(reservation: Reservation, worst_case_nanos: int) -> BudgetExceededError:
    """The refusal, naming the budget with its limit, spend and reset time (as text and metadata)."""

    def usd(nanos: int) -> str:
        return f"{Decimal(nanos) / NANOS_PER_USD:f}"

    reset = (
        datetime.fromtimestamp(reservation.reset_at, UTC).isoformat().replace("+00:00", "Z")
        if reservation.reset_at
        else ""
    )
    when = f"; resets {reset}" if reset else "; no window, does not reset"
    return BudgetExceededError(
        f"budget {reservation.exceeded_scope} (limit ${usd(reservation.limit_nanos)}"
        f"{' per ' + reservation.window if reservation.window not in ('', 'none') else ''}) refused a worst-case"
        f" cost of ${usd(worst_case_nanos)}: spent ${usd(reservation.committed_nanos)}, held"
        f" ${usd(reservation.reserved_nanos)}, remaining ${usd(reservation.remaining_nanos)}{when}",
        metadata={
            "scope": reservation.exceeded_scope,
            "limit_usd": usd(reservation.limit_nanos),
            "spent_usd": usd(reservation.committed_nanos),
            "reserved_usd": usd(reservation.reserved_nanos),
            "remaining_usd": usd(reservation.remaining_nanos),
            "remaining_nanos": str(reservation.remaining_nanos),
            "worst_case_usd": usd(worst_case_nanos),
            "window": reservation.window or "none",
            "reset_at": reset,
        },
    )
