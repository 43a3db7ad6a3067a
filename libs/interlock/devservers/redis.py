"""A throwaway redis-server (Debian's package) on 127.0.0.1, without persistence."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Sequence
from pathlib import Path

from interlock.devservers._ports import LOOPBACK, free_port
from interlock.devservers._process import DevServerError, ManagedProcess


def redis_ping(port: int, host: str = LOOPBACK) -> bool:
    """Plain RESP PING, so readiness needs no client library."""
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer(ManagedProcess):
    """redis-server with no RDB/AOF: state lives only as long as the process."""

    name = "redis"

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        executable: str = "redis-server",
        startup_timeout: float = 30.0,
    ) -> None:
        super().__init__(data_dir, startup_timeout)
        self.port = port or free_port()
        self.executable = executable

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.port,)

    def _prepare(self) -> None:
        if shutil.which(self.executable) is None:
            raise DevServerError(f"redis: `{self.executable}` not found; install it (apt-get install redis-server)")

    def _command(self) -> Sequence[str]:
        return [
            self.executable,
            "--bind",
            LOOPBACK,
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ]

    def _ready(self) -> bool:
        return redis_ping(self.port)
