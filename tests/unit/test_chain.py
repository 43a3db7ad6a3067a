"""The chain walk with scripted fake attempts; time, sleep and randomness are injected."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import pytest

from interlock.services.router.domain.chain import ChainError, ChainExecutor, ChainFailure
from interlock.services.router.domain.provider import (
    ProviderError,
    StreamDelta,
    StreamEnd,
    StreamItem,
    StreamToolCallDelta,
    TokenUsage,
)
from interlock.services.router.domain.provider import ProviderErrorKind as K
from interlock.services.router.domain.resilience import BreakerState, RateLimitSignal
from interlock.services.router.domain.routing import Deployment, ModelRoute, parse_routing_config

CUSTOM = {"input_per_mtok": 1, "output_per_mtok": 2}
RETRYABLE = (K.RATE_LIMITED, K.OVERLOADED, K.SERVER_ERROR, K.TIMEOUT, K.PROTOCOL)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def make_route(*deployments: dict[str, Any], retry: dict[str, Any] | None = None, **breaker: Any) -> ModelRoute:
    """A chain of deployments on providers a, b, c, d (each dict: provider + optional fields)."""
    chain = [{"upstream_model": "m", "price": CUSTOM, **d} for d in deployments]
    model: dict[str, Any] = {"name": "chat", "deployments": chain}
    if retry:
        model["retry"] = retry
    if breaker:
        model["circuit_breaker"] = breaker
    doc = {
        "providers": [{"name": p, "kind": "openai", "base_url": f"http://{p}/v1", "timeout_s": 30} for p in "abcd"],
        "models": [model],
    }
    return parse_routing_config(doc, "test").models["chat"]


def executor(clock: FakeClock, seed: int = 1) -> ChainExecutor:
    return ChainExecutor(clock=clock, rng=random.Random(seed), sleep=clock.sleep)


def fail(provider: str, kind: str, retry_after_s: float | None = None) -> ProviderError:
    return ProviderError(provider, kind, f"scripted {kind}", retry_after_s=retry_after_s)


class ScriptedAttempts:
    """Answers per provider from a script (ProviderError or text); unscripted providers answer `ok:<provider>`."""

    def __init__(self, clock: FakeClock, script: Mapping[str, Sequence[Any]] | None = None, latency_s: float = 0.0):
        self.clock = clock
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.latency_s = latency_s
        self.calls: list[tuple[str, float, float]] = []
        """(provider, timeout given, start time)."""

    def outcome(self, d: Deployment) -> Any:
        steps = self.script.get(d.provider)
        if not steps:
            return f"ok:{d.provider}"
        return steps.pop(0) if len(steps) > 1 else steps[0]  # the last step repeats

    async def __call__(self, d: Deployment, timeout_s: float) -> str:
        self.calls.append((d.provider, timeout_s, self.clock.now))
        self.clock.now += self.latency_s
        result = self.outcome(d)
        if isinstance(result, ProviderError):
            raise result
        return str(result)

    @property
    def providers(self) -> list[str]:
        return [p for p, _, _ in self.calls]


async def test_healthy_first_attempt_is_one_record_without_sleeping() -> None:
    clock = FakeClock()
    attempts = ScriptedAttempts(clock, latency_s=0.25)
    result = await executor(clock).call(make_route({"provider": "a"}, {"provider": "b"}), attempts, timeout_s=10)
    assert result.value == "ok:a" and result.deployment.provider == "a"
    assert [(r.deployment.key, r.kind, r.latency_s) for r in result.attempts] == [("a/m", "", 0.25)]
    assert attempts.calls == [("a", 10.0, 100.0)] and clock.sleeps == []


@pytest.mark.parametrize(
    ("kind", "expected_calls"),
    [
        (K.RATE_LIMITED, ["a", "b"]),  # the 429 holds a, so the ready fallback goes first
        (K.OVERLOADED, ["a", "a", "b"]),  # one retry on the same deployment, then fall back
        (K.SERVER_ERROR, ["a", "a", "b"]),
        (K.TIMEOUT, ["a", "a", "b"]),
        (K.PROTOCOL, ["a", "a", "b"]),
        (K.CONTEXT_LENGTH_EXCEEDED, ["a", "b"]),  # never the same deployment again
    ],
)
async def test_each_retryable_kind_takes_its_configured_path(kind: str, expected_calls: list[str]) -> None:
    clock = FakeClock()
    attempts = ScriptedAttempts(clock, {"a": [fail("a", kind)]})
    route = make_route({"provider": "a", "context_window": 8000}, {"provider": "b", "context_window": 128000})
    result = await executor(clock).call(route, attempts, timeout_s=60)
    assert attempts.providers == expected_calls
    assert result.value == "ok:b"
    assert [r.kind for r in result.attempts] == [kind] * (len(expected_calls) - 1) + [""]
    same_retries = expected_calls.count("a") - 1
    assert len(clock.sleeps) == same_retries and all(0 <= s <= 0.1 for s in clock.sleeps)  # full jitter under base


@pytest.mark.parametrize("kind", [K.BAD_REQUEST, K.AUTH, K.CONTENT_FILTERED])
async def test_request_errors_are_never_retried_and_come_back_typed(kind: str) -> None:
    clock = FakeClock()
    attempts = ScriptedAttempts(clock, {"a": [fail("a", kind)]})
    with pytest.raises(ChainError) as info:
        await executor(clock).call(make_route({"provider": "a"}, {"provider": "b"}), attempts, timeout_s=60)
    err = info.value
    assert (err.reason, err.kind, err.provider) == (ChainFailure.TERMINAL, kind, "a")
    assert attempts.providers == ["a"] and [r.kind for r in err.attempts] == [kind]


async def test_a_kind_the_policy_does_not_list_is_terminal() -> None:
    clock = FakeClock()
    attempts = ScriptedAttempts(clock, {"a": [fail("a", K.TIMEOUT)]})
    route = make_route({"provider": "a"}, {"provider": "b"}, retry={"retry_on": [], "fallback_on": ["server_error"]})
    with pytest.raises(ChainError) as info:
        await executor(clock).call(route, attempts)
    assert info.value.reason == ChainFailure.TERMINAL and attempts.providers == ["a"]


async def test_fallback_only_when_the_kind_is_listed() -> None:
    clock = FakeClock()
    attempts = ScriptedAttempts(clock, {"a": [fail("a", K.SERVER_ERROR)]})
    route = make_route({"provider": "a"}, {"provider": "b"}, retry={"max_attempts": 3, "fallback_on": ["timeout"]})
    with pytest.raises(ChainError) as info:
        await executor(clock).call(route, attempts)
    assert info.value.reason == ChainFailure.EXHAUSTED and attempts.providers == ["a", "a", "a"]


@pytest.mark.parametrize("healthy", range(4))
async def test_caller_sees_success_while_one_deployment_is_healthy(healthy: int) -> None:
    clock = FakeClock()
    rng = random.Random(healthy)
    names = "abcd"
    script = {p: [fail(p, rng.choice(RETRYABLE)) for _ in range(3)] for i, p in enumerate(names) if i != healthy}
    attempts = ScriptedAttempts(clock, script, latency_s=0.05)
    route = make_route(
        {"provider": "a", "priority": 0, "weight": 3},
        {"provider": "b", "priority": 0},
        {"provider": "c"},
        {"provider": "d"},
    )
    result = await executor(clock, seed=healthy).call(route, attempts, timeout_s=60)
    assert result.value == f"ok:{names[healthy]}"
    assert result.attempts[-1].ok and not any(r.ok for r in result.attempts[:-1])


async def test_retry_after_is_honoured_on_the_same_deployment() -> None:
    clock = FakeClock()
    attempts = ScriptedAttempts(clock, {"a": [fail("a", K.RATE_LIMITED, retry_after_s=2.5), "late ok"]})
    result = await executor(clock).call(make_route({"provider": "a"}), attempts, timeout_s=60)
    assert result.value == "late ok"
    assert clock.sleeps == [2.5]
    assert attempts.calls[1][2] - attempts.calls[0][2] == 2.5
    assert result.attempts[1].waited_s == 2.5


async def test_long_retry_after_moves_to_a_fallback_without_waiting() -> None:
    clock = FakeClock()
    ex = executor(clock)
    route = make_route({"provider": "a"}, {"provider": "b"})
    attempts = ScriptedAttempts(clock, {"a": [fail("a", K.RATE_LIMITED, retry_after_s=30)]})
    assert (await ex.call(route, attempts)).value == "ok:b"
    assert clock.sleeps == []
    # The throttle holds `a` for the 30 s: the next calls go to b without trying a.
    clock.now += 29
    assert (await ex.call(route, attempts)).value == "ok:b"
    clock.now += 1
    attempts.script.clear()
    assert (await ex.call(route, attempts)).value == "ok:a"
    assert attempts.providers == ["a", "b", "b", "a"]


async def test_retry_after_beyond_the_deadline_is_not_waited_for() -> None:
    clock = FakeClock()
    attempts = ScriptedAttempts(clock, {"a": [fail("a", K.RATE_LIMITED, retry_after_s=20)]})
    with pytest.raises(ChainError) as info:
        await executor(clock).call(make_route({"provider": "a"}), attempts, timeout_s=10)
    assert (info.value.reason, info.value.kind, info.value.retry_after_s) == (ChainFailure.DEADLINE, K.TIMEOUT, 20)
    assert clock.sleeps == [] and attempts.providers == ["a"]


async def test_deadline_bounds_the_chain_and_each_attempt_gets_the_time_left() -> None:
    clock = FakeClock()
    attempts = ScriptedAttempts(clock, {p: [fail(p, K.SERVER_ERROR)] for p in "abcd"}, latency_s=1.0)
    route = make_route(
        {"provider": "a"},
        {"provider": "b"},
        {"provider": "c"},
        {"provider": "d"},
        retry={"max_attempts": 5, "backoff_base_s": 0.5, "backoff_max_s": 0.5},
        consecutive_failures=0,
        failure_ratio=0,
    )
    start = clock.now
    with pytest.raises(ChainError) as info:
        await executor(clock).call(route, attempts, timeout_s=2.5)
    deadline = start + 2.5
    assert info.value.reason == ChainFailure.DEADLINE and info.value.kind == K.TIMEOUT
    assert len(attempts.calls) >= 2
    for _, timeout, started in attempts.calls:
        assert started < deadline
        assert timeout == pytest.approx(deadline - started)  # the deployment's own 30 s is longer


async def test_an_expired_deadline_sends_nothing() -> None:
    clock = FakeClock()
    attempts = ScriptedAttempts(clock)
    with pytest.raises(ChainError) as info:
        await executor(clock).call(make_route({"provider": "a"}), attempts, timeout_s=0)
    assert info.value.reason == ChainFailure.DEADLINE and attempts.calls == []


async def test_attempt_timeout_is_the_deployments_when_shorter() -> None:
    clock = FakeClock()
    attempts = ScriptedAttempts(clock)
    await executor(clock).call(make_route({"provider": "a", "timeout_s": 7}), attempts, timeout_s=100)
    assert attempts.calls[0][1] == 7.0


async def test_context_length_falls_back_only_to_a_larger_window() -> None:
    clock = FakeClock()
    too_long = {p: [fail(p, K.CONTEXT_LENGTH_EXCEEDED)] for p in "abcd"}
    attempts = ScriptedAttempts(clock, too_long)
    route = make_route(
        {"provider": "a", "context_window": 8000},
        {"provider": "b", "context_window": 4000},
        {"provider": "c", "context_window": 32000},
        {"provider": "d", "context_window": 16000},
    )
    with pytest.raises(ChainError) as info:
        await executor(clock).call(route, attempts)
    assert attempts.providers == ["a", "c"]  # b and d are smaller than what already failed
    assert (info.value.reason, info.value.kind) == (ChainFailure.EXHAUSTED, K.CONTEXT_LENGTH_EXCEEDED)


async def test_context_length_without_a_known_window_does_not_fall_back() -> None:
    clock = FakeClock()
    attempts = ScriptedAttempts(clock, {"a": [fail("a", K.CONTEXT_LENGTH_EXCEEDED)]})
    route = make_route({"provider": "a"}, {"provider": "b", "context_window": 1_000_000})
    with pytest.raises(ChainError) as info:
        await executor(clock).call(route, attempts)
    assert info.value.reason == ChainFailure.TERMINAL and attempts.providers == ["a"]


async def test_open_breaker_is_skipped_then_probed_after_cool_down() -> None:
    clock = FakeClock()
    ex = executor(clock)
    route = make_route({"provider": "a"}, {"provider": "b"}, consecutive_failures=1, cool_down_s=10)
    attempts = ScriptedAttempts(clock, {"a": [fail("a", K.SERVER_ERROR), "ok:a"]})
    assert (await ex.call(route, attempts)).value == "ok:b"  # a opened: no same-deployment retry
    assert ex.health(route.deployments[0]).breaker.state == BreakerState.OPEN
    assert (await ex.call(route, attempts)).value == "ok:b"
    clock.now += 10
    assert (await ex.call(route, attempts)).value == "ok:a"  # the half-open probe succeeds
    assert ex.health(route.deployments[0]).breaker.state == BreakerState.CLOSED
    assert attempts.providers == ["a", "b", "b", "a"]


async def test_every_breaker_open_fails_fast_without_sending() -> None:
    clock = FakeClock()
    ex = executor(clock)
    route = make_route({"provider": "a"}, consecutive_failures=1, cool_down_s=30)
    attempts = ScriptedAttempts(clock, {"a": [fail("a", K.OVERLOADED)]})
    with pytest.raises(ChainError):
        await ex.call(route, attempts, timeout_s=60)
    clock.now += 5
    with pytest.raises(ChainError) as info:
        await ex.call(route, attempts, timeout_s=60)
    err = info.value
    assert (err.reason, err.kind, err.attempts, err.retry_after_s) == (ChainFailure.UNAVAILABLE, K.OVERLOADED, (), 25)
    assert attempts.providers == ["a"]


async def test_throttle_signals_steer_traffic_before_429s() -> None:
    clock = FakeClock()
    ex = executor(clock)
    route = make_route({"provider": "a"}, {"provider": "b"})
    attempts = ScriptedAttempts(clock)
    ex.observe(route.deployments[0], RateLimitSignal(remaining_requests=0, limit_requests=60, reset_requests_s=5))
    assert (await ex.call(route, attempts)).value == "ok:b"
    clock.now += 5
    assert (await ex.call(route, attempts)).value == "ok:a"


async def test_a_short_hold_on_the_only_deployment_is_waited_out() -> None:
    clock = FakeClock()
    ex = executor(clock)
    route = make_route({"provider": "a"})
    ex.observe(route.deployments[0], RateLimitSignal(remaining_tokens=0, reset_tokens_s=0.4))
    attempts = ScriptedAttempts(clock)
    result = await ex.call(route, attempts, timeout_s=10)
    assert clock.sleeps == [pytest.approx(0.4)] and result.attempts[0].waited_s == pytest.approx(0.4)
    ex.observe(route.deployments[0], RateLimitSignal(remaining_tokens=0, reset_tokens_s=50))
    with pytest.raises(ChainError) as info:
        await ex.call(route, attempts, timeout_s=10)
    assert (info.value.reason, info.value.kind) == (ChainFailure.UNAVAILABLE, K.RATE_LIMITED)


async def test_weights_split_a_tier_90_10() -> None:
    clock = FakeClock()
    ex = executor(clock, seed=5)
    route = make_route({"provider": "a", "priority": 0, "weight": 90}, {"provider": "b", "priority": 0, "weight": 10})
    served: dict[str, int] = defaultdict(int)
    attempts = ScriptedAttempts(clock)
    for _ in range(5000):
        served[(await ex.call(route, attempts)).deployment.provider] += 1
    assert 0.08 <= served["b"] / 5000 <= 0.12


async def test_other_exceptions_propagate_and_free_the_probe() -> None:
    clock = FakeClock()
    ex = executor(clock)
    route = make_route({"provider": "a"}, consecutive_failures=1, cool_down_s=1)
    ex.health(route.deployments[0]).breaker.record_failure()
    clock.now += 1

    async def broken(d: Deployment, timeout_s: float) -> str:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        await ex.call(route, broken)
    assert ex.health(route.deployments[0]).breaker.available()  # the probe slot was released


# streams

END = StreamEnd("stop", TokenUsage(3, 2))


class ScriptedStreams:
    """Per provider: a list of items, where a ProviderError item is raised at that point."""

    def __init__(self, script: dict[str, list[Any]]) -> None:
        self.script = script
        self.opened: list[str] = []
        self.closed: list[str] = []

    def __call__(self, d: Deployment, timeout_s: float) -> AsyncIterator[StreamItem]:
        self.opened.append(d.provider)
        return self._items(d.provider)

    async def _items(self, provider: str) -> AsyncIterator[StreamItem]:
        try:
            for item in self.script.get(provider, [StreamDelta(f"hi from {provider}"), END]):
                if isinstance(item, ProviderError):
                    raise item
                yield item
        finally:
            self.closed.append(provider)


async def collect(stream: AsyncIterator[StreamItem]) -> list[StreamItem]:
    return [item async for item in stream]


async def test_stream_falls_back_before_the_first_token() -> None:
    clock = FakeClock()
    streams = ScriptedStreams({"a": [StreamDelta(""), fail("a", K.OVERLOADED)]})
    route = make_route({"provider": "a"}, {"provider": "b"}, retry={"max_attempts": 1})
    s = executor(clock).stream(route, streams, timeout_s=30)
    items = await collect(s)
    assert items == [StreamDelta(""), StreamDelta("hi from b"), END]  # an empty delta carries no output
    assert s.deployment is not None and s.deployment.provider == "b"
    assert [(r.deployment.provider, r.kind) for r in s.attempts] == [("a", K.OVERLOADED), ("b", "")]
    assert streams.closed == ["a", "b"]


async def test_stream_cut_before_its_end_item_counts_as_protocol_and_falls_back() -> None:
    clock = FakeClock()
    streams = ScriptedStreams({"a": []})
    route = make_route({"provider": "a"}, {"provider": "b"}, retry={"max_attempts": 1})
    s = executor(clock).stream(route, streams)
    assert (await collect(s))[-1] == END
    assert [r.kind for r in s.attempts] == [K.PROTOCOL, ""]


@pytest.mark.parametrize("first", [StreamDelta("Hel"), StreamToolCallDelta(0, id="call_1", name="f")])
async def test_stream_failure_after_output_is_a_typed_error(first: StreamItem) -> None:
    clock = FakeClock()
    streams = ScriptedStreams({"a": [first, fail("a", K.SERVER_ERROR)]})
    s = executor(clock).stream(make_route({"provider": "a"}, {"provider": "b"}), streams)
    received: list[StreamItem] = []
    with pytest.raises(ChainError) as info:
        async for item in s:
            received.append(item)
    assert received == [first] and s.started
    assert (info.value.reason, info.value.kind) == (ChainFailure.INTERRUPTED, K.SERVER_ERROR)
    assert streams.opened == ["a"]  # no fallback can replace output the caller already has


async def test_stream_records_time_to_first_output() -> None:
    clock = FakeClock()
    s = executor(clock).stream(make_route({"provider": "a"}), ScriptedStreams({}))
    await collect(s)
    assert s.attempts[0].first_output_s == 0.0 and s.attempts[0].ok


async def test_closing_a_stream_early_closes_the_provider_stream() -> None:
    clock = FakeClock()
    streams = ScriptedStreams({"a": [StreamDelta("one"), StreamDelta("two"), END]})
    route = make_route({"provider": "a"}, consecutive_failures=1, cool_down_s=1)
    ex = executor(clock)
    s = ex.stream(route, streams)
    assert await s.__anext__() == StreamDelta("one")
    await s.aclose()
    assert streams.closed == ["a"]
    assert ex.health(route.deployments[0]).breaker.state == BreakerState.CLOSED
