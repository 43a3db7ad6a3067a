"""Background work a call starts for the calls after it: lease asks and top-ups, API key re-checks."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine
from typing import Any

START_DELAY_S = 0.005
"""How long background work that no call waits for lets the call that started it go first.

Started at once, its first step (building the request and gRPC's set-up of the call, some
0.3 ms of CPU on an event loop that was idle) runs as soon as that call waits for its
provider, and a fast provider's answer then waits for it: at 10 calls/s on the bench's
upstream the calls that started a rate-limit lease ask took 0.35 ms longer at the median
than the others and were 17 of the 25 slowest in 1,201, the 99th percentile's among them
(docs/BENCHMARKS-history.md, round 19).
None of this work is urgent (a lease is asked for with half of it left, a key re-checked
with a third of its cache life left), so a few milliseconds cost nothing."""


def start_soon(work: Coroutine[Any, Any, None], tasks: set[asyncio.Task[None]], delay_s: float = START_DELAY_S) -> None:
    """Run `work` as a task of its own `delay_s` from now (0: at the loop's next turn), in a
    fresh context (it is no span of the call that started it); `tasks` holds it until it ends."""
    task = asyncio.get_running_loop().create_task(
        _after(delay_s, work) if delay_s > 0 else work, context=contextvars.Context()
    )
    tasks.add(task)
    task.add_done_callback(tasks.discard)


async def _after(delay_s: float, work: Coroutine[Any, Any, None]) -> None:
    try:
        await asyncio.sleep(delay_s)
    except BaseException:
        work.close()  # cancelled before it began (the router stopping): it never runs
        raise
    await work
