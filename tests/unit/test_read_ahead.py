"""read_ahead: what a stream produced while its consumer was busy reaches the consumer as one
batch, in order; a piece produced alone is handed over alone; a failure arrives after the
pieces before it; a consumer that stops early cancels the reading; a consumer that does not
read stops the reading at the buffer's bound. And ChatStream's messages for a batch."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from interlock.services.router.api.read_ahead import read_ahead
from interlock.services.router.api.servicer import stream_messages
from interlock.services.router.domain.flow import ChatResult
from interlock.services.router.domain.provider import StreamToolCallDelta, TokenUsage


async def burst(items: list[int]) -> AsyncIterator[int]:
    """All of `items` at once (one network read's worth), then the end."""
    for item in items:
        yield item


async def test_pieces_produced_together_arrive_as_one_batch_in_order() -> None:
    batches = [batch async for batch in read_ahead(burst([1, 2, 3, 4]))]
    assert batches == [[1, 2, 3, 4]]


async def test_a_piece_produced_alone_is_handed_over_alone() -> None:
    turns = [asyncio.Event() for _ in range(3)]

    async def spaced() -> AsyncIterator[int]:
        for number, turn in enumerate(turns):
            await turn.wait()  # the next piece only after the consumer got the one before
            yield number

    got: list[list[int]] = []
    turns[0].set()
    async with contextlib.aclosing(read_ahead(spaced())) as batches:
        async for batch in batches:
            got.append(batch)
            if len(got) < len(turns):
                turns[len(got)].set()
    assert got == [[0], [1], [2]]


async def test_a_failure_reaches_the_consumer_after_the_pieces_before_it() -> None:
    async def failing() -> AsyncIterator[int]:
        yield 1
        yield 2
        raise ValueError("stream cut")

    got: list[int] = []
    with pytest.raises(ValueError, match="stream cut"):
        async for batch in read_ahead(failing()):
            got.extend(batch)
    assert got == [1, 2]


async def test_a_consumer_that_stops_early_cancels_the_reading_before_it_returns() -> None:
    closed = asyncio.Event()
    more = asyncio.Event()

    async def endless() -> AsyncIterator[int]:
        try:
            yield 0
            await more.wait()  # never set: only cancellation ends this
            yield 1
        finally:
            closed.set()

    async with contextlib.aclosing(read_ahead(endless())) as batches:
        async for batch in batches:
            assert batch == [0]
            break
    assert closed.is_set()


async def test_a_source_held_at_the_bound_is_closed_when_the_consumer_stops() -> None:
    closed = asyncio.Event()

    async def counting() -> AsyncIterator[int]:
        try:
            for number in range(100):
                yield number
        finally:
            closed.set()

    async with contextlib.aclosing(read_ahead(counting(), max_buffered=3)) as batches:
        first = await anext(batches)
        for _ in range(10):
            await asyncio.sleep(0)  # the reader fills the buffer and waits for room
        assert first == [0, 1, 2] and not closed.is_set()
    assert closed.is_set()  # closed at its `yield`, not left for the garbage collector


async def test_a_consumer_that_does_not_read_stops_the_reading_at_the_bound() -> None:
    produced: list[int] = []

    async def counting() -> AsyncIterator[int]:
        for number in range(100):
            produced.append(number)
            yield number

    batches = read_ahead(counting(), max_buffered=5)
    first = await anext(batches)
    for _ in range(20):
        await asyncio.sleep(0)  # let the reader run as far as it may
    assert first == [0, 1, 2, 3, 4]
    assert len(produced) <= 10  # the batch taken plus one buffer's worth, not all 100
    rest = [n async for batch in batches for n in batch]
    assert first + rest == list(range(100))


def test_a_batch_becomes_joined_text_with_tool_calls_and_the_answer_in_place() -> None:
    tool = StreamToolCallDelta(index=0, id="call_1", name="lookup", arguments='{"q":')
    result = ChatResult("req-1", "chat-default", "openai", "Hello, world", "stop", TokenUsage(3, 4), 1234)
    messages = list(stream_messages(["Hel", "lo", tool, ", wor", "ld", result], "v7", "ab" * 16))
    kinds = [m.WhichOneof("event") for m in messages]
    assert kinds == ["delta", "tool_call", "delta", "done"]
    assert [messages[0].delta, messages[2].delta] == ["Hello", ", world"]
    assert messages[1].tool_call.arguments == '{"q":'
    assert messages[3].done.text == "Hello, world"
    assert messages[3].done.config_version == "v7"
    assert messages[3].done.cost_nanos == 1234
    assert messages[3].done.trace_id == "ab" * 16
    assert [m.delta for m in stream_messages([""], "v7", "")] == [""]
