"""The embedded HTTP/1.1 server (interlock._http): what each request's bytes make the app see,
and what the app's ASGI messages put on the wire, write by write."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import httpx

from interlock._http import HIGH_WATER, EmbeddedHttpServer, Receive, Scope, Send, _Connection


class RecordingTransport(asyncio.Transport):
    """The socket side: what each write would have sent, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.sends: list[bytes] = []
        self.closed = False
        self.paused = False

    def write(self, data: Any) -> None:
        self.sends.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 50000)}.get(name, default)


App = Callable[[Scope, Receive, Send], Awaitable[None]]


def connect(app: App) -> tuple[EmbeddedHttpServer, _Connection, RecordingTransport]:
    server = EmbeddedHttpServer(app)
    conn = _Connection(server)
    transport = RecordingTransport()
    conn.connection_made(transport)
    return server, conn, transport


async def settle(server: EmbeddedHttpServer) -> None:
    """Let the requests' tasks run until none is left (or none can go on)."""
    for _ in range(50):
        await asyncio.sleep(0)
        if not server.tasks:
            await asyncio.sleep(0)
            return


def strip_date(data: bytes) -> bytes:
    head, sep, body = data.partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n") if not line.startswith(b"date: ")]
    return b"\r\n".join(lines) + sep + body


def serve_once(request: bytes, app: App | None = None) -> RecordingTransport:
    """Feed `request` to a fresh connection of `app` (default: json_app()), run it to the end."""

    async def scenario() -> RecordingTransport:
        server, conn, transport = connect(app or json_app())
        conn.data_received(request)
        await settle(server)
        return transport

    return asyncio.run(scenario())


def json_app(body: bytes = b'{"ok":true}', seen: list[MutableMapping[str, Any]] | None = None) -> App:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if seen is not None:
            seen.append({"scope": scope, "message": message})
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


POST = (
    b"POST /v1/chat/completions?x=1 HTTP/1.1\r\n"
    b"Host: h\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
)


def test_a_request_reaches_the_app_as_an_asgi_scope_with_its_whole_body() -> None:
    seen: list[MutableMapping[str, Any]] = []

    async def scenario() -> None:
        server, conn, _ = connect(json_app(seen=seen))
        conn.data_received(POST)
        await settle(server)

    asyncio.run(scenario())
    scope, message = seen[0]["scope"], seen[0]["message"]
    assert (scope["type"], scope["method"], scope["path"], scope["query_string"]) == (
        "http",
        "POST",
        "/v1/chat/completions",
        b"x=1",
    )
    assert scope["http_version"] == "1.1" and scope["client"] == ("127.0.0.1", 50000)
    assert scope["headers"] == [(b"host", b"h"), (b"content-type", b"application/json"), (b"content-length", b"2")]
    assert message == {"type": "http.request", "body": b"{}", "more_body": False}


def test_a_head_and_its_body_leave_in_one_write_with_a_date() -> None:
    transport = serve_once(POST)
    assert len(transport.sends) == 1
    assert transport.sends[0].startswith(b"HTTP/1.1 200 OK\r\ndate: ")
    assert strip_date(transport.sends[0]) == (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n" + b'{"ok":true}'
    )
    assert not transport.closed  # kept alive


def test_keep_alive_and_pipelined_requests_are_answered_in_order() -> None:
    order: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        if scope["path"] == "/slow":
            await asyncio.sleep(0.01)  # the second must still wait for this one
        order.append(scope["path"])
        body = scope["path"].encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})

    async def scenario() -> RecordingTransport:
        _, conn, transport = connect(app)
        conn.data_received(b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\nGET /fast HTTP/1.1\r\nHost: h\r\n\r\n")
        assert transport.paused  # the second waits: no more reading meanwhile
        for _ in range(100):
            await asyncio.sleep(0.002)
            if len(transport.sends) == 2:
                break
        return transport

    transport = asyncio.run(scenario())
    assert order == ["/slow", "/fast"]
    assert [strip_date(s).rsplit(b"\r\n\r\n", 1)[1] for s in transport.sends] == [b"/slow", b"/fast"]
    assert not transport.paused and not transport.closed


def test_a_response_without_length_is_chunked_and_its_head_goes_out_before_the_first_event() -> None:
    gate = asyncio.Event

    async def scenario() -> tuple[list[bytes], list[bytes]]:
        release = gate()

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            await receive()
            headers = [(b"content-type", b"text/event-stream")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await release.wait()
            await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        server, conn, transport = connect(app)
        conn.data_received(POST)
        for _ in range(5):
            await asyncio.sleep(0)
        before = list(transport.sends)
        release.set()
        await settle(server)
        return before, transport.sends

    before, sends = asyncio.run(scenario())
    assert len(before) == 1 and strip_date(before[0]) == (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    assert sends[1:] == [b"9\r\ndata: 1\n\n\r\n", b"0\r\n\r\n"]


def test_a_body_in_pieces_is_handed_over_as_it_comes_and_a_big_one_pauses_reading() -> None:
    got: list[MutableMapping[str, Any]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            got.append(message)
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def scenario() -> tuple[bool, RecordingTransport]:
        server, conn, transport = connect(app)
        size = HIGH_WATER + 10
        conn.data_received(b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % size)
        conn.data_received(b"a" * (HIGH_WATER + 1))  # more than the app has taken: stop reading
        paused = transport.paused
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        conn.data_received(b"b" * 9)
        await settle(server)
        return paused, transport

    paused, transport = asyncio.run(scenario())
    assert paused and not transport.paused
    assert b"".join(m["body"] for m in got) == b"a" * (HIGH_WATER + 1) + b"b" * 9
    assert got[-1]["more_body"] is False and all(m["more_body"] for m in got[:-1])
    assert strip_date(transport.sends[0]) == b"HTTP/1.1 204 No Content\r\n\r\n"


def test_a_chunked_request_body_reaches_the_app_decoded() -> None:
    got: list[MutableMapping[str, Any]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            got.append(await receive())
            if not got[-1]["more_body"]:
                break
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    transport = serve_once(
        b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", app
    )
    assert b"".join(m["body"] for m in got) == b"hello world"
    assert transport.sends[0].startswith(b"HTTP/1.1 200 OK\r\n") and not transport.closed


def test_expect_100_continue_is_answered_when_the_app_asks_for_the_body() -> None:
    async def scenario() -> RecordingTransport:
        server, conn, transport = connect(json_app())
        conn.data_received(b"POST /x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert transport.sends == [b"HTTP/1.1 100 Continue\r\n\r\n"]
        conn.data_received(b"{}")
        await settle(server)
        return transport

    transport = asyncio.run(scenario())
    assert transport.sends[1].startswith(b"HTTP/1.1 200 OK\r\n")


def test_a_client_gone_mid_request_is_an_http_disconnect() -> None:
    messages: list[MutableMapping[str, Any]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        messages.append(await receive())  # the body
        messages.append(await receive())  # waits: for the client to go

    async def scenario() -> None:
        server, conn, _ = connect(app)
        conn.data_received(POST)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        conn.connection_lost(None)
        await settle(server)

    asyncio.run(scenario())
    assert messages[1] == {"type": "http.disconnect"}


def test_head_http10_and_connection_close() -> None:
    head = serve_once(b"HEAD /x HTTP/1.1\r\nHost: h\r\n\r\n")
    assert strip_date(head.sends[0]).endswith(b"content-length: 11\r\n\r\n")  # no body after a HEAD
    old = serve_once(b"GET /x HTTP/1.0\r\n\r\n")
    assert b"\r\nconnection: close\r\n" in old.sends[0] and old.closed
    close = serve_once(b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert close.closed


def test_bad_requests_get_400_or_431_and_the_connection_closes() -> None:
    garbage = serve_once(b"NOT HTTP AT ALL\r\n\r\n")
    assert garbage.sends[0].startswith(b"HTTP/1.1 400 Bad Request\r\n") and garbage.closed
    huge = serve_once(b"GET /x HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
    assert huge.sends[0].startswith(b"HTTP/1.1 431 ") and huge.closed


def test_an_app_error_is_a_500_and_a_bad_header_never_reaches_the_wire() -> None:
    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise ValueError("boom")

    async def injects(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-id", b"a\r\nset-cookie: b")]})

    for app in (broken, injects):
        transport = serve_once(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n", app)
        assert len(transport.sends) == 1 and transport.closed
        assert strip_date(transport.sends[0]).startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
        assert b"set-cookie" not in transport.sends[0]


def test_over_a_socket_with_a_real_client_and_a_graceful_stop() -> None:
    """httpx on a pooled connection: several calls, a streamed answer, then stop() while a
    call is in flight: that call still gets its answer, and the port is closed after."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        body = (await receive())["body"]
        if scope["path"] == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for piece in (b"a", b"b", b"c"):
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        if scope["path"] == "/slow":
            await asyncio.sleep(0.2)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})

    async def scenario() -> tuple[list[bytes], bytes, bytes, bool]:
        server = EmbeddedHttpServer(app, grace_s=2.0)
        base = await server.start()
        async with httpx.AsyncClient(base_url=base) as client:
            echoes = [(await client.post("/echo", content=b"n%d" % i)).content for i in range(3)]
            streamed = (await client.post("/stream", content=b"")).content
            slow = asyncio.create_task(client.post("/slow", content=b"late"))
            await asyncio.sleep(0.05)
            await server.stop()
            late = (await slow).content
        with socket.socket() as probe:
            refused = probe.connect_ex(("127.0.0.1", server.port)) != 0
        return echoes, streamed, late, refused

    echoes, streamed, late, refused = asyncio.run(scenario())
    assert echoes == [b"n0", b"n1", b"n2"]
    assert streamed == b"abc"
    assert late == b"late"
    assert refused
