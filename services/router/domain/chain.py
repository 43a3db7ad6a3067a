"""One call walks its model's deployment chain: pick, attempt, retry, fall back, give up typed.

`ChainExecutor` is long-lived (one per router process) and keeps a circuit breaker and an
adaptive throttle per deployment key, so health outlives config versions: a model switch
keeps what is known about deployments that stay. Each call passes the `ModelRoute` of the
config version it is pinned to. The I/O is an injected attempt function, so this module
stays pure; clock, sleep and randomness are injected too.

Walk of one call:
- Pick: tiers in priority order; within a tier a weighted random choice among deployments
  whose breaker lets a call through and whose throttle does not hold them (weights are
  scaled down for deployments that report little allowance left).
- After a failure of kind k on deployment d:
  - k terminal (bad_request, auth, content_filtered) or in neither `retry_on` nor
    `fallback_on`: the call fails at once (reason `terminal`).
  - k in `retry_on`, d has attempts left (`max_attempts` per deployment), its breaker still
    lets calls through and no fallback is ready unheld: retry d after a full-jitter backoff
    that honours retry-after.
  - else, k in `fallback_on`: the next untried deployment (same tier first, then the next
    tiers), without waiting. For context_length_exceeded only deployments with a larger
    known context window qualify, and d is never retried.
  - nothing left: reason `exhausted` (or `deadline` when only time was missing).
- No attempt starts after the caller's deadline; each gets min(its timeout, time left).
- Streams may fall back only until the first text or tool-call delta was yielded; a
  failure after that is reason `interrupted`, never a silent success.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, NamedTuple, TypeVar

from interlock.services.router.domain.provider import (
    ProviderError,
    StreamDelta,
    StreamEnd,
    StreamItem,
    StreamToolCallDelta,
)
from interlock.services.router.domain.provider import ProviderErrorKind as K
from interlock.services.router.domain.resilience import (
    BREAKER_FAILURE_KINDS,
    TERMINAL_KINDS,
    AdaptiveThrottle,
    CircuitBreaker,
    Clock,
    RateLimitSignal,
    ThrottlePolicy,
    WeightedPicker,
)
from interlock.services.router.domain.routing import Deployment, ModelRoute

T = TypeVar("T")

Attempt = Callable[[Deployment, float], Awaitable[T]]
"""Send one attempt to a deployment with this many seconds to finish; raises ProviderError."""
OpenStream = Callable[[Deployment, float], AsyncIterator[StreamItem]]
"""Open one streaming attempt; yields deltas then one StreamEnd; raises ProviderError."""
Sleep = Callable[[float], Awaitable[None]]


class ChainFailure:
    """Why a call through the chain failed (`ChainError.reason`)."""

    TERMINAL = "terminal"
    """The error kind is never retried (or this model's policy lists it nowhere)."""
    EXHAUSTED = "exhausted"
    """Every deployment that could serve was tried."""
    DEADLINE = "deadline"
    """The caller's deadline left no time for another attempt."""
    UNAVAILABLE = "unavailable"
    """Every deployment is behind an open breaker or held by its throttle; nothing was sent."""
    INTERRUPTED = "interrupted"
    """A stream failed after output reached the caller, so it could not fall back."""


# Records and results are NamedTuples: immutable like frozen dataclasses but about four
# times cheaper to build, which matters on the healthy path (one of each per call).


class AttemptRecord(NamedTuple):
    """One attempt of a call, for spans and usage."""

    deployment: Deployment
    kind: str
    """Error kind; empty for the attempt that succeeded."""
    latency_s: float
    """From sending to the answer (a stream's end) or the error."""
    waited_s: float = 0.0
    """Backoff slept before this attempt."""
    first_output_s: float | None = None
    """Streams: time to the first text or tool-call delta."""

    @property
    def ok(self) -> bool:
        return not self.kind


class ChainSuccess(NamedTuple, Generic[T]):
    value: T
    deployment: Deployment
    """The deployment that answered: price the usage with its `pricing`."""
    attempts: tuple[AttemptRecord, ...]
    """Every attempt in order, the successful one last."""


class ChainError(Exception):
    """A call through the chain failed; typed by `reason` and the canonical provider `kind`."""

    def __init__(
        self,
        model: str,
        reason: str,
        kind: str,
        attempts: tuple[AttemptRecord, ...],
        last_error: ProviderError | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        self.model = model
        self.reason = reason
        self.kind = kind
        """Kind of the last provider error; `timeout` for reason deadline; for reason unavailable
        `rate_limited` (throttles hold every deployment) or `overloaded` (breakers are open)."""
        self.attempts = attempts
        self.last_error = last_error
        self.retry_after_s = retry_after_s
        """When the caller may usefully try again, if known."""
        last = f"; last: {last_error}" if last_error is not None else ""
        super().__init__(f"model {model}: {reason} ({kind}) after {len(attempts)} attempt(s){last}")

    @property
    def provider(self) -> str:
        return self.last_error.provider if self.last_error is not None else ""


@dataclass(slots=True)
class DeploymentHealth:
    """What the router knows of one deployment, shared by all calls."""

    breaker: CircuitBreaker
    throttle: AdaptiveThrottle


@dataclass(slots=True)
class _Walk:
    """State of one call after its first failure (the healthy path never builds one)."""

    records: list[AttemptRecord] = field(default_factory=list)
    tried: set[str] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=dict)
    last: ProviderError | None = None
    min_window: int = 0
    """Only deployments with a larger context window may serve (after context_length_exceeded)."""


class ChainExecutor:
    """Runs calls through deployment chains; see the module docstring for the walk."""

    def __init__(
        self,
        *,
        clock: Clock,
        rng: random.Random,
        sleep: Sleep = asyncio.sleep,
        throttle: ThrottlePolicy | None = None,
    ) -> None:
        self._clock = clock
        self._rng = rng
        self._picker = WeightedPicker(rng)
        self._sleep = sleep
        self._throttle_policy = throttle or ThrottlePolicy()
        self._health: dict[str, DeploymentHealth] = {}

    def health(self, d: Deployment) -> DeploymentHealth:
        """Breaker and throttle of a deployment (created on first use, kept across configs)."""
        h = self._health.get(d.key)
        if h is None:
            h = DeploymentHealth(
                CircuitBreaker(d.breaker, self._clock), AdaptiveThrottle(self._throttle_policy, self._clock)
            )
            self._health[d.key] = h
        elif h.breaker.policy is not d.breaker:
            h.breaker.configure(d.breaker)
        return h

    def observe(self, d: Deployment, signal: RateLimitSignal) -> None:
        """Feed rate-limit signals of a successful response (x-ratelimit-* headers) to d's throttle."""
        self.health(d).throttle.observe(signal)

    # chat

    async def call(self, route: ModelRoute, attempt: Attempt[T], timeout_s: float | None = None) -> ChainSuccess[T]:
        """Run `attempt` on the route's chain until one succeeds; raise ChainError otherwise."""
        clock = self._clock
        now = clock()
        deadline = now + timeout_s if timeout_s is not None else math.inf
        walk: _Walk | None = None
        d = self._healthy_first(route, now)
        waited = 0.0
        if d is None:
            d, waited = await self._wait_for_any(route, now, deadline)
            now = clock()
        while True:
            remaining = deadline - now
            if remaining <= 0:
                raise self._deadline(route, walk)
            h = self.health(d)
            probe = h.breaker.on_start()
            try:
                value = await attempt(d, min(d.timeout_s, remaining))
            except ProviderError as exc:
                end = clock()
                self._record_failure(h, exc, probe)
                if walk is None:
                    walk = _Walk()
                walk.records.append(AttemptRecord(d, exc.kind, end - now, waited))
                d, waited = self._next(route, walk, d, exc, end, deadline)
                if waited > 0:
                    await self._sleep(waited)
                now = clock()
                continue
            except BaseException:
                h.breaker.record_neutral(probe)
                raise
            end = clock()
            h.breaker.record_success(probe)
            h.throttle.streak = 0
            record = AttemptRecord(d, "", end - now, waited)
            return ChainSuccess(value, d, (record,) if walk is None else (*walk.records, record))

    # stream

    def stream(self, route: ModelRoute, open_stream: OpenStream, timeout_s: float | None = None) -> ChainStream:
        """Stream items from the first deployment that answers; see ChainStream."""
        return ChainStream(self, route, open_stream, timeout_s)

    async def _stream_items(
        self, out: ChainStream, route: ModelRoute, open_stream: OpenStream, timeout_s: float | None
    ) -> AsyncGenerator[StreamItem, None]:
        clock = self._clock
        now = clock()
        deadline = now + timeout_s if timeout_s is not None else math.inf
        walk: _Walk | None = None
        d = self._healthy_first(route, now)
        waited = 0.0
        if d is None:
            d, waited = await self._wait_for_any(route, now, deadline)
            now = clock()
        while True:
            remaining = deadline - now
            if remaining <= 0:
                raise self._deadline(route, walk)
            h = self.health(d)
            probe = h.breaker.on_start()
            out.deployment = d
            first_output: float | None = None
            settled = False
            items = open_stream(d, min(d.timeout_s, remaining))
            try:
                try:
                    async for item in items:
                        if isinstance(item, StreamEnd):
                            end = clock()
                            settled = True
                            h.breaker.record_success(probe)
                            h.throttle.streak = 0
                            record = AttemptRecord(d, "", end - now, waited, first_output)
                            out.attempts = (record,) if walk is None else (*walk.records, record)
                            yield item
                            return
                        if first_output is None and (
                            isinstance(item, StreamToolCallDelta) or (isinstance(item, StreamDelta) and item.text)
                        ):
                            # From here on the caller holds output: no fallback can replace it.
                            first_output = clock() - now
                            out.started = True
                        yield item
                    raise ProviderError(d.provider, K.PROTOCOL, "stream ended without its end item")
                finally:
                    aclose = getattr(items, "aclose", None)
                    if aclose is not None:
                        await aclose()
            except ProviderError as exc:
                end = clock()
                self._record_failure(h, exc, probe)
                if walk is None:
                    walk = _Walk()
                walk.records.append(AttemptRecord(d, exc.kind, end - now, waited, first_output))
                out.attempts = tuple(walk.records)
                if out.started:
                    raise ChainError(
                        route.name, ChainFailure.INTERRUPTED, exc.kind, out.attempts, exc, exc.retry_after_s
                    ) from exc
                d, waited = self._next(route, walk, d, exc, end, deadline)
                if waited > 0:
                    await self._sleep(waited)
                now = clock()
                continue
            except BaseException:
                if not settled:
                    h.breaker.record_neutral(probe)
                raise

    # the walk

    def _usable(self, h: DeploymentHealth, now: float) -> bool:
        return h.throttle.held_until <= now and h.breaker.available()

    def _healthy_first(self, route: ModelRoute, now: float) -> Deployment | None:
        """The healthy path's pick: no allocation when the first tier is fully usable."""
        tier = route.tiers[0]
        ds = tier.deployments
        if len(ds) == 1:
            d = ds[0]
            return d if self._usable(self.health(d), now) else self._choose(route, None, 0, now)[0]
        for d in ds:
            h = self.health(d)
            if not self._usable(h, now) or h.throttle.factor < 1.0:
                return self._choose(route, None, 0, now)[0]
        return ds[self._picker.pick_cumulative(tier.cumulative_weights)]

    def _choose(
        self, route: ModelRoute, exclude: set[str] | None, min_window: int, now: float
    ) -> tuple[Deployment | None, float, bool]:
        """Best usable deployment, else (None, when the soonest one becomes usable, whether a throttle holds it)."""
        soonest = math.inf
        throttled = False
        for tier in route.tiers:
            candidates: list[Deployment] = []
            weights: list[float] = []
            for d in tier.deployments:
                if exclude and d.key in exclude:
                    continue
                if min_window and (d.context_window or 0) <= min_window:
                    continue
                h = self.health(d)
                if not h.breaker.available():
                    soonest = min(soonest, h.breaker.reopens_at)
                    continue
                if h.throttle.held_until > now:
                    if h.throttle.held_until < soonest:
                        soonest = h.throttle.held_until
                        throttled = True
                    continue
                candidates.append(d)
                weights.append(d.weight * h.throttle.weight_factor(now))
            if len(candidates) == 1:
                return candidates[0], now, False
            if candidates:
                return candidates[self._picker.pick(weights)], now, False
        return None, soonest, throttled

    async def _wait_for_any(self, route: ModelRoute, now: float, deadline: float) -> tuple[Deployment, float]:
        """Nothing is usable now: wait for the soonest deployment if that is short, else fail fast."""
        waited = 0.0
        while True:
            d, soonest, throttled = self._choose(route, None, 0, now)
            if d is not None:
                return d, waited
            wait = soonest - now
            if wait > route.retry.backoff_max_s or now + wait >= deadline:
                raise ChainError(
                    route.name,
                    ChainFailure.UNAVAILABLE,
                    K.RATE_LIMITED if throttled else K.OVERLOADED,
                    (),
                    retry_after_s=wait if math.isfinite(wait) else None,
                )
            await self._sleep(wait)
            waited += wait
            now = self._clock()

    def _record_failure(self, h: DeploymentHealth, exc: ProviderError, probe: bool) -> None:
        if exc.kind in BREAKER_FAILURE_KINDS:
            h.breaker.record_failure(probe)
        else:
            h.breaker.record_neutral(probe)
        limited = exc.kind == K.RATE_LIMITED
        if limited or exc.retry_after_s is not None:
            signal = RateLimitSignal.from_headers(exc.details, rate_limited=limited)
            if exc.retry_after_s is not None:
                signal = dataclasses.replace(signal, retry_after_s=exc.retry_after_s)
            h.throttle.observe(signal)

    def _next(
        self, route: ModelRoute, walk: _Walk, d: Deployment, exc: ProviderError, now: float, deadline: float
    ) -> tuple[Deployment, float]:
        """Where the call goes after `d` failed with `exc`, and how long to wait first; or raise."""
        kind = exc.kind
        policy = route.retry
        walk.last = exc
        walk.tried.add(d.key)
        n = walk.counts[d.key] = walk.counts.get(d.key, 0) + 1
        attempts = tuple(walk.records)
        if kind in TERMINAL_KINDS or (kind not in policy.retry_on and kind not in policy.fallback_on):
            raise ChainError(route.name, ChainFailure.TERMINAL, kind, attempts, exc, exc.retry_after_s)
        if kind == K.CONTEXT_LENGTH_EXCEEDED:
            if d.context_window is None:
                # Without a known window no deployment can be shown to be larger.
                raise ChainError(route.name, ChainFailure.TERMINAL, kind, attempts, exc)
            walk.min_window = max(walk.min_window, d.context_window)
        h = self.health(d)
        same = (
            kind in policy.retry_on
            and kind != K.CONTEXT_LENGTH_EXCEEDED
            and n < policy.max_attempts
            and h.breaker.available()
        )
        fallback: Deployment | None = None
        soonest = math.inf
        if kind in policy.fallback_on:
            fallback, soonest, _ = self._choose(route, walk.tried, walk.min_window, now)
        out_of_time = False
        # A deployment its throttle holds (it just said 429 / retry-after) yields to a ready fallback.
        if same and (fallback is None or h.throttle.held_until <= now):
            wait = max(policy.backoff(n, self._rng, exc.retry_after_s), h.throttle.held_until - now)
            if now + wait < deadline:
                return d, wait
            out_of_time = True
        if fallback is not None:
            return fallback, 0.0
        if out_of_time:
            raise ChainError(route.name, ChainFailure.DEADLINE, K.TIMEOUT, attempts, exc, exc.retry_after_s)
        retry_after = exc.retry_after_s
        if retry_after is None and math.isfinite(soonest):
            retry_after = max(0.0, soonest - now)
        raise ChainError(route.name, ChainFailure.EXHAUSTED, kind, attempts, exc, retry_after)

    def _deadline(self, route: ModelRoute, walk: _Walk | None) -> ChainError:
        if walk is None:
            return ChainError(route.name, ChainFailure.DEADLINE, K.TIMEOUT, ())
        return ChainError(route.name, ChainFailure.DEADLINE, K.TIMEOUT, tuple(walk.records), walk.last)


class ChainStream:
    """Async iterator of one streamed call through the chain.

    Yields the serving deployment's items (deltas, then one StreamEnd). `deployment` is the
    deployment currently (finally) serving and `attempts` the records so far; read them
    after the StreamEnd to price the usage and record spans. Raises ChainError; with reason
    `interrupted` once output has been yielded (`started`).
    """

    def __init__(
        self, executor: ChainExecutor, route: ModelRoute, open_stream: OpenStream, timeout_s: float | None
    ) -> None:
        self.deployment: Deployment | None = None
        self.attempts: tuple[AttemptRecord, ...] = ()
        self.started = False
        """True once a text or tool-call delta was yielded: from then on no fallback."""
        self._items = executor._stream_items(self, route, open_stream, timeout_s)

    def __aiter__(self) -> ChainStream:
        return self

    async def __anext__(self) -> StreamItem:
        return await self._items.__anext__()

    async def aclose(self) -> None:
        await self._items.aclose()
