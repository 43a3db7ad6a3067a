"""A child process with a log file, a readiness probe and a bounded stop."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from interlock.devservers._ports import LOOPBACK, port_open


class DevServerError(RuntimeError):
    """A dev server could not be prepared, started or reached."""


def progress(message: str) -> None:
    """Progress lines go to stderr so stdout stays for data (addresses, JSON)."""
    print(f"interlock.devservers: {message}", file=sys.stderr, flush=True)


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


class ManagedProcess:
    """Base for the servers: subclasses build the command and say when the server is ready."""

    name = "server"

    def __init__(self, data_dir: Path, startup_timeout: float) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.startup_timeout = startup_timeout
        self.log_path = self.data_dir / f"{self.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # Subclass hooks.
    def _prepare(self) -> None:
        """Write config and storage before launch; runs on every start."""

    def _command(self) -> Sequence[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    @property
    def ports(self) -> tuple[int, ...]:
        """Ports the server will listen on; start() refuses if one is already taken."""
        return ()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        if self.running:
            return self
        # Else a server already on the port would pass the readiness probe.
        taken = [p for p in self.ports if port_open(p)]
        if taken:
            raise DevServerError(f"{self.name}: port(s) {taken} already in use on {LOOPBACK}")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._prepare()
        self._log = self.log_path.open("ab")
        started = time.monotonic()
        try:
            self._proc = subprocess.Popen(
                list(self._command()),
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C aimed at the parent must not kill the server
                # before the parent stops it in order.
                start_new_session=True,
            )
        except OSError as exc:
            self._close_log()
            raise DevServerError(f"{self.name}: cannot launch: {exc}") from exc
        self._wait_ready(started)
        return self

    def _wait_ready(self, started: float) -> None:
        deadline = started + self.startup_timeout
        while True:
            if self._proc is None or self._proc.poll() is not None:
                code = self._proc.returncode if self._proc is not None else None
                self._close_log()
                raise DevServerError(
                    f"{self.name}: exited with code {code} during startup; "
                    f"log {self.log_path}:\n{log_tail(self.log_path)}"
                )
            if self._ready():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise DevServerError(
                    f"{self.name}: not ready after {self.startup_timeout:.0f}s; "
                    f"log {self.log_path}:\n{log_tail(self.log_path)}"
                )
            time.sleep(0.2)

    def stop(self, timeout: float = 20.0) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            _signal(proc, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal(proc, signal.SIGKILL)
                proc.wait(10)
        self._proc = None
        self._close_log()

    def wait(self, poll: Callable[[], bool] | None = None) -> int:
        """Block until the process ends or poll() says to stop; return its exit code."""
        proc = self._proc
        if proc is None:
            return 0
        while proc.poll() is None:
            if poll is not None and poll():
                break
            time.sleep(0.2)
        return proc.returncode if proc.returncode is not None else 0

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, sig)
