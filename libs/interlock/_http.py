"""An HTTP/1.1 server for ASGI apps, embedded in the caller's event loop.

Used by the router's OpenAI/Anthropic-compatible facade and by the fake providers. It is the
part of every facade call that is not Interlock's own work, so it does as little per request
as HTTP/1.1 allows: httptools parses, one object per request carries the ASGI scope and its
body, a body that came whole is handed over without waiting, and a response's head leaves in
the same write as its first body bytes (one syscall, one segment, one wakeup of the client).

It serves what the facade and the SDKs use: keep-alive and pipelined requests, Content-Length
and chunked bodies both ways, `Expect: 100-continue`, HEAD, request bodies under flow control,
a client gone mid-request reported to the app as `http.disconnect`, and a `date` header. No
upgrades (WebSocket, h2c) and no HTTP/2. Stopping is the owner's business (no signal
handlers): `stop()` stops accepting, lets requests in flight finish for the grace period and
closes the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import http
import logging
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote

import httptools

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("interlock.http")

HIGH_WATER = 64 * 1024
"""Request body bytes buffered for the app before the connection stops reading."""
MAX_HEAD_BYTES = 64 * 1024
"""Request line and headers together; a longer head is answered 431."""

_ASGI = {"version": "3.0", "spec_version": "2.3"}
_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in http.HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_DISCONNECT = {"type": "http.disconnect"}
_NO_BODY_STATUS = frozenset((204, 304))


def _status_line(status: int) -> bytes:
    return _STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status


class _Date:
    """The `date` header, formatted once a second."""

    second = -1
    header = b""

    @classmethod
    def now(cls) -> bytes:
        second = int(time.time())
        if second != cls.second:
            cls.second = second
            cls.header = b"date: " + email.utils.formatdate(second, usegmt=True).encode() + b"\r\n"
        return cls.header


class _Request:
    """One request: its ASGI scope, its body as it arrives, and its response's state."""

    __slots__ = (
        "buffered",
        "chunked",
        "chunks",
        "complete",
        "conn",
        "delivered",
        "disconnected",
        "expect_continue",
        "head",
        "head_only",
        "keep_alive",
        "remaining",
        "response_done",
        "response_started",
        "scope",
        "waiter",
    )

    def __init__(self, conn: _Connection, scope: Scope, keep_alive: bool, expect_continue: bool) -> None:
        self.conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.head_only = scope["method"] == "HEAD"
        self.chunks: list[bytes] = []
        self.buffered = 0  # bytes in chunks
        self.complete = False  # the whole body has arrived
        self.delivered = False  # the app has had the last part of the body
        self.disconnected = False
        self.response_started = False
        self.response_done = False
        self.chunked = False
        self.remaining: int | None = None  # bytes still owed under the response's Content-Length
        self.head: bytes | None = None  # a response head waiting for the body after it
        self.waiter: asyncio.Future[None] | None = None

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def receive(self) -> MutableMapping[str, Any]:
        if self.expect_continue:
            self.expect_continue = False
            if not self.complete and not self.response_started and not self.disconnected:
                self.conn.transport.write(_CONTINUE)
        while True:
            if self.disconnected:
                return _DISCONNECT.copy()
            if not self.delivered:
                if self.chunks or self.complete:
                    chunks, self.chunks = self.chunks, []
                    self.buffered = 0
                    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                    self.delivered = self.complete
                    self.conn.body_taken()
                    return {"type": "http.request", "body": body, "more_body": not self.complete}
            elif self.response_done:
                return _DISCONNECT.copy()
            # Nothing to hand over yet: more body, the disconnect, or the response's end.
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None

    async def send(self, message: MutableMapping[str, Any]) -> None:
        conn = self.conn
        if conn.write_paused and not self.disconnected:
            await conn.drain()
        if self.disconnected:
            return
        kind = message["type"]
        if not self.response_started:
            if kind != "http.response.start":
                raise RuntimeError(f"expected ASGI message 'http.response.start', got {kind!r}")
            self._start(message["status"], message.get("headers", ()))
            return
        if kind != "http.response.body" or self.response_done:
            raise RuntimeError(f"unexpected ASGI message {kind!r} (the response is complete or not a body)")
        body = message.get("body", b"")
        more = message.get("more_body", False)
        if self.head_only:
            data = b""
        elif self.chunked:
            data = b"%x\r\n%s\r\n" % (len(body), body) if body else b""
            if not more:
                data += b"0\r\n\r\n"
        else:
            if self.remaining is not None:
                self.remaining -= len(body)
                if self.remaining < 0:
                    raise RuntimeError("response body longer than its Content-Length")
            data = bytes(body)
        head = self.head
        if head is not None:
            self.head = None
            data = head + data
        if data:
            conn.transport.write(data)
        if not more:
            if self.remaining and not self.head_only:
                raise RuntimeError("response body shorter than its Content-Length")
            self.response_done = True
            self.wake()
            conn.response_done(self)

    def _start(self, status: int, headers: Any) -> None:
        parts = [_status_line(status), _Date.now()]
        length: int | None = None
        chunked = close = False
        for name, value in headers:
            if b"\n" in value or b"\r" in value or b"\0" in value or b"\n" in name or b"\r" in name or b":" in name:
                raise RuntimeError(f"invalid response header {name!r}")
            name = name.lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = value.lower() == b"chunked"
            elif name == b"connection" and b"close" in value.lower():
                self.keep_alive = False
                close = True
            parts += (name, b": ", value, b"\r\n")
        if not self.keep_alive and not close:
            parts.append(b"connection: close\r\n")
        if length is None and not chunked and not self.head_only and status not in _NO_BODY_STATUS:
            chunked = True
            parts.append(b"transfer-encoding: chunked\r\n")
        parts.append(b"\r\n")
        self.response_started = True
        self.expect_continue = False
        self.chunked = chunked and not self.head_only
        self.remaining = length
        self.head = b"".join(parts)
        # A head with no body after it in this loop iteration (an event stream whose first
        # event comes later) still goes out, on the next iteration.
        asyncio.get_running_loop().call_soon(self._flush_head)

    def _flush_head(self) -> None:
        head, self.head = self.head, None
        if head is not None and not self.conn.transport.is_closing():
            self.conn.transport.write(head)

    async def run(self, app: ASGIApp) -> None:
        try:
            await app(self.scope, self.receive, self.send)
        except asyncio.CancelledError:
            self.conn.close()
            raise
        except Exception:
            log.exception("error in the HTTP app", extra={"fields": {"path": self.scope.get("path")}})
            if self.response_started or self.disconnected:
                self.conn.close()
            else:
                await self._internal_error()
        else:
            if not self.response_started and not self.disconnected:
                log.error("the HTTP app returned without a response", extra={"fields": {"path": self.scope["path"]}})
                await self._internal_error()
            elif not self.response_done and not self.disconnected:
                log.error("the HTTP app returned mid-response", extra={"fields": {"path": self.scope["path"]}})
                self.conn.close()

    async def _internal_error(self) -> None:
        self.keep_alive = False
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"21")]
        await self.send({"type": "http.response.start", "status": 500, "headers": headers})
        await self.send({"type": "http.response.body", "body": b"Internal Server Error"})


class _Connection(asyncio.Protocol):
    """One client connection: parses requests and runs them in order, one at a time."""

    def __init__(self, server: EmbeddedHttpServer) -> None:
        self.server = server
        self.app = server.app
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self.sockname: Any = None
        self.peername: Any = None
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0
        self.expect_continue = False
        self.receiving: _Request | None = None  # the request whose body is being parsed
        self.current: _Request | None = None  # the request being answered
        self.pipeline: deque[_Request] = deque()
        self.reading_paused = False
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.idle_since = self.loop.time()
        self.closing = False

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.sockname = transport.get_extra_info("sockname")
        self.peername = transport.get_extra_info("peername")
        self.server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, b"Protocol upgrades are not supported.")
        except httptools.HttpParserError:
            # _HeadTooLarge, raised in a callback to stop the parser, reaches here wrapped.
            if self.head_bytes > MAX_HEAD_BYTES:
                self._refuse(431, b"Request header fields too large.")
            else:
                self._refuse(400, b"Invalid HTTP request.")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.connections.discard(self)
        for request in (self.current, self.receiving, *self.pipeline):
            if request is not None:
                request.disconnected = True
                request.wake()
        self.pipeline.clear()
        self.resume_writing()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter, self.drain_waiter = self.drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def drain(self) -> None:
        if self.drain_waiter is None:
            self.drain_waiter = self.loop.create_future()
        await asyncio.shield(self.drain_waiter)

    # -- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.head_bytes = 0
        self.expect_continue = False

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_bytes += len(url)
        if self.head_bytes > MAX_HEAD_BYTES:
            raise _HeadTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        self.head_bytes += len(name) + len(value)
        if self.head_bytes > MAX_HEAD_BYTES:
            raise _HeadTooLarge
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        url = self.url
        if url[:1] == b"/":
            raw_path, _, query = url.partition(b"?")
        else:  # absolute-form (`http://host/path?q`) or `*`
            parsed = httptools.parse_url(url)
            raw_path, query = parsed.path or b"/", parsed.query or b""
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = unquote(path)
        scope = {
            "type": "http",
            "asgi": _ASGI,
            "http_version": parser.get_http_version(),
            "server": self.sockname,
            "client": self.peername,
            "scheme": "http",
            "method": parser.get_method().decode("ascii"),
            "root_path": "",
            "path": path,
            "raw_path": raw_path,
            "query_string": query,
            "headers": self.headers,
        }
        request = _Request(self, scope, parser.should_keep_alive(), self.expect_continue)
        self.receiving = request
        if self.current is None:
            self._begin(request)
        else:  # pipelined: answered after the ones before it; stop reading until then
            self.pipeline.append(request)
            self._pause_reading()

    def on_body(self, body: bytes) -> None:
        request = self.receiving
        if request is None or request.response_done:
            return  # the rest of a body the app answered without reading
        request.chunks.append(body)
        request.buffered += len(body)
        if request.buffered > HIGH_WATER:
            self._pause_reading()
        request.wake()

    def on_message_complete(self) -> None:
        request = self.receiving
        if request is not None:
            request.complete = True
            request.wake()

    # -- requests ----------------------------------------------------------------------------

    def _begin(self, request: _Request) -> None:
        self.current = request
        task = self.loop.create_task(request.run(self.app))
        self.server.tasks.add(task)
        task.add_done_callback(self.server.tasks.discard)

    def response_done(self, request: _Request) -> None:
        if self.current is request:
            self.current = None
        if not request.keep_alive or self.closing or self.server.stopping:
            self.close()
            return
        self.idle_since = self.loop.time()
        if self.pipeline:
            self._begin(self.pipeline.popleft())
        if not self.pipeline:
            self._resume_reading()

    def body_taken(self) -> None:
        if self.reading_paused and not self.pipeline:
            self._resume_reading()

    def _pause_reading(self) -> None:
        if not self.reading_paused and not self.closing:
            self.reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.reading_paused and not self.closing:
            self.reading_paused = False
            self.transport.resume_reading()

    def _refuse(self, status: int, message: bytes) -> None:
        if self.current is None or not self.current.response_started:
            self.transport.write(
                _status_line(status)
                + _Date.now()
                + b"content-type: text/plain; charset=utf-8\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s"
                % (len(message), message)
            )
        self.close()

    def idle(self) -> bool:
        return self.current is None and not self.pipeline

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.transport.close()


class _HeadTooLarge(Exception):
    """The request line and headers passed MAX_HEAD_BYTES."""


class EmbeddedHttpServer:
    """One ASGI app listening on a TCP port of the current event loop."""

    def __init__(
        self,
        app: ASGIApp,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        grace_s: float = 2.0,
        keep_alive_s: float = 75.0,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._grace_s = grace_s
        # Longer than clients' keep-alive, so a pooled connection is not closed under a request.
        self._keep_alive_s = keep_alive_s
        self.connections: set[_Connection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> str:
        """Bind, start serving and return `http://host:port`."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # proto must say TCP: asyncio only sets TCP_NODELAY on accepted sockets whose proto is
        # IPPROTO_TCP, and without it Nagle + delayed ACK add ~40 ms to every reused connection.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
            self.port = sock.getsockname()[1]  # the real port when 0 was asked
            loop = asyncio.get_running_loop()
            self._server = await loop.create_server(lambda: _Connection(self), sock=sock, backlog=4096)
        except BaseException:
            sock.close()
            raise
        self.stopping = False
        self._schedule_sweep()
        return self.base_url

    def _schedule_sweep(self) -> None:
        loop = asyncio.get_running_loop()
        self._sweeper = loop.call_later(min(5.0, self._keep_alive_s / 2), self._sweep)

    def _sweep(self) -> None:
        """Close connections idle for longer than the keep-alive."""
        cutoff = asyncio.get_running_loop().time() - self._keep_alive_s
        for conn in list(self.connections):
            if conn.idle() and conn.idle_since < cutoff:
                conn.close()
        if not self.stopping:
            self._schedule_sweep()

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish (up to the grace) and close."""
        server, self._server = self._server, None
        if server is None:
            return
        self.stopping = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        server.close()
        for conn in list(self.connections):
            if conn.idle():
                conn.close()
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=self._grace_s)
        for task in list(self.tasks):
            task.cancel()
        for conn in list(self.connections):
            conn.close()
        if self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*self.tasks, return_exceptions=True)
        await server.wait_closed()
