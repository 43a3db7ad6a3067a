"""The service kit's process-wide settings: a started service has its startup heap frozen."""

from __future__ import annotations

import asyncio
import gc

from interlock._server import GrpcService


async def test_a_started_service_keeps_its_startup_heap_out_of_collections() -> None:
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
    finally:
        stop.set()
        await running
        gc.unfreeze()
