"""Load shedding: an overloaded router refuses new calls at once instead of queueing them.

Past its capacity a router that queues every call gets slower for all of them (each call
waits behind the backlog) and grows in memory until it is killed. Refusing the excess
with UNAVAILABLE (HTTP 503) and a retry hint keeps the calls it admits fast and its memory
bounded, and tells a client or load balancer to try another replica.

Two signals, each with a setting that turns it off:
- calls in flight, streams included, against `max_in_flight` (a bound on memory);
- event-loop lag: a ticker wakes every `tick_s` and measures how late it woke. The router
  counts as overloaded while its last `late_ticks` ticks were each later than `max_lag_s`,
  i.e. every call admitted now would wait about that long for the CPU before its first
  step. One long pause (a GC, a config load) makes one late tick and sheds nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from interlock.errors import UnavailableError

log = logging.getLogger("interlock.router.shedding")


@dataclass(frozen=True, slots=True)
class SheddingPolicy:
    max_in_flight: int = 1024
    """Calls in flight at most (streams count until they end); 0: no cap."""
    max_lag_s: float = 0.1
    """Event-loop lag past which the router sheds, once sustained; 0: lag is not watched."""
    tick_s: float = 0.05
    """How often the lag is measured (each tick costs a timer callback)."""
    late_ticks: int = 3
    """Consecutive ticks later than `max_lag_s` that count as sustained lag."""
    retry_after_s: float = 1.0
    """The retry hint sent with a refusal."""


class LoadShedder:
    """Admits calls into the router or refuses them; one per router process."""

    def __init__(self, policy: SheddingPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self.in_flight = 0
        """Calls admitted and not yet finished."""
        self.shed_in_flight = 0
        """Calls refused because `max_in_flight` calls were in flight."""
        self.shed_lag = 0
        """Calls refused because the event loop lagged."""
        self.lag_s = 0.0
        """How late the last tick woke."""
        self.peak_lag_s = 0.0
        """The latest any tick woke."""
        self._slot = _Slot(self)
        self._late_in_a_row = 0
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    def off(cls) -> LoadShedder:
        """A shedder that admits every call (for servers built without one)."""
        return cls(SheddingPolicy(max_in_flight=0, max_lag_s=0))

    @property
    def lagging(self) -> bool:
        return self.policy.max_lag_s > 0 and self._late_in_a_row >= self.policy.late_ticks

    def observe_tick(self, lag_s: float) -> None:
        """Record how late one tick woke (the monitor calls this; tests may too)."""
        was = self.lagging
        self.lag_s = lag_s
        self.peak_lag_s = max(self.peak_lag_s, lag_s)
        self._late_in_a_row = self._late_in_a_row + 1 if lag_s > self.policy.max_lag_s else 0
        if self.lagging != was:
            log.warning(
                "event loop lagging; shedding new calls" if self.lagging else "event loop caught up; admitting calls",
                extra={"fields": {"lag_ms": round(lag_s * 1000, 1), "in_flight": self.in_flight}},
            )

    def start(self) -> None:
        """Start watching the event loop's lag (no-op when lag is not watched)."""
        if self.policy.max_lag_s > 0 and self._timer is None:
            self._schedule(asyncio.get_running_loop())

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        # A plain timer callback, not a task: the cheapest wake-up the loop has.
        self._timer = loop.call_later(self.policy.tick_s, self._tick, loop, self._clock() + self.policy.tick_s)

    def _tick(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        self.observe_tick(max(0.0, self._clock() - due))
        self._schedule(loop)

    def admit(self) -> _Slot:
        """A place for one call for a `with` block's duration; entering it raises
        UnavailableError when the router is overloaded."""
        return self._slot

    def _refusal(self, message: str, signal: str) -> UnavailableError:
        return UnavailableError(
            f"{message}; retry, or send the call to another replica",
            retry_after_s=self.policy.retry_after_s,
            metadata={"reason": "overloaded", "signal": signal},
        )


class _Slot:
    """`LoadShedder.admit()`'s context manager: one object for every call (it keeps no state
    of its own), a class rather than a generator context manager on the hot path."""

    __slots__ = ("_shedder",)

    def __init__(self, shedder: LoadShedder) -> None:
        self._shedder = shedder

    def __enter__(self) -> None:
        shedder = self._shedder
        cap = shedder.policy.max_in_flight
        if cap and shedder.in_flight >= cap:
            shedder.shed_in_flight += 1
            raise shedder._refusal(f"router is at its cap of {cap} calls in flight", "in_flight")
        if shedder.lagging:
            shedder.shed_lag += 1
            raise shedder._refusal(
                f"router is overloaded (event loop {shedder.lag_s * 1000:.0f} ms behind)", "loop_lag"
            )
        shedder.in_flight += 1

    def __exit__(self, *exc_info: object) -> None:
        self._shedder.in_flight -= 1
