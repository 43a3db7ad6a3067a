"""The router's load shedder: a cap on calls in flight and sustained event-loop lag."""

from __future__ import annotations

import asyncio
import time

import pytest

from interlock.errors import UnavailableError
from interlock.services.router.adapters.load_shedding import LoadShedder, SheddingPolicy


def test_cap_refuses_the_call_past_it_and_admits_again_once_one_ends() -> None:
    shedder = LoadShedder(SheddingPolicy(max_in_flight=2, max_lag_s=0))
    with shedder.admit(), shedder.admit():
        assert shedder.in_flight == 2
        with pytest.raises(UnavailableError) as refused, shedder.admit():
            pytest.fail("a third call was admitted past a cap of 2")
        assert refused.value.metadata == {"reason": "overloaded", "signal": "in_flight"}
        assert refused.value.retry_after_s == 1.0
        assert shedder.in_flight == 2
    assert shedder.in_flight == 0
    assert shedder.shed_in_flight == 1
    with shedder.admit():
        assert shedder.in_flight == 1


def test_a_call_that_fails_gives_its_place_back() -> None:
    shedder = LoadShedder(SheddingPolicy(max_in_flight=1, max_lag_s=0))
    with pytest.raises(RuntimeError), shedder.admit():
        raise RuntimeError("provider failed")
    assert shedder.in_flight == 0
    with shedder.admit():
        pass


def test_zero_turns_both_signals_off() -> None:
    shedder = LoadShedder(SheddingPolicy(max_in_flight=0, max_lag_s=0))
    for _ in range(5):
        shedder.observe_tick(10.0)
    assert not shedder.lagging
    with shedder.admit(), shedder.admit(), shedder.admit():
        assert shedder.in_flight == 3


def test_lag_sheds_only_when_sustained_for_the_set_number_of_ticks() -> None:
    shedder = LoadShedder(SheddingPolicy(max_in_flight=0, max_lag_s=0.1, late_ticks=3))
    shedder.observe_tick(2.0)  # one long pause: not overload
    shedder.observe_tick(0.0)
    shedder.observe_tick(0.5)
    shedder.observe_tick(0.5)
    assert not shedder.lagging
    with shedder.admit():
        pass
    shedder.observe_tick(0.5)
    assert shedder.lagging
    with pytest.raises(UnavailableError) as refused, shedder.admit():
        pytest.fail("admitted while the loop lagged")
    assert refused.value.metadata["signal"] == "loop_lag"
    assert "500 ms behind" in refused.value.message
    assert shedder.shed_lag == 1
    shedder.observe_tick(0.05)  # one tick on time ends it
    assert not shedder.lagging
    with shedder.admit():
        pass


async def test_monitor_sees_a_blocked_loop_and_its_recovery() -> None:
    shedder = LoadShedder(SheddingPolicy(max_in_flight=0, max_lag_s=0.1, tick_s=0.01, late_ticks=3))
    shedder.start()
    try:
        # Keep the loop busy: every tick wakes at least 140 ms late.
        for _ in range(100):
            time.sleep(0.15)  # noqa: ASYNC251 - blocking the loop is the point
            await asyncio.sleep(0)
            if shedder.lagging:
                break
        assert shedder.lagging
        assert shedder.lag_s > 0.1
        with pytest.raises(UnavailableError), shedder.admit():
            pass
        # The loop free again: a tick on time ends the shedding.
        for _ in range(500):
            await asyncio.sleep(0.01)
            if not shedder.lagging:
                break
        assert not shedder.lagging
        with shedder.admit():
            pass
    finally:
        shedder.stop()


async def test_monitor_does_not_shed_for_one_pause() -> None:
    shedder = LoadShedder(SheddingPolicy(max_in_flight=0, max_lag_s=0.1, tick_s=0.01, late_ticks=3))
    shedder.start()
    try:
        await asyncio.sleep(0.05)
        time.sleep(0.4)  # noqa: ASYNC251 - one stall, as a GC pause or a config load would make
        for _ in range(10):
            await asyncio.sleep(0.01)
            assert not shedder.lagging
        assert shedder.peak_lag_s > 0.3
    finally:
        shedder.stop()
