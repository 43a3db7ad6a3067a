"""Run the fake provider: in-process for tests, or until a signal for `python -m`."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import AsyncIterator, Generator, Sequence

import uvicorn

from .app import DEFAULT_MODELS, FakeProviderApp


class _Server(uvicorn.Server):
    """uvicorn's server without its signal capture: stopping is the owner's business.

    uvicorn swaps in its own SIGINT/SIGTERM handlers while serving, which inside a test
    process would swallow Ctrl+C; callers here stop it with `should_exit` instead.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class FakeProviderServer:
    """One fake provider listening on a TCP port of the current event loop."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        models: Sequence[str] = DEFAULT_MODELS,
    ) -> None:
        self._host = host
        self._port = port
        self._models = tuple(models)
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def base_url(self) -> str:
        """`http://host:port/v1`, the value for an OpenAI client's base_url (after start)."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}/v1"

    async def start(self) -> str:
        """Bind, serve in a background task and return the base URL."""
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        # proto must say TCP: asyncio only sets TCP_NODELAY on accepted sockets whose proto is
        # IPPROTO_TCP, and without it Nagle + delayed ACK add ~40 ms to every reused connection.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._host, self._port))
        except OSError:
            sock.close()
            raise
        self._port = sock.getsockname()[1]  # the real port when 0 was asked
        config = uvicorn.Config(
            FakeProviderApp(self._models),
            lifespan="off",
            http="auto",  # httptools when installed (it is a dependency): faster than h11
            log_config=None,  # leave the host process's logging alone
            log_level="warning",
            access_log=False,
            server_header=False,
            # Longer than clients' keepalive so a pooled connection is not closed under a request.
            timeout_keep_alive=75,
            timeout_graceful_shutdown=2,
            backlog=4096,
        )
        server = _Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]), name="fakeprovider")
        while not server.started:
            if task.done():
                sock.close()
                task.result()  # raises the startup error
                raise RuntimeError("fake provider stopped while starting")
            await asyncio.sleep(0.002)
        self._server, self._task = server, task
        return self.base_url

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (2 s at most) and close."""
        server, task = self._server, self._task
        self._server = self._task = None
        if server is None or task is None:
            return
        server.should_exit = True
        await task


@contextlib.asynccontextmanager
async def serve_fake_provider(
    port: int = 0, host: str = "127.0.0.1", models: Sequence[str] = DEFAULT_MODELS
) -> AsyncIterator[str]:
    """Serve a fake provider on the running loop; yields its base URL (`http://host:port/v1`)."""
    server = FakeProviderServer(host, port, models)
    base_url = await server.start()
    try:
        yield base_url
    finally:
        await server.stop()


async def run_until_signalled(host: str, port: int, models: Sequence[str] = DEFAULT_MODELS) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = FakeProviderServer(host, port, models)
    base_url = await server.start()
    # One line on stdout so a parent process can learn the port when it asked for 0.
    print(f"fakeprovider listening on {base_url}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop()
