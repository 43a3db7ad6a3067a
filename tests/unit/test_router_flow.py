"""Chat validation, worst-case sizing and the admit/reserve/call/settle flow, with fake ports."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Iterator
from typing import Any, cast

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON

from interlock.errors import BudgetExceededError, InvalidArgumentError, RateLimitedError, UpstreamError, to_status
from interlock.services.router.domain import flow as flow_module
from interlock.services.router.domain.chain import ChainExecutor
from interlock.services.router.domain.chat import MAX_PROMPT_BYTES, ChatCall, input_token_bound, validate_chat
from interlock.services.router.domain.defaults import default_routing_document as defaults
from interlock.services.router.domain.flow import (
    Admission,
    Caller,
    ChatFlow,
    ChatResult,
    Reservation,
    budget_exceeded,
    produced_usage,
)
from interlock.services.router.domain.provider import (
    ChatMessage,
    ProviderError,
    ProviderRequest,
    ProviderResponse,
    StreamDelta,
    StreamEnd,
    StreamItem,
    StreamToolCallDelta,
    TokenUsage,
)
from interlock.services.router.domain.routing import RoutingConfigError, parse_routing_config


def default_routing_document(fake_server_url: str) -> dict[str, Any]:
    return defaults(fake_server_url, {})[0]


CONFIG = parse_routing_config(default_routing_document("http://127.0.0.1:1/v1"), "test")
CALLER = Caller("default", "search", "alice", "k1")


def call(**overrides: object) -> ChatCall:
    args: dict[str, object] = {
        "model": "gpt-4o-mini",
        "messages": [ChatMessage("user", "hello")],
        "max_tokens": 16,
        "temperature": None,
        "request_id": "r1",
        "run_id": "",
        "agent": "",
    }
    args.update(overrides)
    return validate_chat(CONFIG, **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"messages": []}, "params.messages"),
        ({"model": "no-such-model"}, "params.model"),
        ({"model": ""}, "params.model"),
        ({"max_tokens": -1}, "params.max_tokens"),
        ({"max_tokens": 0}, "params.max_tokens"),
        ({"messages": [ChatMessage("user", "x" * (MAX_PROMPT_BYTES + 1))]}, "params.messages[0].content"),
        ({"messages": [ChatMessage("wizard", "x")]}, "params.messages[0].role"),
        ({"temperature": 3.0}, "params.temperature"),
        ({"request_id": "has space"}, "params.request_id"),
    ],
)
def test_bad_input_names_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        call(**overrides)
    assert info.value.field == field


def test_routing_config_rejects_unpriced_and_dangling_models() -> None:
    doc = default_routing_document("http://x/v1")
    doc["models"] = [{"name": "m", "provider": "openai", "upstream_model": "no-such-model-anywhere"}]
    with pytest.raises(RoutingConfigError, match=r"models\[0\]\.price"):
        parse_routing_config(doc, "v")
    doc["models"] = [{"name": "m", "provider": "nobody"}]
    with pytest.raises(RoutingConfigError, match=r"models\[0\]\.provider"):
        parse_routing_config(doc, "v")


def test_input_bound_covers_bytes_and_framing() -> None:
    msgs = [ChatMessage("user", "héllo wörld"), ChatMessage("system", "be brief")]
    assert input_token_bound(msgs) >= len("héllo wörld".encode()) + len("be brief")


class Ports:
    def __init__(self, admit: bool = True, grant: bool = True, in_memory: bool = False) -> None:
        self.admit_ok, self.grant, self.in_memory = admit, grant, in_memory
        self.remote_calls = 0
        self.log: list[tuple[str, object]] = []
        self.usage_records: list[TokenUsage] = []
        self.provider_attempts: list[int] = []

    # Every decision is the services' (the `*_now` parts never decide), unless `in_memory`.
    def admit_now(self, caller: Caller, call: ChatCall) -> Admission | None:
        return self._admission() if self.in_memory else None

    async def admit_remote(self, caller: Caller, call: ChatCall, timeout_s: float | None) -> Admission:
        self.remote_calls += 1
        return self._admission()

    def _admission(self) -> Admission:
        return Admission(True) if self.admit_ok else Admission(False, "api_key", 1.5)

    def record_usage_now(
        self, caller: Caller, call: ChatCall, admission: Admission, usage: TokenUsage
    ) -> Awaitable[None] | None:
        if self.in_memory:
            self.usage_records.append(usage)
            return None
        return self._record_usage(usage)

    async def _record_usage(self, usage: TokenUsage) -> None:
        self.usage_records.append(usage)

    def reserve_now(self, request_id: str, caller: Caller, amount: int) -> Reservation | None:
        if not self.in_memory:
            return None
        self.log.append(("reserve", amount))
        return self._reservation()

    async def reserve_remote(
        self, request_id: str, caller: Caller, amount: int, timeout_s: float | None
    ) -> Reservation:
        self.remote_calls += 1
        self.log.append(("reserve", amount))
        return self._reservation()

    def _reservation(self) -> Reservation:
        return Reservation(True) if self.grant else Reservation(False, "project:default/search", 3)

    def commit_now(
        self, call: ChatCall, provider: str, usage: TokenUsage, cost: int, provider_attempts: int = 0
    ) -> Awaitable[None] | None:
        if self.in_memory:
            self._commit(cost, provider_attempts)
            return None
        return self._commit_async(cost, provider_attempts)

    async def _commit_async(self, cost: int, provider_attempts: int) -> None:
        self._commit(cost, provider_attempts)

    def _commit(self, cost: int, provider_attempts: int) -> None:
        self.log.append(("commit", cost))
        self.provider_attempts.append(provider_attempts)

    async def release(self, request_id: str) -> None:
        self.log.append(("release", request_id))


class Provider:
    name = "openai"

    def __init__(self, fail: ProviderError | None = None) -> None:
        self.fail = fail

    async def chat(self, request: ProviderRequest) -> ProviderResponse:
        if self.fail:
            raise self.fail
        return ProviderResponse("hi there", "stop", TokenUsage(3, 2))

    async def stream(self, request: ProviderRequest) -> AsyncIterator[StreamItem]:
        yield StreamDelta("hi ")
        if self.fail:
            raise self.fail
        yield StreamDelta("there")
        yield StreamEnd("stop", TokenUsage(3, 2))

    async def aclose(self) -> None:
        return None


class BoundFlow:
    """A ChatFlow with the providers of one config snapshot bound, as the servicer calls it."""

    def __init__(self, ports: Ports, provider: Provider) -> None:
        async def no_sleep(_: float) -> None:
            return None

        chain = ChainExecutor(clock=lambda: 0.0, rng=random.Random(7), sleep=no_sleep)
        self.flow = ChatFlow(ports, ports, chain)
        self.providers = {"openai": provider}

    async def chat(self, caller: Caller, call: ChatCall, timeout_s: float | None) -> ChatResult:
        return await self.flow.chat(caller, call, timeout_s, self.providers)

    def stream(
        self, caller: Caller, call: ChatCall, timeout_s: float | None
    ) -> AsyncIterator[str | StreamToolCallDelta | ChatResult]:
        return self.flow.stream(caller, call, timeout_s, self.providers)

    def worst_case_nanos(self, call: ChatCall) -> int:
        return ChatFlow.worst_case_nanos(call)


def flow(ports: Ports, provider: Provider) -> BoundFlow:
    return BoundFlow(ports, provider)


async def test_success_reserves_worst_case_and_commits_actual() -> None:
    ports = Ports()
    c = call()
    result = await flow(ports, Provider()).chat(CALLER, c, None)
    actual = c.route.pricing.cost_nanos(3, 2)
    assert result.cost_nanos == actual
    assert ports.log == [("reserve", flow(ports, Provider()).worst_case_nanos(c)), ("commit", actual)]
    assert ports.log[0][1] > actual  # type: ignore[operator]
    # The rate-limiter's token estimate is corrected by the billed usage, once.
    assert ports.usage_records == [TokenUsage(3, 2)]
    assert ports.provider_attempts == [1]


@pytest.mark.parametrize("in_memory", [False, True])
async def test_decisions_in_memory_or_from_the_services_settle_alike(in_memory: bool) -> None:
    ports = Ports(in_memory=in_memory)
    c = call()
    result = await flow(ports, Provider()).chat(CALLER, c, None)
    assert ports.log == [("reserve", ChatFlow.worst_case_nanos(c)), ("commit", result.cost_nanos)]
    assert ports.usage_records == [TokenUsage(3, 2)]
    # Asked of the services only when memory could not decide (admission and reservation).
    assert ports.remote_calls == (0 if in_memory else 2)


class CountingProvider(Provider):
    """Answers without suspending; notes how often the loop ran other work before the call
    reached it (a task scheduled when the call starts runs at the call's first suspension)."""

    def __init__(self) -> None:
        super().__init__()
        self.ticks_before_call: int | None = None
        self.ticks = 0

    async def chat(self, request: ProviderRequest) -> ProviderResponse:
        self.ticks_before_call = self.ticks
        return await super().chat(request)


async def test_a_call_decided_in_memory_does_not_suspend_before_the_provider() -> None:
    provider = CountingProvider()

    async def tick() -> None:
        provider.ticks += 1

    ticker = asyncio.get_running_loop().create_task(tick())
    await flow(Ports(in_memory=True), provider).chat(CALLER, call(), None)
    assert provider.ticks_before_call == 0
    await ticker
    # From the services, the call waits for both decisions: the loop runs the ticker first.
    provider.ticks = 0
    ticker = asyncio.get_running_loop().create_task(tick())
    await flow(Ports(), provider).chat(CALLER, call(), None)
    assert provider.ticks_before_call == 1
    await ticker


@pytest.mark.parametrize("in_memory", [False, True])
async def test_refusals_decided_in_memory_release_like_the_services(in_memory: bool) -> None:
    ports = Ports(admit=False, in_memory=in_memory)
    with pytest.raises(RateLimitedError):
        await flow(ports, Provider()).chat(CALLER, call(), None)
    assert ports.log[-1] == ("release", "r1")
    ports = Ports(grant=False, in_memory=in_memory)
    with pytest.raises(BudgetExceededError):
        await flow(ports, Provider()).chat(CALLER, call(), None)
    assert ("release", "r1") not in ports.log


class FlakyProvider(Provider):
    """Fails its first call with a retryable error, then answers."""

    async def chat(self, request: ProviderRequest) -> ProviderResponse:
        if self.fail is not None:
            fail, self.fail = self.fail, None
            raise fail
        return await super().chat(request)


async def test_commit_carries_the_provider_attempts_of_a_retried_call() -> None:
    ports = Ports()
    provider = FlakyProvider(fail=ProviderError("openai", "server_error", "500", 500))
    result = await flow(ports, provider).chat(CALLER, call(), None)
    assert result.text == "hi there"
    assert [k for k, _ in ports.log] == ["reserve", "commit"]  # one commit for the call
    assert ports.provider_attempts == [2]  # a retry, then the answer


async def test_rate_limited_releases_the_reservation() -> None:
    ports = Ports(admit=False)
    with pytest.raises(RateLimitedError) as info:
        await flow(ports, Provider()).chat(CALLER, call(), None)
    assert info.value.retry_after_s == 1.5
    assert ports.log[-1] == ("release", "r1")


async def test_over_budget_is_refused_before_the_provider() -> None:
    ports = Ports(grant=False)
    provider = Provider(fail=ProviderError("openai", "unavailable", "must not be called"))
    with pytest.raises(BudgetExceededError) as info:
        await flow(ports, provider).chat(CALLER, call(), None)
    assert info.value.metadata["scope"] == "project:default/search"
    assert ("release", "r1") not in ports.log


async def test_provider_failure_releases_and_maps_to_upstream_error() -> None:
    ports = Ports()
    with pytest.raises(UpstreamError):
        await flow(ports, Provider(fail=ProviderError("openai", "unavailable", "503", 503))).chat(CALLER, call(), None)
    assert [k for k, _ in ports.log] == ["reserve", "release"]


async def test_stream_yields_deltas_then_result_and_commits_once() -> None:
    ports = Ports()
    items = [i async for i in flow(ports, Provider()).stream(CALLER, call(), None)]
    assert items[:2] == ["hi ", "there"]
    assert isinstance(items[-1], ChatResult) and items[-1].text == "hi there"
    assert [k for k, _ in ports.log] == ["reserve", "commit"]
    assert ports.provider_attempts == [1]


async def test_stream_cut_by_provider_commits_what_was_produced() -> None:
    # The provider bills the tokens it generated before the cut: one delta "hi " here.
    ports = Ports()
    c = call()
    with pytest.raises(UpstreamError):
        async for _ in flow(ports, Provider(fail=ProviderError("openai", "protocol", "cut"))).stream(CALLER, c, None):
            pass
    assert ports.log[1] == ("commit", c.route.pricing.cost_nanos(input_token_bound(c.messages), 1))
    assert ports.provider_attempts == [1]


async def test_stream_abandoned_by_the_caller_commits_only_what_was_produced() -> None:
    ports = Ports()
    c = call()
    stream = cast("AsyncGenerator[object, None]", flow(ports, Provider()).stream(CALLER, c, None))
    assert await anext(stream) == "hi "
    await stream.aclose()  # the caller went away after one delta
    produced = c.route.pricing.cost_nanos(input_token_bound(c.messages), 1)
    assert ports.log == [("reserve", flow(ports, Provider()).worst_case_nanos(c)), ("commit", produced)]
    assert produced < flow(ports, Provider()).worst_case_nanos(c)
    assert ports.provider_attempts == [1]  # the attempt in progress, not yet recorded by the chain


def test_produced_usage_rounds_up_and_never_exceeds_max_tokens() -> None:
    c = call()
    assert produced_usage(c, []).output_tokens == 0
    assert produced_usage(c, ["a", "b"]).output_tokens == 2  # at least one token per delta
    assert produced_usage(c, ["abcdefghi"]).output_tokens == 3  # ceil(9 bytes / 4)
    assert produced_usage(c, ["x" * 10_000]).output_tokens == c.max_tokens


def test_budget_refusal_names_limit_spend_and_reset_time() -> None:
    refusal = Reservation(
        False, "project:acme/search", 25_000_000, 1_000_000_000, 900_000_000, 75_000_000, 1_735_689_600.0, "month"
    )
    err = budget_exceeded(refusal, 30_000_000)
    assert err.metadata["scope"] == "project:acme/search"
    assert (err.metadata["limit_usd"], err.metadata["spent_usd"], err.metadata["reserved_usd"]) == (
        "1",
        "0.9",
        "0.075",
    )
    assert err.metadata["reset_at"] == "2025-01-01T00:00:00Z"
    assert "resets 2025-01-01T00:00:00Z" in err.message and "limit $1 per month" in err.message
    status = to_status(err)
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]


def test_custom_prices_for_private_models_and_overrides() -> None:
    doc = default_routing_document("http://x/v1")
    doc["models"] = [
        {"name": "house-llama", "provider": "openai", "price": {"input_per_mtok": 0.2, "output_per_mtok": "0.6"}},
        {"name": "gpt-4o-mini", "provider": "openai"},
    ]
    config = parse_routing_config(doc, "v", {"gpt-4o-mini": {"input_per_mtok": 0.1, "output_per_mtok": 0.3}})
    assert config.models["house-llama"].pricing.cost_nanos(1_000_000, 1_000_000) == 800_000_000
    assert config.models["gpt-4o-mini"].pricing.cost_nanos(1_000_000, 0) == 100_000_000
    assert config.models["gpt-4o-mini"].pricing.provider_id == "custom"
    doc["models"] = [{"name": "m", "provider": "openai", "price": {"input_per_mtok": -1, "output_per_mtok": 1}}]
    with pytest.raises(RoutingConfigError, match=r"models\[0\]\.price\.input_per_mtok"):
        parse_routing_config(doc, "v")


class SpanSeenProvider(Provider):
    """Remembers the span current when the flow called it (what the provider's request carries)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[trace.SpanContext] = []

    async def chat(self, request: ProviderRequest) -> ProviderResponse:
        self.seen.append(trace.get_current_span().get_span_context())
        return await super().chat(request)

    async def stream(self, request: ProviderRequest) -> AsyncIterator[StreamItem]:
        self.seen.append(trace.get_current_span().get_span_context())
        async for item in super().stream(request):
            yield item


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """A tracer provider recording every span, behind the flow's tracer."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(flow_module, "_tracer", provider.get_tracer("test"))
    yield provider, exporter
    provider.shutdown()


async def run_call(bound: BoundFlow, streamed: bool) -> ChatResult:
    """One call through the flow, unary or streamed; its result."""
    if not streamed:
        return await bound.chat(CALLER, call(), None)
    items = [item async for item in bound.stream(CALLER, call(), None)]
    assert isinstance(items[-1], ChatResult)
    return items[-1]


@pytest.mark.parametrize("streamed", [False, True])
async def test_a_sampled_call_records_request_decisions_attempts_and_answer_on_its_span(
    spans: tuple[TracerProvider, InMemorySpanExporter], streamed: bool
) -> None:
    provider, exporter = spans
    seen = SpanSeenProvider()
    bound = flow(Ports(), seen)
    with provider.get_tracer("server").start_as_current_span("/interlock.router.v1.RouterService/Chat") as server:
        await run_call(bound, streamed)
    finished = {s.name: s for s in exporter.get_finished_spans()}
    recorded = finished["/interlock.router.v1.RouterService/Chat"].attributes or {}
    assert recorded["interlock.project"] == "search"
    assert recorded["interlock.request_id"] == "r1"
    assert recorded["interlock.ratelimit.decision"] == "allowed"
    assert recorded["interlock.budget.decision"] == "reserved"
    assert recorded["interlock.attempts"] == 1
    assert recorded["gen_ai.usage.output_tokens"] == 2
    assert recorded["interlock.cost_nanos"] == call().route.pricing.cost_nanos(3, 2)
    if not streamed:  # a unary call's attempt has a span of its own, the provider's parent
        attempt = finished["chat gpt-4o-mini"]
        assert attempt.parent is not None and attempt.parent.span_id == server.get_span_context().span_id
        assert (attempt.attributes or {})["gen_ai.usage.input_tokens"] == 3
        assert seen.seen == [attempt.get_span_context()]


@pytest.mark.parametrize("streamed", [False, True])
async def test_an_unsampled_call_records_nothing_and_the_provider_sees_its_context(
    spans: tuple[TracerProvider, InMemorySpanExporter], streamed: bool
) -> None:
    _, exporter = spans
    seen = SpanSeenProvider()
    bound = flow(Ports(), seen)
    unsampled = TracerProvider(sampler=ALWAYS_OFF)
    with unsampled.get_tracer("server").start_as_current_span("server") as server:
        assert server.get_span_context().is_valid and not server.is_recording()
        await run_call(bound, streamed)
    assert exporter.get_finished_spans() == ()
    # No span of its own: the provider's request carries the (unsampled) call's context.
    assert seen.seen == [server.get_span_context()]


async def test_a_call_outside_any_trace_starts_one_at_its_attempt(
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    _, exporter = spans
    await flow(Ports(), Provider()).chat(CALLER, call(), None)
    (attempt,) = exporter.get_finished_spans()
    assert attempt.name == "chat gpt-4o-mini" and attempt.parent is None
