"""A service started as its own process, as `interlock up` starts it, for tests that look at
the process itself (its threads, its log) rather than only at its answers."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from interlock.devservers import free_port
from interlock.mesh import health_status


@contextlib.contextmanager
def serving(service: str, settings: dict[str, str], log_path: Path) -> Iterator[int]:
    """`python -m interlock.services.<service>` with `settings` on free ports, its stderr in
    `log_path`; yields its pid once its health check answers SERVING (at most 60 s)."""
    port = free_port()
    prefix = f"INTERLOCK_{service.upper()}"
    env = {**os.environ, f"{prefix}_PORT": str(port), **settings}
    if service == "router":
        env.setdefault(f"{prefix}_HTTP_PORT", str(free_port()))
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", f"interlock.services.{service}"], env=env, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while health_status(f"127.0.0.1:{port}", 0.5) != "SERVING":
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, f"{service} not serving after 60 s"
            time.sleep(0.1)
        yield proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)
