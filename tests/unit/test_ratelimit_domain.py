"""Rate-limit config parsing, matching and the fixed-window verdict, with time injected."""

from __future__ import annotations

import pytest

from interlock.services.ratelimit.adapters.stores import MemoryCounterStore
from interlock.services.ratelimit.domain.limits import (
    HitRequest,
    LimitConfigError,
    LimitUnit,
    judge,
    parse_limit_config,
    plan_charges,
)

CONFIG = parse_limit_config(
    [
        {
            "domain": "interlock",
            "descriptors": [
                {"key": "api_key", "rate_limit": {"unit": "minute", "requests_per_unit": 3}},
                {"key": "api_key", "value": "vip", "rate_limit": {"unit": "minute", "requests_per_unit": 100}},
                {
                    "key": "provider",
                    "value": "openai",
                    "descriptors": [{"key": "model", "rate_limit": {"unit": "second", "requests_per_unit": 2}}],
                },
            ],
        }
    ]
)


def test_specific_value_beats_generic_and_nesting_matches() -> None:
    assert CONFIG.find("interlock", [("api_key", "k1")]).requests_per_unit == 3  # type: ignore[union-attr]
    assert CONFIG.find("interlock", [("api_key", "vip")]).requests_per_unit == 100  # type: ignore[union-attr]
    nested = CONFIG.find("interlock", [("provider", "openai"), ("model", "gpt-4o")])
    assert nested is not None and nested.unit is LimitUnit.SECOND
    assert CONFIG.find("interlock", [("provider", "anthropic"), ("model", "x")]) is None
    assert CONFIG.find("other", [("api_key", "k1")]) is None


@pytest.mark.parametrize(
    ("doc", "where"),
    [
        ({"descriptors": []}, "[0].domain"),
        ({"domain": "d", "descriptors": [{"key": ""}]}, "d.descriptors[0].key"),
        (
            {"domain": "d", "descriptors": [{"key": "k", "rate_limit": {"unit": "fortnight", "requests_per_unit": 1}}]},
            "rate_limit.unit",
        ),
        (
            {"domain": "d", "descriptors": [{"key": "k", "rate_limit": {"unit": "second", "requests_per_unit": -1}}]},
            "requests_per_unit",
        ),
    ],
)
def test_bad_config_names_the_path(doc: dict[str, object], where: str) -> None:
    with pytest.raises(LimitConfigError, match=where.replace("[", r"\[").replace("]", r"\]")):
        parse_limit_config([doc])


async def test_window_admits_up_to_the_limit_then_resets() -> None:
    store = MemoryCounterStore()
    hits = [HitRequest((("api_key", "k1"),), 1)]
    verdicts = []
    for _ in range(4):
        charges = plan_charges(CONFIG, "interlock", hits, now=120.5)
        verdicts.append(judge(charges, await store.charge(charges), now=120.5)[0])
    assert [v.over_limit for v in verdicts] == [False, False, False, True]
    assert [v.remaining for v in verdicts] == [2, 1, 0, 0]
    assert verdicts[-1].reset_in_ms == 59_500
    charges = plan_charges(CONFIG, "interlock", hits, now=180.0)
    assert not judge(charges, await store.charge(charges), now=180.0)[0].over_limit


async def test_all_or_nothing_across_descriptors() -> None:
    store = MemoryCounterStore()
    key = HitRequest((("api_key", "k1"),), 1)
    model = HitRequest((("provider", "openai"), ("model", "m")), 1)
    for _ in range(2):
        charges = plan_charges(CONFIG, "interlock", [key, model], now=0)
        assert not any(v.over_limit for v in judge(charges, await store.charge(charges), now=0))
    # The model limit (2/s) is now full: this request is refused and must not use up the key's third hit.
    charges = plan_charges(CONFIG, "interlock", [key, model], now=0.5)
    assert [v.over_limit for v in judge(charges, await store.charge(charges), now=0.5)] == [False, True]
    charges = plan_charges(CONFIG, "interlock", [key], now=1.0)
    assert not judge(charges, await store.charge(charges), now=1.0)[0].over_limit


async def test_unlimited_descriptors_always_pass() -> None:
    store = MemoryCounterStore()
    charges = plan_charges(CONFIG, "interlock", [HitRequest((("project", "p"),), 10**6)], now=0)
    assert charges == [None]
    assert not judge(charges, await store.charge(charges), now=0)[0].over_limit
