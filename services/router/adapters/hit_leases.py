"""Rate-limit leases: most calls are admitted from blocks of hits the rate-limiter granted.

The rate-limiter's LeaseHits charges a block (N requests and T tokens on each of a call's
descriptors) at once, all or none, to the window slot of the lease's end: every hit of
the block counts in each rolling window that holds the moment it is spent, so limits stay
exact across router replicas. The router then admits calls from the block in memory, with
no round trip on their path, until the lease ends; what it did not spend goes back as a
correction at the lease's `charged_at_ms`. The limiter grants leases only while a counter
is below a share of its limit (`lease_fill`), so the last hits of a window are decided per
call, in order of asking, as without leases.

This module is the book keeping only (no I/O, clock injected); `RateLimitClient` asks for
leases and sends the give-backs.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

_MIN_RATE_WINDOW_S = 0.05
"""A rate measured over less than this is measured over this (the first call of a key)."""
_TOKEN_MARGIN = 1.25
"""Tokens asked per request: the average estimate with this margin (estimates vary)."""


@dataclass(slots=True)
class HitLease:
    """One granted block: spend until `expires` (monotonic), give back what is left."""

    charged_at_ms: int
    expires: float
    requests_left: int
    tokens_left: int
    token_correction: int = 0
    """Sum of the token corrections of its calls that came while it was live: they go back
    with its unspent tokens, in one correction."""

    def fits(self, tokens: int) -> bool:
        return self.requests_left > 0 and self.tokens_left >= tokens


@dataclass(slots=True)
class _KeyState:
    leases: list[HitLease] = field(default_factory=list)
    asking: bool = False
    asked_at: float = 0.0
    calls_since_ask: int = 0
    last_ask: int = 0
    """Requests asked for last time: the low-water mark is half of it."""
    scale: float = 1.0
    """Halved after each refusal (near the limit), doubled back after each grant."""
    quiet_until: float = 0.0
    tokens_avg: float = 0.0
    granted_s: float = 0.0
    """Length of the last lease granted (the limiter may shorten what was asked)."""


@dataclass(frozen=True, slots=True)
class LeaseAsk:
    requests: int
    tokens: int
    lease_ms: int


K = TypeVar("K", bound=Hashable)


class HitLeaseBook(Generic[K]):
    """Leases per descriptor set (the key), oldest first; spent and ended ones are retired.

    `retired()` hands out the leases to give back (their unspent requests and tokens); the
    caller sends them as corrections."""

    def __init__(
        self,
        lease_ms: int,
        max_requests: int = 256,
        headroom: float = 2.0,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if lease_ms <= 0:
            raise ValueError("lease_ms must be positive")
        self.lease_ms = lease_ms
        self._max_requests = max_requests
        self._headroom = headroom
        self._max_keys = max_keys
        self._clock = clock
        self._keys: OrderedDict[K, _KeyState] = OrderedDict()
        self._retired: list[tuple[K, HitLease]] = []
        self._live: dict[tuple[K, int], HitLease] = {}
        self.admitted = 0
        """Calls admitted from a lease."""
        self.missed = 0
        """Calls no live lease could take (decided per call)."""
        self.leases_granted = 0
        self.leases_refused = 0

    def _state(self, key: K) -> _KeyState:
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _KeyState()
            while len(self._keys) > self._max_keys:
                old_key, old = self._keys.popitem(last=False)
                self._retire(old_key, old.leases)
        else:
            self._keys.move_to_end(key)
        return state

    def _retire(self, key: K, leases: list[HitLease]) -> None:
        for lease in leases:
            self._live.pop((key, lease.charged_at_ms), None)
            if lease.requests_left or lease.tokens_left or lease.token_correction:
                self._retired.append((key, lease))

    def correct(self, key: K, charged_at_ms: int, delta: int) -> bool:
        """Add a call's token correction to its lease, if that lease is still live."""
        lease = self._live.get((key, charged_at_ms))
        if lease is None:
            return False
        lease.token_correction += delta
        return True

    def take(self, key: K, tokens: int) -> HitLease | None:
        """Spend one request and `tokens` from the oldest live lease that has them."""
        now = self._clock()
        state = self._state(key)
        state.calls_since_ask += 1
        state.tokens_avg = tokens if not state.tokens_avg else 0.8 * state.tokens_avg + 0.2 * tokens
        live = [lease for lease in state.leases if lease.expires > now]
        if len(live) != len(state.leases):
            self._retire(key, [lease for lease in state.leases if lease.expires <= now])
            state.leases = live
        for lease in live:
            if lease.fits(tokens):
                lease.requests_left -= 1
                lease.tokens_left -= tokens
                if not lease.requests_left:
                    # Spent: its unspent tokens are of use to the other replicas now.
                    state.leases.remove(lease)
                    self._retire(key, [lease])
                self.admitted += 1
                return lease
        if live:
            # None can take this call, which goes to the limiter: give their unspent hits and
            # held corrections back first (they ride on that very decision), so the limiter
            # never refuses a call while this router sits on hits it could have used.
            self._retire(key, live)
            state.leases = []
        self.missed += 1
        return None

    def ask(self, key: K) -> LeaseAsk | None:
        """What to ask the limiter for now, if anything; the key is then `asking` until
        `granted`, `refused` or `failed` is called for it."""
        state = self._keys.get(key)
        if state is None or state.asking:
            return None
        now = self._clock()
        if now < state.quiet_until:
            return None
        lease_s = self.lease_ms / 1000
        left = 0
        newest_end = now
        for lease in state.leases:  # the live ones: what they have left, when the last ends
            if lease.expires > now:
                left += lease.requests_left
                newest_end = max(newest_end, lease.expires)
        if newest_end > now and left > state.last_ask // 2 and newest_end - now > state.granted_s / 2:
            return None
        elapsed = now - state.asked_at if state.asked_at else 0.0
        rate = state.calls_since_ask / max(elapsed, _MIN_RATE_WINDOW_S)
        wanted = math.ceil(rate * lease_s * self._headroom * state.scale)
        requests = max(1, min(self._max_requests, wanted))
        state.asking = True
        state.asked_at = now
        state.calls_since_ask = 0
        state.last_ask = requests
        return LeaseAsk(requests, math.ceil(requests * max(state.tokens_avg, 1.0) * _TOKEN_MARGIN), self.lease_ms)

    def granted(self, key: K, ask: LeaseAsk, charged_at_ms: int, lease_ms: int, sent_at: float) -> None:
        """The limiter granted `ask` for `lease_ms` from `sent_at` (monotonic, before sending)."""
        self.leases_granted += 1
        lease = HitLease(charged_at_ms, sent_at + lease_ms / 1000, ask.requests, ask.tokens)
        state = self._keys.get(key)
        if state is None:  # evicted while asking: nothing will spend it
            self._retired.append((key, lease))
            return
        state.asking = False
        state.scale = min(1.0, state.scale * 2)
        state.granted_s = lease_ms / 1000
        state.leases.append(lease)
        self._live[(key, charged_at_ms)] = lease

    def refused(self, key: K, ask: LeaseAsk) -> None:
        """Near the limit: ask for half as much next time; after a refused single request,
        stay quiet for a lease's length (calls are decided one by one meanwhile)."""
        self.leases_refused += 1
        state = self._keys.get(key)
        if state is None:
            return
        state.asking = False
        state.scale = max(state.scale / 2, 1 / 1024)
        if ask.requests <= 1:
            state.quiet_until = self._clock() + self.lease_ms / 1000

    def failed(self, key: K, quiet_s: float) -> None:
        """The ask got no answer: ask again no sooner than `quiet_s` from now."""
        state = self._keys.get(key)
        if state is None:
            return
        state.asking = False
        state.quiet_until = self._clock() + quiet_s

    def next_end(self) -> float | None:
        """Monotonic time the first live lease ends, if any."""
        return min((lease.expires for s in self._keys.values() for lease in s.leases), default=None)

    def retire_ended(self) -> None:
        now = self._clock()
        for key, state in self._keys.items():
            if any(lease.expires <= now for lease in state.leases):
                self._retire(key, [lease for lease in state.leases if lease.expires <= now])
                state.leases = [lease for lease in state.leases if lease.expires > now]

    def retire_all(self) -> None:
        for key, state in self._keys.items():
            self._retire(key, state.leases)
            state.leases = []

    def retired(self) -> list[tuple[K, HitLease]]:
        """Leases ended or spent since the last call, each with something to give back."""
        out, self._retired = self._retired, []
        return out
