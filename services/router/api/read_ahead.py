"""Read a stream ahead of its consumer, and hand the consumer what piled up, in batches.

A streamed answer's pieces are produced by the provider's connection and consumed by the
gRPC stream, where every message sent is a write the gRPC core completes on its own thread
and reports back to the event loop. When the provider delivers several pieces at once (one
network read holding several SSE events, or a router busy enough to fall behind), sending
them one message each costs one such round trip per piece for nothing. `read_ahead` keeps
reading the source while the consumer sends, and gives it everything read since, so the
pieces that arrived together leave together. Nothing waits for more: a piece that arrives
alone is handed over at once, so the time to each piece is what it was.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TypeVar

T = TypeVar("T")

MAX_BUFFERED = 256
"""Pieces read ahead before the reader waits for the consumer (a slow client's backpressure)."""


async def read_ahead(source: AsyncIterator[T], max_buffered: int = MAX_BUFFERED) -> AsyncGenerator[list[T], None]:
    """Yield, in order, non-empty lists of the items `source` produced since the last one.

    `source` runs in a task of its own (with the caller's context, so its spans and settings
    are the caller's). An exception it raises reaches the consumer after the items before
    it; if the consumer stops early or is cancelled, the reading task is cancelled and
    awaited before this generator ends.
    """
    buffer: list[T] = []
    ready = asyncio.Event()
    room = asyncio.Event()
    room.set()
    failure: list[BaseException] = []
    finished = False

    async def pump() -> None:
        nonlocal finished
        try:
            async for item in source:
                buffer.append(item)
                ready.set()
                if len(buffer) >= max_buffered:
                    room.clear()
                    await room.wait()
        except BaseException as exc:
            failure.append(exc)
            if not isinstance(exc, Exception):
                # Cancelled (this generator ended early) or the process is stopping: a source
                # waiting at its `yield` for room is closed now, so its cleanup (a stream's
                # settlement) runs here rather than whenever it is collected.
                aclose = getattr(source, "aclose", None)
                if aclose is not None:
                    await aclose()
                raise
        finally:
            finished = True
            ready.set()

    reader = asyncio.get_running_loop().create_task(pump())
    try:
        while True:
            while not buffer and not finished:
                ready.clear()
                await ready.wait()
            if not buffer:
                if failure:
                    raise failure[0]
                return
            batch = buffer.copy()
            buffer.clear()
            room.set()
            yield batch
    finally:
        if not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
