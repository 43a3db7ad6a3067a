"""Rate limits held in a real Redis are exact across replicas."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from interlock.services.ratelimit.adapters.stores import RedisCounterStore
from interlock.services.ratelimit.domain.limits import HitRequest, judge, parse_limit_config, plan_charges

pytestmark = pytest.mark.integration

CONFIG = parse_limit_config(
    [
        {
            "domain": "interlock",
            "descriptors": [
                {"key": "api_key", "rate_limit": {"unit": "hour", "requests_per_unit": 50}},
                {"key": "model", "rate_limit": {"unit": "hour", "requests_per_unit": 1000}},
            ],
        }
    ]
)


async def test_two_replicas_never_admit_more_than_the_limit(redis_url: str) -> None:
    prefix = f"t:{uuid.uuid4().hex}:"
    replicas = [RedisCounterStore(redis_url, key_prefix=prefix), RedisCounterStore(redis_url, key_prefix=prefix)]
    key = HitRequest((("api_key", "k1"),), 1)
    now = 7200.0

    async def attempt(i: int) -> bool:
        charges = plan_charges(CONFIG, "interlock", [key], now)
        before = await replicas[i % 2].charge(charges)
        return not judge(charges, before, now)[0].over_limit

    admitted = await asyncio.gather(*(attempt(i) for i in range(200)))
    assert sum(admitted) == 50
    for r in replicas:
        await r.aclose()


async def test_refused_request_takes_no_hits_from_any_descriptor(redis_url: str) -> None:
    store = RedisCounterStore(redis_url, key_prefix=f"t:{uuid.uuid4().hex}:")
    key = HitRequest((("api_key", "k2"),), 40)
    model = HitRequest((("model", "m"),), 1)
    charges = plan_charges(CONFIG, "interlock", [key, model], 0)
    assert [v.over_limit for v in judge(charges, await store.charge(charges), 0)] == [False, False]
    charges = plan_charges(CONFIG, "interlock", [key, model], 0)
    assert [v.over_limit for v in judge(charges, await store.charge(charges), 0)] == [True, False]
    # The refused request must not have taken its model hit: the model counter is still 1.
    charges = plan_charges(CONFIG, "interlock", [model], 0)
    verdict = judge(charges, await store.charge(charges), 0)[0]
    assert verdict.remaining == 1000 - 2
    await store.aclose()
