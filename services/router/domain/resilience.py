"""Building blocks that keep a model answering while its providers misbehave.

Pure and single-threaded (one asyncio loop): circuit breakers, retry backoff, weighted
choice and an adaptive throttle that reads providers' rate-limit signals. Time comes from
an injected clock (monotonic seconds) and randomness from an injected `random.Random`,
so tests are exact.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate

from interlock.services.router.domain.provider import ProviderErrorKind as K

Clock = Callable[[], float]
"""Monotonic seconds."""

ERROR_KINDS = (
    K.RATE_LIMITED,
    K.OVERLOADED,
    K.CONTEXT_LENGTH_EXCEEDED,
    K.CONTENT_FILTERED,
    K.AUTH,
    K.BAD_REQUEST,
    K.SERVER_ERROR,
    K.TIMEOUT,
    K.PROTOCOL,
)
"""Every canonical provider error kind, as config lists may name them."""

TERMINAL_KINDS = frozenset({K.BAD_REQUEST, K.AUTH, K.CONTENT_FILTERED})
"""Kinds another attempt cannot fix: the request, the key or the content is the problem."""

DEFAULT_RETRY_ON = frozenset({K.RATE_LIMITED, K.OVERLOADED, K.SERVER_ERROR, K.TIMEOUT, K.PROTOCOL})
DEFAULT_FALLBACK_ON = DEFAULT_RETRY_ON | {K.CONTEXT_LENGTH_EXCEEDED}

BREAKER_FAILURE_KINDS = frozenset({K.OVERLOADED, K.SERVER_ERROR, K.TIMEOUT, K.PROTOCOL})
"""Kinds that say a deployment is unhealthy. 429s feed the throttle instead; request errors
(bad request, context length, content filter, auth) say nothing about its health."""


# Retry


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When one call tries again, and how long it waits first."""

    max_attempts: int = 2
    """Attempts on one deployment within one call, the first included (1: never the same one twice)."""
    backoff_base_s: float = 0.1
    """Cap of the first retry's wait; the cap doubles per retry (full jitter: a uniform draw below it)."""
    backoff_max_s: float = 5.0
    """Largest jittered wait; also the longest the chain waits for a held deployment."""
    retry_on: frozenset[str] = DEFAULT_RETRY_ON
    """Error kinds after which the same deployment may be tried again."""
    fallback_on: frozenset[str] = DEFAULT_FALLBACK_ON
    """Error kinds after which the chain moves to the next deployment."""

    def backoff(self, attempt: int, rng: random.Random, retry_after_s: float | None = None) -> float:
        """Seconds to wait before retry number `attempt` (1 = the first retry).

        Full jitter (a uniform draw in [0, min(max, base * 2^(attempt-1))]) spreads retries
        of many callers apart; a provider's retry-after is a floor, never shortened.
        """
        cap = min(self.backoff_max_s, self.backoff_base_s * 2.0 ** max(0, attempt - 1))
        wait = rng.uniform(0.0, cap) if cap > 0 else 0.0
        if retry_after_s is not None and retry_after_s > wait:
            return retry_after_s
        return wait


# Circuit breaker


class BreakerState:
    CLOSED = "closed"
    """Calls flow; failures are counted."""
    OPEN = "open"
    """Calls are refused until the cool-down ends."""
    HALF_OPEN = "half_open"
    """A few probe calls test the deployment; their success closes the breaker."""


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a deployment's breaker opens and how it recovers."""

    consecutive_failures: int = 5
    """Open after this many failures in a row; 0 turns the rule off."""
    failure_ratio: float = 0.5
    """Open when at least this share of the calls in the window failed; 0 turns the rule off."""
    window_s: float = 30.0
    """Length of the sliding window the ratio is judged over."""
    min_calls: int = 20
    """The ratio rule waits for this many calls in the window, so one early failure cannot trip it."""
    cool_down_s: float = 30.0
    """How long an open breaker refuses calls before it lets probes through."""
    half_open_probes: int = 1
    """Probe calls let through after the cool-down; all must succeed to close."""


_BUCKETS = 10
"""Slices of the ratio window: counting per slice keeps each record O(1) and allocation-free."""


class CircuitBreaker:
    """Closed / open / half-open breaker of one deployment.

    `available()` asks without side effects (the picker asks of many deployments);
    `on_start()` is called once a call is really sent and says whether it is a probe; the
    outcome is then recorded exactly once with `record_success`, `record_failure` or
    `record_neutral` (an outcome that says nothing about health, e.g. a bad request).
    """

    __slots__ = (
        "_bad",
        "_clock",
        "_consecutive",
        "_epoch",
        "_ok",
        "_opened_at",
        "_probe_ok",
        "_probes",
        "_state",
        "_width",
        "policy",
    )

    def __init__(self, policy: BreakerPolicy, clock: Clock) -> None:
        self._clock = clock
        self.policy = policy
        self._width = policy.window_s / _BUCKETS
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._opened_at = 0.0
        self._probes = 0
        self._probe_ok = 0
        self._ok = [0] * _BUCKETS
        self._bad = [0] * _BUCKETS
        self._epoch = [-1] * _BUCKETS

    def configure(self, policy: BreakerPolicy) -> None:
        """Adopt a new config's policy; state survives when the policy is unchanged."""
        if policy != self.policy:
            self._width = policy.window_s / _BUCKETS
            self._opened_at = 0.0
            self._close()
        self.policy = policy

    @property
    def state(self) -> str:
        if self._state == BreakerState.OPEN and self._clock() >= self.reopens_at:
            return BreakerState.HALF_OPEN
        return self._state

    @property
    def reopens_at(self) -> float:
        """When an open breaker starts letting probes through."""
        return self._opened_at + self.policy.cool_down_s

    def available(self) -> bool:
        """Whether a call may be sent now."""
        state = self._state
        if state == BreakerState.CLOSED:
            return True
        if state == BreakerState.OPEN:
            return self._clock() >= self.reopens_at
        return self._probes < self.policy.half_open_probes

    def on_start(self) -> bool:
        """A call is being sent; True when it is a half-open probe."""
        if self._state == BreakerState.CLOSED:
            return False
        if self._state == BreakerState.OPEN:
            self._state = BreakerState.HALF_OPEN
            self._probes = 0
            self._probe_ok = 0
        self._probes += 1
        return True

    def record_success(self, probe: bool = False) -> None:
        if self._state == BreakerState.CLOSED:
            self._consecutive = 0
            if self.policy.failure_ratio > 0:
                self._ok[self._bucket(self._clock())] += 1
        elif probe and self._state == BreakerState.HALF_OPEN:
            self._probes -= 1
            self._probe_ok += 1
            if self._probe_ok >= self.policy.half_open_probes:
                self._close()

    def record_failure(self, probe: bool = False) -> None:
        now = self._clock()
        if self._state == BreakerState.HALF_OPEN:
            if probe:
                self._open(now)
            return
        if self._state == BreakerState.OPEN:
            return  # a call sent before the breaker opened; it already counted
        p = self.policy
        self._consecutive += 1
        if p.consecutive_failures and self._consecutive >= p.consecutive_failures:
            self._open(now)
            return
        if p.failure_ratio > 0:
            self._bad[self._bucket(now)] += 1
            bad, calls = self._window_counts(now)
            if calls >= p.min_calls and bad >= p.failure_ratio * calls:
                self._open(now)

    def record_neutral(self, probe: bool = False) -> None:
        if probe and self._state == BreakerState.HALF_OPEN:
            self._probes -= 1

    def _open(self, now: float) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = now
        self._probes = 0
        self._probe_ok = 0

    def _close(self) -> None:
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._probes = 0
        self._probe_ok = 0
        for i in range(_BUCKETS):
            self._ok[i] = self._bad[i] = 0
            self._epoch[i] = -1

    def _bucket(self, now: float) -> int:
        epoch = int(now // self._width)
        i = epoch % _BUCKETS
        if self._epoch[i] != epoch:
            self._epoch[i] = epoch
            self._ok[i] = self._bad[i] = 0
        return i

    def _window_counts(self, now: float) -> tuple[int, int]:
        oldest = int(now // self._width) - _BUCKETS + 1
        bad = calls = 0
        for i in range(_BUCKETS):
            if self._epoch[i] >= oldest:
                bad += self._bad[i]
                calls += self._bad[i] + self._ok[i]
        return bad, calls


# Weighted choice


class WeightedPicker:
    """Random weighted choice: a deployment of weight w among total W is chosen with p = w/W.

    Random rather than round-robin so that choices need no shared state across calls and
    stay proportional when some deployments are skipped for one call.
    """

    __slots__ = ("_rng",)

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def pick(self, weights: Sequence[float]) -> int:
        """Index of the chosen weight; weights must be non-negative with a positive sum."""
        total = math.fsum(weights)
        if not total > 0:
            raise ValueError("weights must have a positive sum")
        point = self._rng.random() * total
        for i, w in enumerate(weights):
            point -= w
            if point < 0 and w > 0:
                return i
        # Rounding left `point` at the very top: the last positive weight owns it.
        return max(i for i, w in enumerate(weights) if w > 0)

    def pick_cumulative(self, cumulative: Sequence[float]) -> int:
        """Like `pick`, over precomputed running sums (no per-call allocation)."""
        point = self._rng.random() * cumulative[-1]
        for i, edge in enumerate(cumulative):
            if point < edge:
                return i
        return len(cumulative) - 1


def cumulative_weights(weights: Sequence[float]) -> tuple[float, ...]:
    return tuple(accumulate(weights))


# Adaptive throttle


@dataclass(frozen=True, slots=True)
class RateLimitSignal:
    """What a provider said about its rate limits on one response (any field may be absent)."""

    rate_limited: bool = False
    """The response was a 429 (or the provider's equivalent)."""
    retry_after_s: float | None = None
    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    limit_requests: int | None = None
    limit_tokens: int | None = None
    reset_requests_s: float | None = None
    """Seconds until the request allowance is full again."""
    reset_tokens_s: float | None = None
    """Seconds until the token allowance is full again."""

    @classmethod
    def from_headers(cls, headers: Mapping[str, str], *, rate_limited: bool = False) -> RateLimitSignal:
        """Read retry-after / retry-after-ms and x-ratelimit-{remaining,limit,reset}-{requests,tokens}.

        Header names are matched case-insensitively; unreadable values count as absent.
        Resets take OpenAI's duration form (`1s`, `6m0s`, `20ms`) or plain seconds.
        """
        h = {k.lower(): v for k, v in headers.items()}
        retry_after = _seconds(h.get("retry-after-ms"), scale=0.001)
        if retry_after is None:
            retry_after = _seconds(h.get("retry-after"))
        return cls(
            rate_limited=rate_limited,
            retry_after_s=retry_after,
            remaining_requests=_count(h.get("x-ratelimit-remaining-requests")),
            remaining_tokens=_count(h.get("x-ratelimit-remaining-tokens")),
            limit_requests=_count(h.get("x-ratelimit-limit-requests")),
            limit_tokens=_count(h.get("x-ratelimit-limit-tokens")),
            reset_requests_s=_duration(h.get("x-ratelimit-reset-requests")),
            reset_tokens_s=_duration(h.get("x-ratelimit-reset-tokens")),
        )


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def _seconds(text: str | None, scale: float = 1.0) -> float | None:
    try:
        value = float(text) * scale if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) and value >= 0 else None


def _count(text: str | None) -> int | None:
    try:
        value = int(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and value >= 0 else None


def _duration(text: str | None) -> float | None:
    if text is None:
        return None
    plain = _seconds(text)
    if plain is not None:
        return plain
    parts = _DURATION_PART.findall(text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    """How a deployment slows down on rate-limit signals."""

    default_hold_s: float = 1.0
    """Hold after a 429 that names no retry-after or reset; doubles per consecutive 429."""
    max_hold_s: float = 60.0
    """Longest hold from one signal."""
    low_watermark: float = 0.1
    """Below this share of its allowance left, a deployment's weight shrinks in proportion."""
    min_factor: float = 0.05
    """Smallest weight factor, so a nearly exhausted deployment still gets a trickle."""


@dataclass(slots=True)
class AdaptiveThrottle:
    """Rate-limit state of one deployment: held until a reset, or deprioritised when nearly out.

    A 429 holds the deployment for the provider's retry-after (or the reset of the
    exhausted allowance, or a doubling default). A success that reports an allowance at 0
    holds it until that allowance resets, before the provider returns 429s; one that
    reports little left scales its weight among its tier down until the reset.
    """

    policy: ThrottlePolicy
    clock: Clock
    held_until: float = 0.0
    factor: float = 1.0
    factor_until: float = 0.0
    streak: int = field(default=0)
    """Consecutive 429s."""

    def ready(self, now: float) -> bool:
        return now >= self.held_until

    def weight_factor(self, now: float) -> float:
        if self.factor < 1.0 and now >= self.factor_until:
            self.factor = 1.0
        return self.factor

    def on_success(self) -> None:
        self.streak = 0

    def observe(self, signal: RateLimitSignal) -> None:
        now = self.clock()
        p = self.policy
        exhausted = [
            reset
            for remaining, reset in (
                (signal.remaining_requests, signal.reset_requests_s),
                (signal.remaining_tokens, signal.reset_tokens_s),
            )
            if remaining == 0
        ]
        if signal.rate_limited:
            self.streak += 1
            if signal.retry_after_s is not None:
                hold = signal.retry_after_s
            elif any(r is not None for r in exhausted):
                hold = max(r for r in exhausted if r is not None)
            else:
                hold = p.default_hold_s * 2.0 ** (self.streak - 1)
            self._hold(now, hold)
            return
        self.streak = 0
        if exhausted:
            self._hold(now, max((r for r in exhausted if r is not None), default=p.default_hold_s))
        elif signal.retry_after_s is not None:
            self._hold(now, signal.retry_after_s)
        ratios = [
            (remaining / limit, reset)
            for remaining, limit, reset in (
                (signal.remaining_requests, signal.limit_requests, signal.reset_requests_s),
                (signal.remaining_tokens, signal.limit_tokens, signal.reset_tokens_s),
            )
            if remaining is not None and limit
        ]
        if ratios:
            ratio, reset = min(ratios, key=lambda r: r[0])
            if ratio < p.low_watermark:
                self.factor = max(p.min_factor, ratio / p.low_watermark)
                self.factor_until = now + min(p.max_hold_s, reset if reset is not None else p.default_hold_s)
            else:
                self.factor = 1.0

    def _hold(self, now: float, seconds: float) -> None:
        self.held_until = max(self.held_until, now + min(self.policy.max_hold_s, max(0.0, seconds)))
