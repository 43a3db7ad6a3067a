"""Counter storage: in memory for one replica, Redis for many.

`charge` is all-or-nothing: it reads every counter, and adds the hits to all of them only
if each stays within its limit. It returns each counter's value before the request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

import redis.asyncio as aioredis

from interlock.services.ratelimit.domain.limits import WindowCharge


class CounterStore(Protocol):
    async def charge(self, charges: Sequence[WindowCharge | None]) -> list[int]: ...

    async def aclose(self) -> None: ...


class MemoryCounterStore:
    """Exact for a single replica: one event loop, no await between read and write."""

    def __init__(self) -> None:
        self._counts: dict[str, tuple[int, int]] = {}  # key -> (count, window_end)

    async def charge(self, charges: Sequence[WindowCharge | None]) -> list[int]:
        before = []
        for c in charges:
            if c is None:
                before.append(0)
                continue
            count, _ = self._counts.get(c.counter_key, (0, 0))
            before.append(count)
        fits = all(c is None or b + c.hits <= c.limit.requests_per_unit for c, b in zip(charges, before, strict=True))
        if fits:
            for c, b in zip(charges, before, strict=True):
                if c is not None:
                    self._counts[c.counter_key] = (b + c.hits, c.window_start + c.limit.unit.seconds)
        if len(self._counts) > 100_000:
            self._evict(min(c.window_start for c in charges if c is not None) if any(charges) else 0)
        return before

    def _evict(self, now_window: int) -> None:
        for key in [k for k, (_, end) in self._counts.items() if end <= now_window]:
            del self._counts[key]

    async def aclose(self) -> None:
        return None


# All counters are read, checked and bumped inside one script, so replicas sharing the
# Redis never admit more than the limit between them.
_CHARGE = """
local before = {}
local fits = true
for i, key in ipairs(KEYS) do
  local n = tonumber(redis.call('GET', key) or '0')
  before[i] = n
  if n + tonumber(ARGV[3*i-2]) > tonumber(ARGV[3*i-1]) then fits = false end
end
if fits then
  for i, key in ipairs(KEYS) do
    redis.call('INCRBY', key, ARGV[3*i-2])
    redis.call('EXPIRE', key, ARGV[3*i])
  end
end
return before
"""


class RedisCounterStore:
    def __init__(self, url: str, key_prefix: str = "interlock:rl:") -> None:
        self._redis = aioredis.Redis.from_url(url)
        self._prefix = key_prefix
        self._script = self._redis.register_script(_CHARGE)
        self._lock = asyncio.Lock()

    async def charge(self, charges: Sequence[WindowCharge | None]) -> list[int]:
        live = [(i, c) for i, c in enumerate(charges) if c is not None]
        before = [0] * len(charges)
        if not live:
            return before
        keys = [self._prefix + c.counter_key for _, c in live]
        args: list[int] = []
        for _, c in live:
            args += [c.hits, c.limit.requests_per_unit, c.limit.unit.seconds + 1]
        result = await self._script(keys=keys, args=args)
        for (i, _), value in zip(live, result, strict=True):
            before[i] = int(value)
        return before

    async def aclose(self) -> None:
        await self._redis.aclose()
