"""Loopback port helpers shared by the dev servers."""

from __future__ import annotations

import socket
import time

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """Return a port the OS reports free right now (it may be taken again before use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_open(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port_free(port: int, host: str = LOOPBACK, timeout: float = 10.0) -> bool:
    """Wait until nothing listens on host:port; a restart on the same port needs it."""
    deadline = time.monotonic() + timeout
    while port_open(port, host, timeout=0.2):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True
