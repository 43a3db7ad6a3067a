"""Rate-limit rules and the exact sliding window, with time injected (Unix ms)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from interlock._filewatch import FileWatcher
from interlock.services.ratelimit.adapters.stores import MemoryWindowStore
from interlock.services.ratelimit.domain.limits import (
    FailureMode,
    HitRequest,
    Limit,
    LimitConfig,
    LimitConfigError,
    LimitOverride,
    LimitUnit,
    RuleBook,
    judge,
    parse_limit_config,
    plan_charges,
)
from interlock.services.ratelimit.domain.window import SlidingWindow
from interlock.services.ratelimit.main import parse_limits_yaml

MINUTE = 60_000
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
                {
                    "key": "project",
                    "rate_limit": [
                        {"unit": "minute", "requests_per_unit": 5, "failure_mode": "closed"},
                        {"unit": "day", "requests_per_unit": 1000},
                    ],
                },
                {"key": "shadowed", "rate_limit": {"unit": "minute", "requests_per_unit": 1, "shadow_mode": True}},
            ],
        }
    ]
)
RULES = RuleBook(CONFIG)


def test_specific_value_beats_generic_and_nesting_matches() -> None:
    assert [x.requests_per_unit for x in CONFIG.find("interlock", [("api_key", "k1")])] == [3]
    assert [x.requests_per_unit for x in CONFIG.find("interlock", [("api_key", "vip")])] == [100]
    nested = CONFIG.find("interlock", [("provider", "openai"), ("model", "gpt-4o")])
    assert [x.unit for x in nested] == [LimitUnit.SECOND]
    assert CONFIG.find("interlock", [("provider", "anthropic"), ("model", "x")]) == ()
    assert CONFIG.find("other", [("api_key", "k1")]) == ()
    per_day = CONFIG.find("interlock", [("project", "p")])
    assert [(x.unit, x.failure_mode) for x in per_day] == [
        (LimitUnit.MINUTE, FailureMode.CLOSED),
        (LimitUnit.DAY, FailureMode.OPEN),
    ]


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
        (
            {
                "domain": "d",
                "descriptors": [
                    {"key": "k", "rate_limit": {"unit": "second", "requests_per_unit": 1, "failure_mode": "maybe"}}
                ],
            },
            "failure_mode",
        ),
        (
            {
                "domain": "d",
                "descriptors": [
                    {
                        "key": "k",
                        "rate_limit": [
                            {"unit": "second", "requests_per_unit": 1},
                            {"unit": "second", "requests_per_unit": 2},
                        ],
                    }
                ],
            },
            "one limit per unit",
        ),
    ],
)
def test_bad_config_names_the_path(doc: dict[str, object], where: str) -> None:
    with pytest.raises(LimitConfigError, match=where.replace("[", r"\[").replace("]", r"\]")):
        parse_limit_config([doc])


def test_no_burst_at_the_fixed_window_boundary() -> None:
    """A fixed window admits 3 at 0:59.999 and 3 more at 1:00.000; the sliding window does not."""
    w = SlidingWindow(MINUTE)
    for _ in range(3):
        assert w.check(1, 3, 59_999).fits
        w.add(1, 59_999)
    at_boundary = w.check(1, 3, 60_000)
    assert not at_boundary.fits and at_boundary.used == 3
    # The hits of 59,999 ms sit in slot 999 (59,940-59,999) and leave at 60,000 + 60,000.
    assert at_boundary.wait_ms == 60_000
    assert not w.check(1, 3, 119_999).fits
    assert w.check(1, 3, 120_000).fits


def test_wait_names_when_enough_hits_have_left() -> None:
    w = SlidingWindow(MINUTE)
    w.add(2, 0)
    w.add(2, 30_000)
    v = w.check(2, 4, 40_000)  # needs the first 2 gone: slot 0 leaves at 60 + 60,000 ms
    assert (v.fits, v.used, v.wait_ms) == (False, 4, 60_060 - 40_000)
    assert w.check(3, 4, 40_000).wait_ms == 30_060 + MINUTE - 40_000  # needs both slots gone
    assert w.check(5, 4, 40_000).wait_ms == MINUTE  # can never fit
    assert not w.check(2, 4, 60_059).fits
    assert w.check(2, 4, 60_060).fits


@pytest.mark.parametrize("seed", range(5))
def test_no_rolling_window_ever_exceeds_the_limit_and_the_limit_is_reached(seed: int) -> None:
    rng = random.Random(seed)
    limit, w = 50, SlidingWindow(MINUTE)
    admitted: list[tuple[int, int]] = []
    now = 0
    while now < 5 * MINUTE:
        now += rng.randint(0, 400)
        hits = rng.randint(1, 3)
        if w.check(hits, limit, now).fits:
            w.add(hits, now)
            admitted.append((now, hits))
    for t, _ in admitted:
        assert sum(h for u, h in admitted if t - MINUTE < u <= t) <= limit
    # Demand (about 3 per 200 ms) far exceeds the limit: every minute is used to within a slot.
    for m in range(1, 5):
        used = sum(h for u, h in admitted if (m - 1) * MINUTE < u <= m * MINUTE)
        assert used >= limit - 3


def test_adjust_corrects_the_original_slot_and_ignores_expired_ones() -> None:
    w = SlidingWindow(MINUTE)
    w.add(1000, 10_000)  # an estimate
    w.add(10, 20_000)
    assert w.adjust(-700, 10_000, 30_000)  # actual was 300
    assert w.check(0, 10**6, 30_000).used == 310
    assert not w.adjust(-10, 25_000, 30_000)  # no slot at or after it: never charged
    assert w.adjust(-10_000, 10_000, 30_000)  # never below zero
    assert w.check(0, 10**6, 30_000).used == 10
    assert not w.adjust(5, 20_000, 20_000 + MINUTE + 60)  # the slot has left the window


def test_a_lease_counts_until_a_window_after_its_end_and_later_decisions_keep_their_slot() -> None:
    w = SlidingWindow(MINUTE)
    w.add(50, 10_000, ahead_ms=3_000)  # a lease of 50, spent at any time up to 13 s
    # It counts from the grant on...
    assert w.check(0, 100, 10_000).used == 50
    # ...and until a window after the lease's end (its slot ends at 13,020), not its grant.
    assert w.check(0, 100, 10_000 + MINUTE + 100).used == 50
    assert w.check(0, 100, 13_020 + MINUTE).used == 0
    w = SlidingWindow(MINUTE)
    w.add(50, 10_000, ahead_ms=3_000)
    w.add(7, 11_000)  # a later per-call decision: its own slot, behind the lease's
    assert list(w.slots) == [13_000 // 60, 11_000 // 60]
    assert w.adjust(-5, 11_000, 12_000)  # its correction finds it
    assert w.adjust(-40, 13_000, 12_500)  # the lease's give-back names the lease's end
    assert w.check(0, 100, 12_500).used == 12
    # The per-call slot leaves with the lease's, not before (never shorter than its time).
    assert w.check(0, 100, 11_040 + MINUTE).used == 12
    assert w.check(0, 100, 13_020 + MINUTE).used == 0
    # A refusal's wait counts a slot as leaving no earlier than the ones before it.
    w.add(50, 14_000, ahead_ms=3_000)
    w.add(40, 15_000)
    assert w.check(20, 100, 15_000).wait_ms == (17_000 // 60 + 1) * 60 + MINUTE - 15_000


def test_unit_windows() -> None:
    assert [u.window_ms for u in LimitUnit] == [1000, 60_000, 3_600_000, 86_400_000]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


async def decide(store: MemoryWindowStore, rules: RuleBook, *requests: HitRequest) -> list[bool]:
    charges = plan_charges(rules, "interlock", requests)
    decision = await store.charge(charges)
    return [v.over_limit for v in judge(len(requests), charges, decision.outcomes, decision.admitted)]


async def test_all_or_nothing_across_descriptors() -> None:
    clock = Clock()
    store = MemoryWindowStore(clock)
    key = HitRequest((("api_key", "k1"),), 1)
    model = HitRequest((("provider", "openai"), ("model", "m")), 1)
    for _ in range(2):
        assert await decide(store, RULES, key, model) == [False, False]
    # The model limit (2/s) is now full: this request is refused and must not use up the key's third hit.
    clock.now += 500
    assert await decide(store, RULES, key, model) == [False, True]
    clock.now += 600
    assert await decide(store, RULES, key) == [False]
    assert await decide(store, RULES, key) == [True]


async def test_shadow_mode_counts_but_never_refuses() -> None:
    store = MemoryWindowStore(Clock())
    shadow = HitRequest((("shadowed", "x"),), 1)
    charges = plan_charges(RULES, "interlock", [shadow])
    for expected_shadow_over in (False, True, True):
        decision = await store.charge(charges)
        [v] = judge(1, charges, decision.outcomes, decision.admitted)
        assert decision.admitted and not v.over_limit
        assert v.shadow_over_limit is expected_shadow_over


async def test_every_unit_of_a_descriptor_is_enforced() -> None:
    clock = Clock()
    store = MemoryWindowStore(clock)
    project = HitRequest((("project", "p"),), 1)
    assert [await decide(store, RULES, project) for _ in range(6)][-1] == [True]  # 5 a minute
    charges = plan_charges(RULES, "interlock", [project])
    decision = await store.charge(charges)
    [v] = judge(1, charges, decision.outcomes, decision.admitted)
    assert v.limit is not None and v.limit.unit is LimitUnit.MINUTE and v.remaining == 0
    assert len(v.matched) == 2


async def test_override_beats_config_for_its_descriptor_only() -> None:
    store = MemoryWindowStore(Clock())
    limit = Limit("override", 1, LimitUnit.MINUTE)
    await store.save_override(LimitOverride("interlock", (("api_key", "k9"),), (limit,)))
    rules = RULES.with_overrides(await store.load_overrides())
    assert rules.limits_for("interlock", (("api_key", "k9"),)) == (limit,)
    assert rules.limits_for("interlock", (("api_key", "k1"),))[0].requests_per_unit == 3
    await store.save_override(LimitOverride("interlock", (("api_key", "k9"),), ()))
    assert await store.load_overrides() == []


async def test_unlimited_descriptors_always_pass() -> None:
    store = MemoryWindowStore(Clock())
    charges = plan_charges(RULES, "interlock", [HitRequest((("team", "p"),), 10**6)])
    assert charges == []
    assert await decide(store, RULES, HitRequest((("team", "p"),), 10**6)) == [False]


def test_hot_reload_swaps_good_files_and_keeps_the_old_on_a_bad_one(tmp_path: Path) -> None:
    path = tmp_path / "limits.yaml"
    path.write_text(
        "domain: interlock\ndescriptors:\n- key: project\n  rate_limit: {unit: minute, requests_per_unit: 5}\n"
    )
    current: list[LimitConfig] = []
    watcher = FileWatcher(str(path), parse_limits_yaml, current.append)
    current.append(watcher.load())
    assert not watcher.check()  # unchanged
    path.write_text(
        "domain: interlock\ndescriptors:\n- key: project\n  rate_limit: {unit: minute, requests_per_unit: 7}\n"
    )
    assert watcher.check()
    assert current[-1].find("interlock", [("project", "p")])[0].requests_per_unit == 7
    path.write_text("domain: interlock\ndescriptors:\n- key: project\n  rate_limit: {unit: fortnight}\n")
    assert not watcher.check() and watcher.rejected == 1
    path.unlink()
    assert not watcher.check()
    assert len(current) == 2 and current[-1].find("interlock", [("project", "p")])[0].requests_per_unit == 7
