"""The router's provider HTTP client (`http_pool.py`) against a scripted TCP server: keep-alive
reuse, closed and cut connections, body framings, gzip, the connection bound, cancellation."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import uvloop

from interlock.services.router.adapters.http_pool import (
    ConnectFailed,
    ConnectionCut,
    HttpPool,
    MalformedResponse,
)

Answer = Callable[[int, bytes], bytes | None]
"""The bytes to answer the n-th request (1-based) with; None: never answer."""
Serve = Callable[[Answer], Awaitable["Server"]]


class Server:
    """A TCP server whose handler answers each request on a connection; counts connections
    and keeps the raw requests it read."""

    def __init__(self, answer: Answer) -> None:
        self._answer = answer
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/base"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lengths = [line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")]
                length = int(lengths[0].split(b":")[1]) if lengths else 0
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                answer = self._answer(len(self.requests), request)
                if answer is None:  # hang: never answer
                    await asyncio.sleep(3600)
                    return
                writer.write(answer)
                await writer.drain()
                if b"connection: close" in answer.lower():
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def ok(body: bytes = b'{"ok":true}', extra: str = "") -> bytes:
    head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[Server] = []

    async def start(answer: Answer) -> Server:
        server = Server(answer)
        server.server = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        servers.append(server)
        return server

    yield start
    for server in servers:
        assert server.server is not None
        server.server.close()


def pool_for(server: Server, max_connections: int = 4, idle_timeout_s: float = 15.0) -> HttpPool:
    return HttpPool(
        server.url,
        max_connections=max_connections,
        connect_timeout_s=2.0,
        headers={"authorization": "Bearer k", "accept": "application/json"},
        idle_timeout_s=idle_timeout_s,
    )


async def test_sequential_requests_reuse_one_connection(serve: Serve) -> None:
    server = await serve(lambda n, _: ok(f'{{"n":{n}}}'.encode()))
    pool = pool_for(server)
    for n in range(1, 6):
        response = await pool.request("POST", "/chat?x=1", {"accept": "text/event-stream"}, b'{"a":1}')
        assert (response.status, await response.read()) == (200, f'{{"n":{n}}}'.encode())
        assert response.headers["content-type"] == "application/json"
        response.release()
    assert server.connections == 1
    assert (pool.idle_connections, pool.busy_connections) == (1, 0)
    first = server.requests[0]
    assert first.startswith(b"POST /base/chat?x=1 HTTP/1.1\r\n")
    # Per-request headers replace the pool's by name; the body goes with its length.
    assert b"accept: text/event-stream\r\n" in first and b"application/json\r\naccept" not in first
    assert b"authorization: Bearer k\r\n" in first
    assert first.endswith(b'content-length: 7\r\n\r\n{"a":1}')
    await pool.aclose()


async def test_request_headers_follow_the_pools_lower_cased_the_last_of_a_name_kept(serve: Serve) -> None:
    server = await serve(lambda n, _: ok())
    pool = pool_for(server)
    response = await pool.request("POST", "/c", {"X-Request-Id": "r1", "Traceparent": "a", "traceparent": "b"})
    assert await response.read() == b'{"ok":true}'
    response.release()
    head = server.requests[0].split(b"\r\n\r\n")[0].split(b"\r\n")
    assert head[1:] == [
        f"host: 127.0.0.1:{server.url.split(':')[2].split('/')[0]}".encode(),
        b"accept-encoding: gzip, deflate",
        b"authorization: Bearer k",
        b"accept: application/json",
        b"x-request-id: r1",
        b"traceparent: b",
        b"content-length: 0",
    ]
    with pytest.raises(ValueError):
        await pool.request("POST", "/c", {"x-ok": "1", "x-bad": "a\r\nb"})
    await pool.aclose()


async def test_connection_closed_by_server_is_not_reused(serve: Serve) -> None:
    server = await serve(lambda n, _: ok(extra="connection: close\r\n"))
    pool = pool_for(server)
    for _ in range(3):
        response = await pool.request("POST", "/c")
        assert await response.read() == b'{"ok":true}'
        response.release()
        await asyncio.sleep(0.01)
    assert server.connections == 3
    assert pool.idle_connections == 0


async def test_idle_connection_past_its_timeout_is_replaced(serve: Serve) -> None:
    server = await serve(lambda n, _: ok())
    pool = pool_for(server, idle_timeout_s=0.05)
    for _ in range(2):
        response = await pool.request("POST", "/c")
        await response.read()
        response.release()
        await asyncio.sleep(0.1)
    assert server.connections == 2


async def test_chunked_gzip_answer_is_joined_and_inflated(serve: Serve) -> None:
    packed = gzip.compress(b"hello " * 1000)
    pieces = [packed[i : i + 100] for i in range(0, len(packed), 100)]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    server = await serve(
        lambda n, _: b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-encoding: gzip\r\n\r\n" + chunked
    )
    pool = pool_for(server)
    response = await pool.request("POST", "/c")
    assert await response.read() == b"hello " * 1000
    response.release()
    assert pool.idle_connections == 1
    assert b"accept-encoding: gzip, deflate" in server.requests[0]


async def test_body_until_close_without_length(serve: Serve) -> None:
    server = await serve(lambda n, _: b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nall of it")
    pool = pool_for(server)
    response = await pool.request("POST", "/c")
    assert await response.read() == b"all of it"
    response.release()
    assert pool.idle_connections == 0


async def test_large_body_is_read_whole_through_backpressure(serve: Serve) -> None:
    body = bytes(range(256)) * 16384  # 4 MiB: the connection pauses reading at 1 MiB unread
    server = await serve(lambda n, _: ok(body))
    pool = pool_for(server)
    response = await pool.request("POST", "/c")
    await asyncio.sleep(0.2)  # let the answer pile up unread
    assert await response.read() == body
    response.release()
    assert pool.idle_connections == 1


async def test_cut_mid_body_raises_connection_cut(serve: Serve) -> None:
    server = await serve(lambda n, _: b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\nconnection: close\r\n\r\nonly part")
    pool = pool_for(server)
    response = await pool.request("POST", "/c")
    with pytest.raises(ConnectionCut, match="during the answer"):
        await response.read()
    response.release()
    assert (pool.idle_connections, pool.busy_connections) == (0, 0)


async def test_close_before_answer_raises_connection_cut(serve: Serve) -> None:
    server = await serve(lambda n, _: b"connection: close")  # not even a status line, then closed
    pool = pool_for(server)
    with pytest.raises((ConnectionCut, MalformedResponse)):
        response = await pool.request("POST", "/c")
        await response.read()
    assert pool.busy_connections == 0


async def test_garbage_answer_raises_malformed(serve: Serve) -> None:
    server = await serve(lambda n, _: b"SMTP ready\r\n\r\n")
    pool = pool_for(server)
    with pytest.raises(MalformedResponse):
        await pool.request("POST", "/c")
    assert pool.busy_connections == 0


async def test_interim_100_continue_is_skipped(serve: Serve) -> None:
    server = await serve(lambda n, _: b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"final"))
    pool = pool_for(server)
    response = await pool.request("POST", "/c")
    assert (response.status, await response.read()) == (200, b"final")
    response.release()


async def test_at_most_max_connections_in_flight(serve: Serve) -> None:
    release = asyncio.Event()
    server = await serve(lambda n, _: ok(str(n).encode()))
    pool = pool_for(server, max_connections=2)

    async def call() -> bytes:
        response = await pool.request("POST", "/c")
        await release.wait()  # hold the connection
        try:
            return await response.read()
        finally:
            response.release()

    tasks = [asyncio.create_task(call()) for _ in range(5)]
    for _ in range(500):  # until both connections carry a request (at most 5 s)
        if len(server.requests) == 2:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)  # room for a third request to slip through, were the bound wrong
    assert (pool.busy_connections, len(server.requests)) == (2, 2)
    release.set()
    assert sorted(await asyncio.gather(*tasks)) == [b"1", b"2", b"3", b"4", b"5"]
    assert server.connections == 2


async def test_a_request_cancelled_while_waiting_for_a_connection_takes_no_slot(serve: Serve) -> None:
    server = await serve(lambda n, _: ok(str(n).encode()))
    pool = pool_for(server, max_connections=1)
    first = await pool.request("POST", "/c")
    waiting = [asyncio.create_task(pool.request("POST", "/c")) for _ in range(3)]
    await asyncio.sleep(0.05)
    waiting[0].cancel()  # cancelled while it waits
    first_body = await first.read()
    first.release()  # the slot goes to the next still waiting, not to the cancelled one
    waiting[1].cancel()  # handed the slot, cancelled before it ran: the slot passes on
    async with asyncio.timeout(5):  # a slot lost to a cancelled waiter would leave it waiting
        second = await waiting[2]
    assert (first_body, await second.read()) == (b"1", b"2")
    second.release()
    for task in waiting[:2]:
        with pytest.raises(asyncio.CancelledError):
            await task
    assert (pool.busy_connections, len(server.requests)) == (0, 2)
    third = await pool.request("POST", "/c")  # every slot is back
    assert await third.read() == b"3"
    third.release()
    assert pool.busy_connections == 0


async def test_cancelled_request_closes_its_connection(serve: Serve) -> None:
    server = await serve(lambda n, _: None if n == 1 else ok())
    pool = pool_for(server)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await pool.request("POST", "/c")
    assert (pool.idle_connections, pool.busy_connections) == (0, 0)
    response = await pool.request("POST", "/c")  # a new connection; the hung one is gone
    assert await response.read() == b'{"ok":true}'
    response.release()
    assert server.connections == 2


async def test_refused_connection_raises_connect_failed() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    pool = HttpPool(f"http://127.0.0.1:{port}", max_connections=1, connect_timeout_s=1.0)
    with pytest.raises(ConnectFailed, match="cannot connect") as caught:
        await pool.request("POST", "/c")
    assert not caught.value.timed_out
    assert pool.busy_connections == 0


@pytest.mark.parametrize(
    ("headers", "target"),
    [({"x-bad": "a\r\nx-injected: 1"}, "/c"), ({"bad:name": "v"}, "/c"), ({}, "/c d"), ({}, "/c\r\n")],
)
async def test_unsendable_requests_raise_value_error(
    serve: Serve,
    headers: dict[str, str],
    target: str,
) -> None:
    server = await serve(lambda n, _: ok())
    pool = pool_for(server)
    with pytest.raises(ValueError):
        await pool.request("POST", target, headers)
    assert server.requests == [] and pool.busy_connections == 0


@pytest.mark.parametrize("url", ["ftp://host/x", "http:///nohost", "localhost:80"])
def test_bad_base_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        HttpPool(url, max_connections=1, connect_timeout_s=1.0)


def test_host_header_names_a_non_default_port() -> None:
    pool = HttpPool("https://api.example.com:8443/v1", max_connections=1, connect_timeout_s=1.0)
    assert pool._encode("POST", "/x", None, b"").startswith(b"POST /v1/x HTTP/1.1\r\nhost: api.example.com:8443\r\n")
    default = HttpPool("https://api.example.com/v1", max_connections=1, connect_timeout_s=1.0)
    assert b"host: api.example.com\r\n" in default._encode("POST", "/x", None, b"")


def test_round_trips_on_uvloop() -> None:
    """The router runs on uvloop, whose transports are not asyncio's classes."""

    async def scenario() -> tuple[list[bytes], int]:
        server = Server(lambda n, _: ok(str(n).encode()))
        server.server = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        pool = pool_for(server)
        bodies = []
        for _ in range(3):
            response = await pool.request("POST", "/c")
            bodies.append(await response.read())
            response.release()
        await pool.aclose()
        server.server.close()
        return bodies, server.connections

    assert uvloop.run(scenario()) == ([b"1", b"2", b"3"], 1)
