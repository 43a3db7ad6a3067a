"""An HTTP server (uvicorn, raw ASGI) embedded in the caller's event loop.

Used by the router's OpenAI/Anthropic-compatible facade and by the fake providers.
Stopping is the owner's business: uvicorn's own signal capture is turned off, so the
process's SIGTERM handling (graceful stop in the gRPC kit) stays in charge.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable, Generator, Iterable, MutableMapping
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class HeadWithBody(asyncio.Transport):
    """A transport that holds a response's head until the write after it, so a head and its
    body leave in one send: one syscall, one segment and one wakeup of the client instead of
    two (uvicorn writes them separately). A held head with nothing after it in the same loop
    iteration (an event stream whose first event comes later, a `100 Continue`) goes out on
    the next iteration; closing sends it first. The order of bytes never changes."""

    __slots__ = ("_head", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._head: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        head = self._head
        if head is not None:
            self._head = None
            self._transport.write(head + bytes(data))
        elif data[:9] == b"HTTP/1.1 ":
            self._head = bytes(data)
            self._loop.call_soon(self._flush)
        else:
            self._transport.write(data)

    def _flush(self) -> None:
        head, self._head = self._head, None
        if head is not None and not self._transport.is_closing():
            self._transport.write(head)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        self._head = None
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + len(self._head or b"")

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()


class _Protocol(HttpToolsProtocol):
    """uvicorn's httptools protocol writing each response head together with its body."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(HeadWithBody(transport, self.loop))


class EmbeddedHttpServer:
    """One ASGI app listening on a TCP port of the current event loop."""

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0, *, grace_s: float = 2.0) -> None:
        self._app = app
        self.host = host
        self.port = port
        self._grace_s = grace_s
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> str:
        """Bind, serve in a background task and return `http://host:port`."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # proto must say TCP: asyncio only sets TCP_NODELAY on accepted sockets whose proto is
        # IPPROTO_TCP, and without it Nagle + delayed ACK add ~40 ms to every reused connection.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]  # the real port when 0 was asked
        config = uvicorn.Config(
            self._app,
            lifespan="off",
            http=_Protocol,  # httptools (faster than h11), each head sent with its body
            log_config=None,  # leave the host process's logging alone
            log_level="warning",
            access_log=False,
            server_header=False,
            # No handler reads the client's address: skip X-Forwarded-For parsing per request.
            proxy_headers=False,
            # Longer than clients' keepalive so a pooled connection is not closed under a request.
            timeout_keep_alive=75,
            timeout_graceful_shutdown=max(1, int(self._grace_s)),
            backlog=4096,
        )
        server = _Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]), name=f"http-{self.port}")
        while not server.started:
            if task.done():
                sock.close()
                task.result()  # raises the startup error
                raise RuntimeError("HTTP server stopped while starting")
            await asyncio.sleep(0.002)
        self._server, self._task = server, task
        return self.base_url

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (up to the grace) and close."""
        server, task = self._server, self._task
        self._server = self._task = None
        if server is None or task is None:
            return
        server.should_exit = True
        await task
