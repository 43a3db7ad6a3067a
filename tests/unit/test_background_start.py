"""Background work a call starts (lease asks and top-ups, API key re-checks) lets that call
go first, runs in a context of its own, and never runs when cancelled before it began."""

from __future__ import annotations

import asyncio
import inspect

from opentelemetry import context as otel_context

from interlock.services.router.adapters.background import start_soon

_MARK = otel_context.create_key("interlock-test-mark")


async def a_call(order: list[str], tasks: set[asyncio.Task[None]], delay_s: float) -> None:
    """A call that starts background work, then waits a few turns of the loop for a provider
    that answers at once, then answers."""

    async def work() -> None:
        order.append("background work")

    start_soon(work(), tasks, delay_s)
    for _ in range(5):
        await asyncio.sleep(0)
    order.append("answer")


async def test_background_work_starts_after_the_call_that_started_it() -> None:
    order: list[str] = []
    tasks: set[asyncio.Task[None]] = set()
    await a_call(order, tasks, 0.005)
    assert order == ["answer"]
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=5)
    assert order == ["answer", "background work"]
    assert not tasks  # a finished task leaves the set


async def test_without_the_delay_it_would_run_inside_the_call() -> None:
    # What the delay is for: started at once, the work runs while the call waits.
    order: list[str] = []
    tasks: set[asyncio.Task[None]] = set()
    await a_call(order, tasks, 0.0)
    assert order == ["background work", "answer"]


async def test_background_work_runs_in_a_context_of_its_own() -> None:
    seen: list[object] = []
    tasks: set[asyncio.Task[None]] = set()

    async def work() -> None:
        seen.append(otel_context.get_value(_MARK))

    token = otel_context.attach(otel_context.set_value(_MARK, "the call's span"))
    try:
        start_soon(work(), tasks, 0.001)
    finally:
        otel_context.detach(token)
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=5)
    assert seen == [None]


async def test_work_cancelled_before_it_began_never_runs_and_is_closed() -> None:
    ran: list[str] = []
    tasks: set[asyncio.Task[None]] = set()

    async def work() -> None:
        ran.append("ran")

    coroutine = work()
    start_soon(coroutine, tasks, 60.0)
    (task,) = tasks
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    assert ran == []
    # Closed, not left to warn "never awaited" when collected.
    assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED
    assert not tasks
