"""The router's HTTP/1.1 client for provider calls: pooled keep-alive connections on asyncio
protocols, answers parsed by httptools (llhttp, the parser Node.js uses).

A provider call is one request and one answer on a connection kept for the next call, so the
client does only that: no cookies, redirects, proxies or multipart, and no per-request
objects beyond the answer. With it instead of aiohttp the router spends 1.37 rather than 1.59
ms of CPU a call at 100 calls/s (`make bench-probe`, docs/BENCHMARKS.md).

- `HttpPool(base_url, ...)`: one per provider, made inside the event loop that uses it. At
  most `max_connections` requests are in flight; more wait for a connection. An idle
  connection is reused newest first, never after `idle_timeout_s` idle (servers such as
  nginx, 75 s, or API front ends close theirs later; one found past it is closed), and never
  once the server has closed it.
- `await pool.request(method, target, headers, body)` returns an `HttpResponse` once the
  status line and headers arrived; its body is read with `read()` or chunk by chunk with
  `next_chunk()`, and `release()` gives the connection back (reused only if the answer was
  read whole and the server keeps it alive). Cancelling a request (the caller's deadline)
  closes its connection.
- Failures raise `TransportError`: `ConnectFailed` (refused, unresolvable, TLS, or no
  connection within `connect_timeout_s`), `ConnectionCut` (closed before the answer ended),
  `MalformedResponse` (not HTTP/1.1). A header value with a line break raises ValueError
  before anything is sent.

Answers compressed with gzip or deflate (asked for, as most clients do) are inflated as they
arrive; header names are lower-cased.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
import time
import zlib
from collections.abc import Mapping
from typing import cast
from urllib.parse import urlsplit

import httptools

_PAUSE_BYTES = 1 << 20
"""Unread answer bytes at which the connection stops reading until the caller catches up."""

_DEFAULT_HEADERS = {"accept-encoding": "gzip, deflate"}


class TransportError(Exception):
    """The request could not be sent or its answer not read."""


class ConnectFailed(TransportError):
    """No connection: refused, unresolvable, TLS handshake failed, or the connect timed out."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class ConnectionCut(TransportError):
    """The connection closed before the answer ended."""


class MalformedResponse(TransportError):
    """The server's bytes are not an HTTP/1.1 answer."""


def _check_header(name: str, value: str) -> None:
    if not name or ":" in name or "\r" in name or "\n" in name or "\r" in value or "\n" in value:
        raise ValueError(f"header {name!r} has a line break or a colon in it")


class HttpResponse:
    """One answer: `status`, `headers` (lower-case names), and its body as it arrives."""

    __slots__ = (
        "_chunks",
        "_conn",
        "_done",
        "_error",
        "_head",
        "_inflate",
        "_keep_alive",
        "_released",
        "_unread",
        "_until_eof",
        "_waiter",
        "headers",
        "status",
    )

    def __init__(self, conn: _Connection, head: asyncio.Future[None]) -> None:
        self._conn = conn
        self._head = head
        self.status = 0
        self.headers: dict[str, str] = {}
        self._chunks: collections.deque[bytes] = collections.deque()
        self._unread = 0
        self._done = False
        self._error: TransportError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._keep_alive = False
        self._until_eof = False
        self._inflate: zlib._Decompress | None = None
        self._released = False

    # -- reading -------------------------------------------------------------------------

    async def read(self) -> bytes:
        """The whole body (inflated); raises TransportError if the connection is cut."""
        parts = []
        while chunk := await self.next_chunk():
            parts.append(chunk)
        return b"".join(parts)

    async def next_chunk(self) -> bytes:
        """The next bytes of the body; b"" once it ended. Raises TransportError if cut."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._done:
                return b""
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        chunk = self._chunks.popleft()
        self._unread -= len(chunk)
        if self._unread < _PAUSE_BYTES // 2:
            self._conn.resume()
        return chunk

    def release(self) -> None:
        """Give the connection back: pooled if the answer was read whole, closed otherwise."""
        if self._released:
            return
        self._released = True
        self._conn.finished(reusable=self._done and self._error is None and self._keep_alive and not self._chunks)

    # -- fed by the connection -----------------------------------------------------------

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _headers_complete(self, status: int, headers: dict[str, str], keep_alive: bool) -> None:
        self.status = status
        self.headers = headers
        self._keep_alive = keep_alive
        self._until_eof = "content-length" not in headers and "chunked" not in headers.get("transfer-encoding", "")
        if headers.get("content-encoding", "").strip().lower() in ("gzip", "deflate", "x-gzip"):
            # wbits 47: zlib or gzip framing, told apart by the header.
            self._inflate = zlib.decompressobj(47)
        if not self._head.done():
            self._head.set_result(None)

    def _body(self, data: bytes) -> None:
        if self._inflate is not None:
            try:
                data = self._inflate.decompress(data)
            except zlib.error as exc:
                self._fail(MalformedResponse(f"body does not inflate: {exc}"))
                return
            if not data:
                return
        self._chunks.append(data)
        self._unread += len(data)
        if self._unread >= _PAUSE_BYTES:
            self._conn.pause()
        self._wake()

    def _complete(self) -> None:
        if self._inflate is not None:
            tail = self._inflate.flush()
            if tail:
                self._chunks.append(tail)
                self._unread += len(tail)
        self._done = True
        self._wake()

    def _fail(self, error: TransportError) -> None:
        if self._done or self._error is not None:
            return
        self._error = error
        if not self._head.done():
            self._head.set_exception(error)
        self._wake()

    def _lost(self, exc: Exception | None) -> None:
        if self._done:
            return
        if self._head.done() and self._until_eof and exc is None:
            # No length and not chunked: the body is everything until the server closes.
            self._keep_alive = False
            self._complete()
            return
        reason = f": {exc}" if exc is not None else ""
        where = "during the answer" if self._head.done() else "before the answer"
        self._fail(ConnectionCut(f"connection closed {where}{reason}"))


class _Connection(asyncio.Protocol):
    """One keep-alive connection; at most one request on it at a time."""

    __slots__ = ("_header_list", "_parser", "_paused", "_pool", "closed", "idle_since", "response", "transport")

    def __init__(self, pool: HttpPool) -> None:
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self._header_list: list[tuple[bytes, bytes]] = []
        self._paused = False
        self.transport: asyncio.Transport | None = None
        self.response: HttpResponse | None = None
        self.closed = False
        self.idle_since = 0.0

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.response is not None:
            self.response._lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.response is None:
            # Bytes nobody asked for (a server speaking out of turn): not reusable.
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.response._fail(MalformedResponse(f"not an HTTP/1.1 answer: {exc}"))
            self.close()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost ends an EOF-delimited body

    # -- httptools callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._header_list = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_list.append((name, value))

    def on_headers_complete(self) -> None:
        assert self.response is not None
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            return  # an interim answer (100 Continue, 103 Early Hints): the real one follows
        headers: dict[str, str] = {}
        for name, value in self._header_list:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        self.response._headers_complete(status, headers, self._parser.should_keep_alive())

    def on_body(self, body: bytes) -> None:
        assert self.response is not None
        self.response._body(body)

    def on_message_complete(self) -> None:
        response = self.response
        assert response is not None
        if response.status == 0:
            return  # the end of an interim answer
        response._complete()

    # -- for the pool and the response ---------------------------------------------------

    def send(self, data: bytes, head: asyncio.Future[None]) -> HttpResponse:
        assert self.transport is not None
        response = self.response = HttpResponse(self, head)
        self.transport.write(data)
        return response

    def pause(self) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def finished(self, reusable: bool) -> None:
        self.response = None
        if not reusable:
            self.close()
        self._pool._give_back(self)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class HttpPool:
    """Keep-alive connections to one origin (`scheme://host:port`), shared by its requests."""

    __slots__ = (
        "_busy",
        "_closed",
        "_connect_timeout_s",
        "_head",
        "_headers",
        "_host",
        "_idle",
        "_idle_timeout_s",
        "_max",
        "_path",
        "_port",
        "_ssl",
        "_waiters",
    )

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int,
        connect_timeout_s: float,
        headers: Mapping[str, str] | None = None,
        idle_timeout_s: float = 15.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """`base_url`: http or https, with an optional path every request target is under.
        Raises ValueError for any other scheme, a URL without a host, or a bad header."""
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"base URL {base_url!r} is not http or https")
        if not parts.hostname:
            raise ValueError(f"base URL {base_url!r} has no host")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        secure = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if secure else 80)
        self._path = parts.path.rstrip("/")
        self._ssl = (ssl_context or ssl.create_default_context()) if secure else None
        default_port = self._port == (443 if secure else 80)
        host = f"[{self._host}]" if ":" in self._host else self._host
        merged = {"host": host if default_port else f"{host}:{self._port}", **_DEFAULT_HEADERS}
        for name, value in (headers or {}).items():
            _check_header(name, value)
            merged[name.lower()] = value
        self._headers = merged
        self._head = "".join(f"{name}: {value}\r\n" for name, value in merged.items())
        """The pool's own header lines, written once; a request's headers follow them."""
        self._connect_timeout_s = connect_timeout_s
        self._idle_timeout_s = idle_timeout_s
        self._idle: list[_Connection] = []
        # A slot a request: taken at once below `max_connections` (no await, no waiter
        # objects), else waited for in order; a freed slot goes straight to the first waiter.
        self._max = max_connections
        self._busy = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._closed = False

    @property
    def idle_connections(self) -> int:
        """Open connections waiting for a request."""
        return sum(not conn.closed for conn in self._idle)

    @property
    def busy_connections(self) -> int:
        """Requests holding a connection (their answers not yet released)."""
        return self._busy

    async def request(
        self, method: str, target: str, headers: Mapping[str, str] | None = None, body: bytes = b""
    ) -> HttpResponse:
        """Send `method` to the base URL's path + `target` (e.g. "/chat/completions?x=1");
        returns once the answer's headers arrived. The caller must `release()` the answer."""
        if self._closed:
            raise ConnectFailed("the client is closed")
        data = self._encode(method, target, headers, body)
        if self._busy < self._max and not self._waiters:
            self._busy += 1
        else:
            await self._wait_for_slot()
        try:
            conn = await self._connection()
            head: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            response = conn.send(data, head)
        except BaseException:
            self._release_slot()
            raise
        try:
            await head
        except BaseException:
            response.release()  # cancelled or failed mid-answer: the connection is closed
            raise
        return response

    async def aclose(self) -> None:
        """Close the idle connections now and every busy one when its answer is released."""
        self._closed = True
        for conn in self._idle:
            conn.close()
        self._idle.clear()

    # -- internals -----------------------------------------------------------------------

    def _encode(self, method: str, target: str, headers: Mapping[str, str] | None, body: bytes) -> bytes:
        if "\r" in target or "\n" in target or " " in target:
            raise ValueError("request target has whitespace or a line break in it")
        head = self._head
        if headers:
            own = self._headers
            extra: dict[str, str] = {}
            for name, value in headers.items():
                _check_header(name, value)
                extra[name.lower()] = value
            if own.keys().isdisjoint(extra):
                head += "".join([f"{name}: {value}\r\n" for name, value in extra.items()])
            else:  # a request header replaces one of the pool's (rare): all written anew
                head = "".join([f"{name}: {value}\r\n" for name, value in {**own, **extra}.items()])
        text = f"{method} {self._path}{target} HTTP/1.1\r\n{head}content-length: {len(body)}\r\n\r\n"
        return text.encode("latin-1") + body

    async def _connection(self) -> _Connection:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and now - conn.idle_since < self._idle_timeout_s:
                return conn
            conn.close()
        return await self._connect()

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        where = f"{self._host}:{self._port}"
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None,
                )
        except TimeoutError:
            message = f"no connection to {where} within {self._connect_timeout_s:g}s"
            raise ConnectFailed(message, timed_out=True) from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectFailed(f"cannot connect to {where}: {exc}") from exc
        return conn

    async def _wait_for_slot(self) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # resolved by _release_slot, which hands its slot over
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._release_slot()  # handed a slot, then cancelled: it goes to the next
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def _release_slot(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():  # still waiting (not cancelled): the slot is its now
                waiter.set_result(None)
                return
        self._busy -= 1

    def _give_back(self, conn: _Connection) -> None:
        self._release_slot()
        if conn.closed:
            return
        if self._closed:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)
