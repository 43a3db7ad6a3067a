"""Run the fake provider: in-process for tests, or until a signal for `python -m`."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Sequence

from interlock._http import EmbeddedHttpServer

from .app import DEFAULT_MODELS, FakeProviderApp


class FakeProviderServer:
    """One fake provider listening on a TCP port of the current event loop."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        models: Sequence[str] = DEFAULT_MODELS,
    ) -> None:
        self._http = EmbeddedHttpServer(FakeProviderApp(models), host, port)

    @property
    def base_url(self) -> str:
        """`http://host:port/v1`, the value for an OpenAI client's base_url (after start)."""
        return self._http.base_url + "/v1"

    async def start(self) -> str:
        """Bind, serve in a background task and return the base URL."""
        await self._http.start()
        return self.base_url

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (2 s at most) and close."""
        await self._http.stop()


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
