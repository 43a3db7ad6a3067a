"""Circuit breaker, retry backoff, weighted choice and adaptive throttle, with time and randomness injected."""

from __future__ import annotations

import random

import pytest

from interlock.services.router.domain.resilience import (
    AdaptiveThrottle,
    BreakerPolicy,
    BreakerState,
    CircuitBreaker,
    RateLimitSignal,
    RetryPolicy,
    ThrottlePolicy,
    WeightedPicker,
    cumulative_weights,
)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# circuit breaker


def test_breaker_opens_after_consecutive_failures_then_half_opens_and_closes() -> None:
    clock = FakeClock()
    b = CircuitBreaker(BreakerPolicy(consecutive_failures=3, failure_ratio=0, cool_down_s=10), clock)
    for _ in range(2):
        assert b.on_start() is False
        b.record_failure()
    assert b.state == BreakerState.CLOSED
    b.record_success()  # a success resets the streak
    for _ in range(3):
        b.on_start()
        b.record_failure()
    assert b.state == BreakerState.OPEN
    assert not b.available()
    clock.now += 9.999
    assert not b.available()
    clock.now += 0.001
    assert b.state == BreakerState.HALF_OPEN and b.available()
    assert b.on_start() is True  # the probe
    assert not b.available()  # one probe at a time
    b.record_success(probe=True)
    assert b.state == BreakerState.CLOSED and b.available()


def test_failed_probe_reopens_for_a_full_cool_down() -> None:
    clock = FakeClock()
    b = CircuitBreaker(BreakerPolicy(consecutive_failures=1, failure_ratio=0, cool_down_s=5, half_open_probes=2), clock)
    b.on_start()
    b.record_failure()
    clock.now += 5
    assert b.on_start() and b.on_start()
    assert not b.available()
    b.record_success(probe=True)
    assert b.state == BreakerState.HALF_OPEN  # both probes must succeed
    b.record_failure(probe=True)
    assert b.state == BreakerState.OPEN and b.reopens_at == clock.now + 5


def test_neutral_outcome_frees_the_probe_without_judging() -> None:
    clock = FakeClock()
    b = CircuitBreaker(BreakerPolicy(consecutive_failures=1, failure_ratio=0, cool_down_s=1), clock)
    b.on_start()
    b.record_failure()
    clock.now += 1
    assert b.on_start()
    b.record_neutral(probe=True)
    assert b.state == BreakerState.HALF_OPEN and b.available()


def test_breaker_opens_on_failure_ratio_over_the_window_only_with_enough_calls() -> None:
    clock = FakeClock()
    policy = BreakerPolicy(consecutive_failures=0, failure_ratio=0.5, window_s=10, min_calls=10, cool_down_s=30)
    b = CircuitBreaker(policy, clock)
    for _ in range(4):  # 4 failures of 4 calls: ratio 1, but fewer than min_calls
        b.record_success()
        b.record_failure()
    assert b.state == BreakerState.CLOSED
    b.record_success()
    b.record_failure()  # 10 calls, 5 failed
    assert b.state == BreakerState.OPEN


def test_failures_outside_the_window_are_forgotten() -> None:
    clock = FakeClock()
    policy = BreakerPolicy(consecutive_failures=0, failure_ratio=0.5, window_s=10, min_calls=4, cool_down_s=30)
    b = CircuitBreaker(policy, clock)
    for _ in range(3):
        b.record_failure()
    clock.now += 11  # the three failures age out
    for _ in range(3):
        b.record_success()
    b.record_failure()
    assert b.state == BreakerState.CLOSED  # 1 of 4 in the window


def test_reconfigure_keeps_state_for_an_equal_policy_and_resets_for_a_new_one() -> None:
    clock = FakeClock()
    b = CircuitBreaker(BreakerPolicy(consecutive_failures=1, failure_ratio=0), clock)
    b.record_failure()
    b.configure(BreakerPolicy(consecutive_failures=1, failure_ratio=0))
    assert b.state == BreakerState.OPEN
    b.configure(BreakerPolicy(consecutive_failures=2, failure_ratio=0))
    assert b.state == BreakerState.CLOSED


# retry backoff


def test_backoff_is_full_jitter_under_a_doubling_cap() -> None:
    policy = RetryPolicy(backoff_base_s=0.1, backoff_max_s=1.0)
    rng = random.Random(7)
    for attempt, cap in ((1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)):
        waits = [policy.backoff(attempt, rng) for _ in range(500)]
        assert all(0 <= w <= cap for w in waits)
        assert max(waits) > cap * 0.9  # the whole range is used
    assert RetryPolicy(backoff_base_s=0, backoff_max_s=0).backoff(3, rng) == 0.0


def test_backoff_never_shortens_retry_after() -> None:
    policy = RetryPolicy(backoff_base_s=0.1, backoff_max_s=1.0)
    rng = random.Random(1)
    assert policy.backoff(1, rng, retry_after_s=7.5) == 7.5  # honoured even above backoff_max_s
    waits = [policy.backoff(4, rng, retry_after_s=0.05) for _ in range(200)]
    assert all(w >= 0.05 for w in waits) and max(waits) > 0.05


def test_backoff_is_reproducible_with_a_seeded_rng() -> None:
    policy = RetryPolicy()
    assert [policy.backoff(2, random.Random(3)) for _ in range(3)] == [policy.backoff(2, random.Random(3))] * 3


# weighted choice


def test_canary_weight_10_of_100_gets_10_percent_over_5000_picks() -> None:
    picker = WeightedPicker(random.Random(20240611))
    picks = [picker.pick([90, 10]) for _ in range(5000)]
    share = picks.count(1) / 5000
    assert 0.08 <= share <= 0.12, share


def test_cumulative_pick_matches_the_weights() -> None:
    picker = WeightedPicker(random.Random(42))
    edges = cumulative_weights([90, 10])
    share = sum(picker.pick_cumulative(edges) for _ in range(5000)) / 5000
    assert 0.08 <= share <= 0.12, share


def test_zero_weights_are_never_picked_and_all_zero_is_refused() -> None:
    picker = WeightedPicker(random.Random(0))
    assert {picker.pick([0, 5, 0]) for _ in range(200)} == {1}
    with pytest.raises(ValueError):
        picker.pick([0, 0])


# adaptive throttle


def test_429_with_retry_after_holds_the_deployment_until_then() -> None:
    clock = FakeClock()
    t = AdaptiveThrottle(ThrottlePolicy(), clock)
    t.observe(RateLimitSignal(rate_limited=True, retry_after_s=2.5))
    assert not t.ready(clock.now + 2.4)
    assert t.ready(clock.now + 2.5)


def test_429_without_hints_holds_for_a_doubling_default() -> None:
    clock = FakeClock()
    t = AdaptiveThrottle(ThrottlePolicy(default_hold_s=1.0, max_hold_s=3.0), clock)
    for expected in (1.0, 2.0, 3.0):  # capped at max_hold_s
        t.observe(RateLimitSignal(rate_limited=True))
        assert t.held_until == clock.now + expected
        clock.now = t.held_until
    t.on_success()
    t.observe(RateLimitSignal(rate_limited=True))
    assert t.held_until == clock.now + 1.0


def test_exhausted_allowance_holds_until_reset_before_any_429() -> None:
    clock = FakeClock()
    t = AdaptiveThrottle(ThrottlePolicy(), clock)
    t.observe(RateLimitSignal(remaining_requests=0, limit_requests=100, reset_requests_s=6.0))
    assert not t.ready(clock.now + 5.9) and t.ready(clock.now + 6.0)


def test_low_allowance_deprioritises_until_reset() -> None:
    clock = FakeClock()
    t = AdaptiveThrottle(ThrottlePolicy(low_watermark=0.1, min_factor=0.05), clock)
    t.observe(RateLimitSignal(remaining_tokens=500, limit_tokens=10_000, reset_tokens_s=4.0))
    assert t.ready(clock.now)
    assert t.weight_factor(clock.now) == pytest.approx(0.5)  # 5% left of a 10% watermark
    assert t.weight_factor(clock.now + 4.0) == 1.0
    t.observe(RateLimitSignal(remaining_tokens=1, limit_tokens=10_000, reset_tokens_s=4.0))
    assert t.weight_factor(clock.now) == 0.05
    t.observe(RateLimitSignal(remaining_tokens=9000, limit_tokens=10_000))
    assert t.weight_factor(clock.now) == 1.0


def test_signal_from_provider_headers() -> None:
    s = RateLimitSignal.from_headers(
        {
            "Retry-After": "3",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-limit-requests": "500",
            "x-ratelimit-reset-requests": "6m0s",
            "x-ratelimit-remaining-tokens": "12",
            "x-ratelimit-reset-tokens": "20ms",
            "x-ratelimit-limit-tokens": "garbage",
        },
        rate_limited=True,
    )
    assert s == RateLimitSignal(
        rate_limited=True,
        retry_after_s=3.0,
        remaining_requests=0,
        remaining_tokens=12,
        limit_requests=500,
        limit_tokens=None,
        reset_requests_s=360.0,
        reset_tokens_s=0.02,
    )
    assert RateLimitSignal.from_headers({"retry-after-ms": "1500", "retry-after": "9"}).retry_after_s == 1.5
    assert RateLimitSignal.from_headers({"x-ratelimit-reset-tokens": "1.5s"}).reset_tokens_s == 1.5
    assert RateLimitSignal.from_headers({"x-ratelimit-reset-tokens": "soon"}).reset_tokens_s is None
