"""Retrying a ClickHouse write with capped exponential backoff until it lands or stop is asked."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger("interlock.traceingest.retry")


@dataclass(frozen=True)
class Backoff:
    """Delays between attempts: `initial_s`, doubling, at most `max_s`."""

    initial_s: float = 0.2
    max_s: float = 5.0

    def delay(self, failures: int) -> float:
        """The wait after the `failures`-th consecutive failure (1-based)."""
        return min(self.max_s, self.initial_s * 2.0 ** max(0, min(failures - 1, 32)))


DEFAULT_BACKOFF = Backoff()


async def sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds`, returning early when `stop` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


def log_if_crashed(task: asyncio.Task[None]) -> None:
    """Done-callback for a background loop: a loop that dies stops ingestion, so say so loudly."""
    if not task.cancelled() and task.exception() is not None:
        log.critical("background task died", exc_info=task.exception(), extra={"fields": {"task": task.get_name()}})


async def retry_until_stopped(
    attempt: Callable[[], Awaitable[None]], *, what: str, backoff: Backoff, stop: asyncio.Event
) -> bool:
    """Run `attempt` until it succeeds (True) or fails after `stop` was set (False).

    An attempt already running when stop is asked still completes, so a write that can
    land does; nothing is given up while the caller still wants it.
    """
    failures = 0
    while True:
        try:
            await attempt()
        except Exception as exc:  # noqa: BLE001 - any failure is retried; the data is kept
            failures += 1
            delay = backoff.delay(failures)
            if stop.is_set():
                log.error("%s failed while stopping; giving up", what, extra={"fields": {"error": str(exc)}})
                return False
            log.warning(
                "%s failed; retrying",
                what,
                extra={"fields": {"error": str(exc), "attempt": failures, "retry_in_s": delay}},
            )
            await sleep_unless(stop, delay)
            continue
        if failures:
            log.info("%s succeeded after retries", what, extra={"fields": {"attempts": failures + 1}})
        return True
