"""The exact sliding-window decision. Pure: no I/O, time (Unix ms) passed in.

Why not a fixed window: it admits 2N around a window boundary (N at 0:59, N at 1:00).
Why not GCRA: with a burst of N it still admits up to 2N-1 in a rolling window of one
unit. A limit of "N per minute" here means: in EVERY rolling minute, at most N hits.

How: each counter keeps its hits in slots of `window/SLOTS_PER_WINDOW` ms (60 ms for a
minute), oldest first, plus their total. A hit at time t sits in slot s = t // slot_ms and
counts until (s+1)*slot_ms + window > now, i.e. at least until t + window. So the total
at any `now` includes every hit of the true rolling window (now - window, now]: admitting
only when total + hits <= limit never lets a rolling window exceed the limit. A hit counts
at most one slot (0.1% of the window) too long, which is the only inexactness, and it
errs on the side of refusing. Memory per counter is bounded by SLOTS_PER_WINDOW slots,
whatever the limit (a day's 10M tokens take 1,000 slots, not 10M log entries).

The Redis store runs the same algorithm in Lua (adapters/stores.py); this module is the
reference both are tested against.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

SLOTS_PER_WINDOW = 1000


def slot_ms(window_ms: int) -> int:
    """Slot width of a window; every unit's window is a multiple of 1000 ms."""
    return max(1, window_ms // SLOTS_PER_WINDOW)


def first_live_slot(now_ms: int, window_ms: int) -> int:
    """Slots below this one have expired: (s+1)*slot + window <= now."""
    return (now_ms - window_ms) // slot_ms(window_ms)


@dataclass(frozen=True, slots=True)
class WindowVerdict:
    """One counter's answer to `hits` more at `now`."""

    fits: bool
    used: int
    """Hits in the rolling window before this request (after expiry)."""
    wait_ms: int
    """When it does not fit: ms until it would (the window length if it never can)."""
    clear_ms: int
    """ms until every hit now in the window has expired (0 when empty)."""


@dataclass(slots=True)
class SlidingWindow:
    """One counter's live slots. Mutated only through `check`, `add` and `adjust`.

    Slots are kept in the order they were first charged. That is time order, except after a
    lease (`add` with `ahead_ms`): its slot lies ahead, and hits decided per call before it
    ends go to their own, earlier slots, behind it. A slot leaves only once every slot
    before it has, so such a slot counts a little longer than its time says, never shorter,
    and a correction always finds the slot its decision charged."""

    window_ms: int
    slots: OrderedDict[int, int] = field(default_factory=OrderedDict)
    total: int = 0
    newest: int = -1
    """The latest slot charged (the last to leave); -1 when empty."""

    def expire(self, now_ms: int) -> None:
        live = first_live_slot(now_ms, self.window_ms)
        while self.slots:
            oldest, hits = next(iter(self.slots.items()))
            if oldest >= live:
                break
            self.slots.popitem(last=False)
            self.total -= hits
        if not self.slots:
            self.newest = -1

    def check(self, hits: int, limit: int, now_ms: int) -> WindowVerdict:
        self.expire(now_ms)
        width = slot_ms(self.window_ms)
        clear = (self.newest + 1) * width + self.window_ms - now_ms if self.slots else 0
        if self.total + hits <= limit:
            return WindowVerdict(True, self.total, 0, clear)
        if hits > limit:
            return WindowVerdict(False, self.total, self.window_ms, clear)
        # Walk the slots in the order they leave until enough hits have left for this
        # request to fit; a slot leaves no earlier than the ones before it.
        excess = self.total + hits - limit
        leaves = 0
        for slot, slot_hits in self.slots.items():
            leaves = max(leaves, slot)
            excess -= slot_hits
            if excess <= 0:
                return WindowVerdict(False, self.total, (leaves + 1) * width + self.window_ms - now_ms, clear)
        return WindowVerdict(False, self.total, clear, clear)  # unreachable: total covers the excess

    def add(self, hits: int, now_ms: int, ahead_ms: int = 0) -> None:
        """Count `hits` from now on, in the slot of `now_ms + ahead_ms`: a lease's hits,
        spent at any time up to `ahead_ms` from now, count at least a window after that."""
        slot = (now_ms + ahead_ms) // slot_ms(self.window_ms)
        self.slots[slot] = self.slots.get(slot, 0) + hits
        self.newest = max(self.newest, slot)
        self.total += hits

    def adjust(self, delta: int, decided_at_ms: int, now_ms: int) -> bool:
        """Correct the slot the decision at `decided_at_ms` charged; False if it has left."""
        self.expire(now_ms)
        slot = decided_at_ms // slot_ms(self.window_ms)
        if slot not in self.slots:
            return False
        # Never below zero: a give-back larger than what the slot holds (a wrong estimate
        # reported twice) must not create credit for later requests.
        delta = max(delta, -self.slots[slot])
        self.slots[slot] += delta
        self.total += delta
        return True
