"""The embedded HTTP server's transport sends a response head together with its body."""

from __future__ import annotations

import asyncio
from typing import Any

from interlock._http import HeadWithBody


class RecordingTransport(asyncio.Transport):
    """The socket side: what each write would have sent, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.sends: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.sends.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


def test_a_head_and_its_body_leave_in_one_send() -> None:
    async def scenario() -> list[bytes]:
        raw = RecordingTransport()
        t = HeadWithBody(raw, asyncio.get_running_loop())
        t.write(HEAD)
        assert raw.sends == []
        t.write(b"ok")
        await asyncio.sleep(0)
        return raw.sends

    assert asyncio.run(scenario()) == [HEAD + b"ok"]


def test_a_head_alone_goes_out_on_the_next_loop_iteration() -> None:
    # An event stream's head, before its first event: the client must see it without waiting.
    async def scenario() -> list[list[bytes]]:
        raw = RecordingTransport()
        t = HeadWithBody(raw, asyncio.get_running_loop())
        t.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        seen = [list(raw.sends)]
        await asyncio.sleep(0)
        seen.append(list(raw.sends))
        t.write(b"5\r\nhello\r\n")
        seen.append(list(raw.sends))
        return seen

    before, after, event = asyncio.run(scenario())
    assert before == []
    assert after == [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"]
    assert event == [*after, b"5\r\nhello\r\n"]


def test_closing_sends_a_held_head_first_and_bodies_are_never_held() -> None:
    async def scenario() -> RecordingTransport:
        raw = RecordingTransport()
        t = HeadWithBody(raw, asyncio.get_running_loop())
        t.write(b"0\r\n\r\n")  # not a head: straight through
        t.write(b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n")
        t.close()
        await asyncio.sleep(0)  # the scheduled flush finds nothing left to send
        return raw

    raw = asyncio.run(scenario())
    assert raw.sends == [b"0\r\n\r\n", b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n"]
    assert raw.closed
