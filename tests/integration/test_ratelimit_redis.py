"""The Redis sliding window (Lua, Redis TIME) is exact across replicas, like the memory one."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from interlock.services.ratelimit.adapters.stores import RedisWindowStore
from interlock.services.ratelimit.domain.limits import (
    HitRequest,
    Limit,
    LimitOverride,
    LimitUnit,
    RuleBook,
    judge,
    parse_limit_config,
    plan_charges,
)

pytestmark = pytest.mark.integration

RULES = RuleBook(
    parse_limit_config(
        [
            {
                "domain": "interlock",
                "descriptors": [
                    {"key": "api_key", "rate_limit": {"unit": "hour", "requests_per_unit": 50}},
                    {"key": "model", "rate_limit": {"unit": "hour", "requests_per_unit": 1000}},
                    {"key": "fast", "rate_limit": {"unit": "second", "requests_per_unit": 5}},
                    {"key": "shadow", "rate_limit": {"unit": "hour", "requests_per_unit": 1, "shadow_mode": True}},
                ],
            }
        ]
    )
)


def store(redis_url: str, prefix: str | None = None) -> RedisWindowStore:
    return RedisWindowStore(redis_url, key_prefix=prefix or f"t:{uuid.uuid4().hex}:")


async def decide(s: RedisWindowStore, *requests: HitRequest) -> list[bool]:
    charges = plan_charges(RULES, "interlock", requests)
    decision = await s.charge(charges)
    return [v.over_limit for v in judge(len(requests), charges, decision.outcomes, decision.admitted)]


async def test_two_replicas_never_admit_more_than_the_limit(redis_url: str) -> None:
    prefix = f"t:{uuid.uuid4().hex}:"
    replicas = [store(redis_url, prefix), store(redis_url, prefix)]
    key = HitRequest((("api_key", "k1"),), 1)
    results = await asyncio.gather(*(decide(replicas[i % 2], key) for i in range(200)))
    assert sum(1 for [over] in results if not over) == 50
    for r in replicas:
        await r.aclose()


async def test_refused_request_takes_no_hits_from_any_descriptor(redis_url: str) -> None:
    s = store(redis_url)
    key = HitRequest((("api_key", "k2"),), 40)
    model = HitRequest((("model", "m"),), 1)
    assert await decide(s, key, model) == [False, False]
    assert await decide(s, key, model) == [True, False]
    # The refused request must not have taken its model hit: the model counter is still 1.
    charges = plan_charges(RULES, "interlock", [model])
    decision = await s.charge(charges)
    assert decision.outcomes[0].used == 1
    await s.aclose()


async def test_window_slides_on_redis_time(redis_url: str) -> None:
    s = store(redis_url)
    fast = HitRequest((("fast", "x"),), 1)
    assert [await decide(s, fast) for _ in range(6)] == [[False]] * 5 + [[True]]
    charges = plan_charges(RULES, "interlock", [fast])
    wait_ms = (await s.charge(charges)).outcomes[0].wait_ms
    assert 0 < wait_ms <= 1001
    await asyncio.sleep(wait_ms / 1000 + 0.01)
    assert await decide(s, fast) == [False]
    await s.aclose()


async def test_adjust_gives_back_an_estimate_in_its_slot(redis_url: str) -> None:
    s = store(redis_url)
    model = HitRequest((("model", "m"),), 900)
    charges = plan_charges(RULES, "interlock", [model])
    decision = await s.charge(charges)
    assert decision.admitted
    await s.adjust([(charges[0], -850)], decision.decided_at_ms)  # used 50 of the 900 estimated
    assert (await s.charge(plan_charges(RULES, "interlock", [HitRequest((("model", "m"),), 0)]))).outcomes[0].used == 50
    await s.adjust([(charges[0], -10_000)], decision.decided_at_ms)  # never below zero
    await s.adjust([(charges[0], -5)], decision.decided_at_ms)  # an empty slot stays empty
    await s.adjust([(charges[0], 7)], decision.decided_at_ms - 2 * 3_600_000)  # long expired: ignored
    assert (await s.charge(plan_charges(RULES, "interlock", [HitRequest((("model", "m"),), 0)]))).outcomes[0].used == 0
    await s.aclose()


async def test_a_lease_counts_to_its_end_and_stops_at_the_fill_share_on_redis(redis_url: str) -> None:
    """LeaseHits' store call: the hits go to the slot of now + ahead_ms, the counter lives
    until that slot has left the window, and a later decision's correction finds it."""
    s = store(redis_url, prefix := f"t:{uuid.uuid4().hex}:")
    model = HitRequest((("model", "m"),), 400)
    charges = plan_charges(RULES, "interlock", [model])
    lease = await s.charge(charges, ahead_ms=90_000, fill=0.5)
    assert lease.admitted
    # 400 + 101 would pass half of 1000: a lease is refused; a per-call decision is not.
    assert not (
        await s.charge(plan_charges(RULES, "interlock", [HitRequest((("model", "m"),), 101)]), fill=0.5)
    ).admitted
    one = plan_charges(RULES, "interlock", [HitRequest((("model", "m"),), 3)])
    later = await s.charge(one)
    assert later.admitted
    # The per-call hits have their own slot, behind the lease's; their correction finds it.
    await s.adjust([(one[0], -2)], later.decided_at_ms)
    # The lease's give-back names its end.
    await s.adjust([(charges[0], -300)], lease.decided_at_ms + 90_000)
    peek = plan_charges(RULES, "interlock", [HitRequest((("model", "m"),), 0)])
    assert (await s.charge(peek)).outcomes[0].used == 100 + 1
    # A refusal's wait: the per-call slot leaves with the lease's, a window after its end.
    big = plan_charges(RULES, "interlock", [HitRequest((("model", "m"),), 950)])
    refused = await s.charge(big)
    assert not refused.admitted
    assert refused.outcomes[0].wait_ms > 3_600_000 + 60_000
    # An hour window, a lease 90 s ahead: the counter outlives the window by the lease.
    ttl_ms = await s._redis.pttl(prefix + "w:" + charges[0].counter_key)
    assert 3_600_000 + 60_000 < ttl_ms <= 3_600_000 + 90_000 + 3_600 + 1_000
    await s.aclose()


async def test_shadow_rule_never_refuses_on_redis(redis_url: str) -> None:
    s = store(redis_url)
    shadow = HitRequest((("shadow", "x"),), 1)
    assert [await decide(s, shadow) for _ in range(3)] == [[False]] * 3


async def test_overrides_are_shared_through_redis(redis_url: str) -> None:
    prefix = f"t:{uuid.uuid4().hex}:"
    a, b = store(redis_url, prefix), store(redis_url, prefix)
    override = LimitOverride("interlock", (("project", "default/search"),), (Limit("p", 600, LimitUnit.MINUTE),))
    await a.save_override(override)
    assert await b.load_overrides() == [override]
    await b.save_override(LimitOverride("interlock", override.entries, ()))
    assert await a.load_overrides() == []
    await a.aclose()
    await b.aclose()
