"""Waiting in async tests for something another task does: poll, fail with what never came."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def wait_until(predicate: Callable[[], object], what: str) -> None:
    """Return once `predicate()` is truthy (polled every 10 ms, for at most 10 s)."""
    for _ in range(1000):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")
