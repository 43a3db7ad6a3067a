"""An HTTP server (uvicorn, raw ASGI) embedded in the caller's event loop.

Used by the router's OpenAI/Anthropic-compatible facade and by the fake providers.
Stopping is the owner's business: uvicorn's own signal capture is turned off, so the
process's SIGTERM handling (graceful stop in the gRPC kit) stays in charge.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable, Generator, MutableMapping
from typing import Any

import uvicorn

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


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
            http="auto",  # httptools when installed (it is a dependency): faster than h11
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
