"""The service kit's process-wide settings: a started service has its startup heap frozen and
collects its young generation at the configured threshold."""

from __future__ import annotations

import asyncio
import gc

import pytest

from interlock._server import GC_GEN0_THRESHOLD, GrpcService, gc_gen0_threshold
from interlock._settings import SettingsError


async def test_a_started_service_keeps_its_startup_heap_out_of_collections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTERLOCK_GC_GEN0_THRESHOLD", "12345")
    before = gc.get_threshold()
    gc.unfreeze()
    startup = [[i] for i in range(5_000)]  # container objects the collector tracks
    stop = asyncio.Event()
    service = GrpcService(name="kit-test", host="127.0.0.1", port=0, services=[])
    running = asyncio.create_task(service.run(stop))
    try:
        for _ in range(500):
            if gc.get_freeze_count() or running.done():
                break
            await asyncio.sleep(0.01)
        assert service.bound_port > 0
        # Everything alive once the service serves is frozen: full collections skip it.
        assert gc.get_freeze_count() >= len(startup)
        collected = {id(o) for generation in (0, 1, 2) for o in gc.get_objects(generation)}
        assert not any(id(x) in collected for x in startup)
        assert gc.get_threshold() == (12345, *before[1:])
    finally:
        stop.set()
        await running
        gc.unfreeze()
        gc.set_threshold(*before)


def test_gen0_threshold_setting() -> None:
    assert gc_gen0_threshold({}) == GC_GEN0_THRESHOLD
    assert gc_gen0_threshold({"INTERLOCK_GC_GEN0_THRESHOLD": "700"}) == 700
    for bad in ("0", "-5", "many"):
        with pytest.raises(SettingsError, match="INTERLOCK_GC_GEN0_THRESHOLD"):
            gc_gen0_threshold({"INTERLOCK_GC_GEN0_THRESHOLD": bad})


async def test_a_bad_threshold_fails_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTERLOCK_GC_GEN0_THRESHOLD", "zero")
    service = GrpcService(name="kit-test", host="127.0.0.1", port=0, services=[])
    with pytest.raises(SettingsError):
        await service.run(asyncio.Event())
    assert service.bound_port == 0
