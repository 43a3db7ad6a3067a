"""Sliding-window counters and runtime overrides: in memory for one replica, Redis for many.

Both stores run the algorithm of domain/window.py. A decision is all-or-nothing: the hits
are taken on every counter only if every enforced (non-shadow) counter stays within its
limit, so a refused request uses up nothing.

Time: the memory store takes an injected clock. The Redis store reads the Redis server's
clock (TIME) inside the script, so every limiter replica decides on ONE clock. With
times passed in by the replicas, a replica whose clock runs ahead would expire hits early
and over-admit by the skew; a replica behind would append slots out of order.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis

from interlock.services.ratelimit.domain.limits import (
    Charge,
    ChargeOutcome,
    Limit,
    LimitOverride,
    charge_fits,
    enforced,
    fill_cap,
    parse_limit,
)
from interlock.services.ratelimit.domain.window import SlidingWindow, slot_ms


@dataclass(frozen=True, slots=True)
class Decision:
    decided_at_ms: int
    """The store's clock at the decision (Unix ms); corrections name their slot by it."""
    admitted: bool
    outcomes: list[ChargeOutcome]


class WindowStore(Protocol):
    async def charge(self, charges: Sequence[Charge], ahead_ms: int = 0, fill: float = 1.0) -> Decision:
        """Take every charge's hits if each enforced counter stays within `fill` of its limit.

        `ahead_ms` > 0 charges a lease: its hits count from now until a window after
        `now + ahead_ms` (the slot of that time), however late in the lease they are spent."""
        ...

    async def adjust(self, adjustments: Sequence[tuple[Charge, int]], decided_at_ms: int) -> None:
        """Add each delta to the slot its charge took at `decided_at_ms`, if still live."""
        ...

    async def load_overrides(self) -> list[LimitOverride]: ...

    async def save_override(self, override: LimitOverride) -> None:
        """Store the override; one with no limits removes it."""
        ...

    async def aclose(self) -> None: ...


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class MemoryWindowStore:
    """Exact for a single replica: one event loop, no await between check and add."""

    def __init__(self, clock_ms: Callable[[], int] = _wall_ms, max_counters: int = 200_000) -> None:
        self._clock = clock_ms
        self._windows: dict[str, SlidingWindow] = {}
        self._overrides: dict[tuple[str, tuple[tuple[str, str], ...]], LimitOverride] = {}
        self._max_counters = max_counters
        self._last_ms = 0

    def _now(self) -> int:
        # Monotonic on top of the wall clock: slots must be appended in order.
        self._last_ms = max(self._last_ms, self._clock())
        return self._last_ms

    def _window(self, charge: Charge) -> SlidingWindow:
        w = self._windows.get(charge.counter_key)
        if w is None:
            if len(self._windows) >= self._max_counters:
                self._evict_idle()
            w = self._windows[charge.counter_key] = SlidingWindow(charge.limit.unit.window_ms)
        return w

    def _evict_idle(self) -> None:
        now = self._now()
        for key, w in list(self._windows.items()):
            w.expire(now)
            if not w.slots:
                del self._windows[key]

    async def charge(self, charges: Sequence[Charge], ahead_ms: int = 0, fill: float = 1.0) -> Decision:
        now = self._now()
        outcomes = []
        for c in charges:
            v = self._window(c).check(c.hits, c.limit.requests_per_unit, now)
            outcomes.append(ChargeOutcome(v.used, v.wait_ms, v.clear_ms))
        admitted = all(charge_fits(c, o.used, fill) for c, o in zip(charges, outcomes, strict=True) if enforced(c))
        if admitted:
            for c in charges:
                self._window(c).add(c.hits, now, ahead_ms)
        return Decision(now, admitted, outcomes)

    async def adjust(self, adjustments: Sequence[tuple[Charge, int]], decided_at_ms: int) -> None:
        now = self._now()
        for c, delta in adjustments:
            w = self._windows.get(c.counter_key)
            if w is not None:
                w.adjust(delta, decided_at_ms, now)

    async def load_overrides(self) -> list[LimitOverride]:
        return list(self._overrides.values())

    async def save_override(self, override: LimitOverride) -> None:
        key = (override.domain, override.entries)
        if override.limits:
            self._overrides[key] = override
        else:
            self._overrides.pop(key, None)

    async def aclose(self) -> None:
        return None


# KEYS: per charge i, a hash (slot -> hits, plus 't' = total and 'm' = latest slot) and a
# list of its slots in the order first charged (domain/window.py says why that order).
# ARGV: per charge, hits, limit (the fill cap for a lease), window_ms, slot_ms, enforced
# (1/0); last, ahead_ms (a lease's hits go to the slot of now + ahead_ms).
# Returns {now_ms, admitted, used_1, wait_1, clear_1, ...}: one round trip per decision.
_CHARGE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = #KEYS / 2
local ahead = tonumber(ARGV[5*n+1])
local used, waits, clears = {}, {}, {}
local admitted = 1
for i = 1, n do
  local h, l = KEYS[2*i-1], KEYS[2*i]
  local hits, limit = tonumber(ARGV[5*i-4]), tonumber(ARGV[5*i-3])
  local w, g = tonumber(ARGV[5*i-2]), tonumber(ARGV[5*i-1])
  local live = math.floor((now - w) / g)
  local total = tonumber(redis.call('HGET', h, 't') or '0')
  local expired = false
  while true do
    local s = redis.call('LINDEX', l, 0)
    if not s or tonumber(s) >= live then break end
    redis.call('LPOP', l)
    total = total - tonumber(redis.call('HGET', h, s) or '0')
    redis.call('HDEL', h, s)
    expired = true
  end
  if expired then redis.call('HSET', h, 't', total) end
  used[i] = total
  local newest = redis.call('HGET', h, 'm')
  clears[i] = 0
  if newest and redis.call('LLEN', l) > 0 then clears[i] = (tonumber(newest) + 1) * g + w - now end
  waits[i] = 0
  if total + hits > limit then
    if ARGV[5*i] == '1' then admitted = 0 end
    if hits > limit then
      waits[i] = w
    else
      local excess = total + hits - limit
      local slots = redis.call('LRANGE', l, 0, -1)
      local leaves = 0
      for _, s in ipairs(slots) do
        leaves = math.max(leaves, tonumber(s))
        excess = excess - tonumber(redis.call('HGET', h, s) or '0')
        if excess <= 0 then waits[i] = (leaves + 1) * g + w - now break end
      end
    end
  end
end
if admitted == 1 then
  for i = 1, n do
    local h, l = KEYS[2*i-1], KEYS[2*i]
    local hits, w, g = tonumber(ARGV[5*i-4]), tonumber(ARGV[5*i-2]), tonumber(ARGV[5*i-1])
    local slot = math.floor((now + ahead) / g)
    local field = string.format('%d', slot)
    -- Slots in the order first charged: a slot behind a lease's (later) one leaves after it.
    if redis.call('HEXISTS', h, field) == 0 then redis.call('RPUSH', l, field) end
    redis.call('HINCRBY', h, field, hits)
    redis.call('HINCRBY', h, 't', hits)
    local newest = tonumber(redis.call('HGET', h, 'm') or '-1')
    if slot > newest then
      newest = slot
      redis.call('HSET', h, 'm', field)
    end
    -- The counter lives until its latest slot has left.
    local ttl = (newest + 1) * g + w - now + 1000
    redis.call('PEXPIRE', h, ttl)
    redis.call('PEXPIRE', l, ttl)
  end
end
local out = {now, admitted}
for i = 1, n do
  out[#out+1] = used[i]
  out[#out+1] = waits[i]
  out[#out+1] = clears[i]
end
return out
"""

# KEYS: per adjustment, the counter's hash. ARGV: decided_at_ms, then per adjustment
# delta, window_ms, slot_ms. A slot that has expired (or never existed) is left alone.
_ADJUST = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local at = tonumber(ARGV[1])
for i, h in ipairs(KEYS) do
  local delta, w, g = tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i]), tonumber(ARGV[3*i+1])
  local slot = math.floor(at / g)
  if slot >= math.floor((now - w) / g) then
    local field = string.format('%d', slot)
    local raw = redis.call('HGET', h, field)
    if raw then
      local have = tonumber(raw)
      -- 0 - have, not -have: Lua writes -0 as "-0", which HINCRBY refuses.
      if delta < -have then delta = 0 - have end
      if delta ~= 0 then
        redis.call('HINCRBY', h, field, delta)
        redis.call('HINCRBY', h, 't', delta)
      end
    end
  end
end
return 1
"""


def _limit_json(limit: Limit) -> dict[str, object]:
    return {
        "name": limit.name,
        "requests_per_unit": limit.requests_per_unit,
        "unit": limit.unit.name.lower(),
        "shadow_mode": limit.shadow_mode,
        "failure_mode": limit.failure_mode.value,
    }


def override_to_json(override: LimitOverride) -> tuple[str, str]:
    key = json.dumps([override.domain, [list(e) for e in override.entries]])
    return key, json.dumps([_limit_json(limit) for limit in override.limits])


def override_from_json(key: str, value: str) -> LimitOverride:
    domain, entries = json.loads(key)
    limits = tuple(parse_limit(raw, "override", "override") for raw in json.loads(value))
    return LimitOverride(domain, tuple((str(k), str(v)) for k, v in entries), limits)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisWindowStore:
    """Shared by limiter replicas: every decision is one Lua script, atomic in Redis."""

    def __init__(self, url: str, key_prefix: str = "interlock:rl:") -> None:
        self._redis = aioredis.Redis.from_url(url)
        self._prefix = key_prefix
        self._charge = self._redis.register_script(_CHARGE)
        self._adjust = self._redis.register_script(_ADJUST)
        self._overrides_key = key_prefix + "overrides"

    def _keys(self, charge: Charge) -> tuple[str, str]:
        base = self._prefix + "w:" + charge.counter_key
        return base, base + ":slots"

    async def charge(self, charges: Sequence[Charge], ahead_ms: int = 0, fill: float = 1.0) -> Decision:
        keys: list[str] = []
        args: list[int] = []
        for c in charges:
            keys += self._keys(c)
            w = c.limit.unit.window_ms
            args += [c.hits, fill_cap(c.limit.requests_per_unit, fill), w, slot_ms(w), 1 if enforced(c) else 0]
        args.append(ahead_ms)
        if not charges:
            return Decision(_wall_ms(), True, [])
        result = await self._charge(keys=keys, args=args)
        values = [int(v) for v in result]
        outcomes = [ChargeOutcome(values[i], values[i + 1], values[i + 2]) for i in range(2, 2 + 3 * len(charges), 3)]
        return Decision(values[0], values[1] == 1, outcomes)

    async def adjust(self, adjustments: Sequence[tuple[Charge, int]], decided_at_ms: int) -> None:
        live = [(c, d) for c, d in adjustments if d != 0]
        if not live:
            return
        args: list[int] = [decided_at_ms]
        for c, delta in live:
            w = c.limit.unit.window_ms
            args += [delta, w, slot_ms(w)]
        await self._adjust(keys=[self._keys(c)[0] for c, _ in live], args=args)

    async def load_overrides(self) -> list[LimitOverride]:
        raw = await self._redis.hgetall(self._overrides_key)
        pairs = [(_text(k), _text(v)) for k, v in raw.items()]
        return [override_from_json(k, v) for k, v in sorted(pairs)]

    async def save_override(self, override: LimitOverride) -> None:
        key, value = override_to_json(override)
        if override.limits:
            await self._redis.hset(self._overrides_key, key, value)
        else:
            await self._redis.hdel(self._overrides_key, key)

    async def aclose(self) -> None:
        await self._redis.aclose()
