"""A ClickHouse HTTP server (and optionally native TCP) from the chdb-core wheel.

chdb embeds clickhouse-local, which can open the server listeners with
`SYSTEM START LISTEN`. The listeners live only while the statement batch that opened
them runs, and only the one-shot `chdb._chdb.query` entry has the callback that starts
them (a `chdb.connect` session refuses). So `serve_clickhouse` runs one batch: start
the listeners, then a sleep query that never ends on its own; stopping kills that
query over HTTP so clickhouse-local shuts down normally. One server per process.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from xml.sax.saxutils import escape

from interlock.devservers._ports import LOOPBACK, free_port, port_open
from interlock.devservers._process import DevServerError, ManagedProcess, progress

_KEEPALIVE_TAG = "interlock-devserver-keepalive"
# max_block_size=1 makes every row one sleep, so a kill takes effect within a second.
_KEEPALIVE = f"SELECT sleep(1) /* {_KEEPALIVE_TAG} */ FROM system.numbers SETTINGS max_block_size = 1 FORMAT Null"


def _config_xml(http_port: int, tcp_port: int | None) -> str:
    tcp = f"  <tcp_port>{tcp_port}</tcp_port>\n" if tcp_port else ""
    return (
        "<clickhouse>\n"
        f"  <listen_host>{escape(LOOPBACK)}</listen_host>\n"
        f"  <http_port>{http_port}</http_port>\n"
        f"{tcp}"
        # Shutdown waits ~5 s for open connections and then exits with code 1; idle
        # keep-alive connections (clickhouse-connect keeps them) must close before that.
        "  <keep_alive_timeout>2</keep_alive_timeout>\n"
        "</clickhouse>\n"
    )


def _http(port: int, query: str | None = None, timeout: float = 2.0) -> str:
    url = f"http://{LOOPBACK}:{port}/" + ("" if query is not None else "ping")
    data = query.encode() if query is not None else None
    with urllib.request.urlopen(url, data=data, timeout=timeout) as resp:
        body: bytes = resp.read()
        return body.decode()


def ping(port: int) -> bool:
    try:
        return _http(port).strip() == "Ok."
    except (OSError, urllib.error.URLError):
        return False


def serve_clickhouse(
    data_dir: Path,
    http_port: int,
    tcp_port: int | None = None,
    *,
    stop: threading.Event,
    on_ready: Callable[[], None] | None = None,
    startup_timeout: float = 60.0,
) -> int:
    """Serve until `stop` is set or the server fails; return an exit code.

    Changes the working directory (clickhouse-local reads ./config.xml), so run it in
    a process of its own.
    """
    from chdb import _chdb  # heavy import: only the server process needs it

    # Else a server already on the port would answer our ping and pass for this one.
    taken = [p for p in (http_port, tcp_port) if p and port_open(p)]
    if taken:
        progress(f"clickhouse: port(s) {taken} already in use on {LOOPBACK}")
        return 1
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "config.xml").write_text(_config_xml(http_port, tcp_port), encoding="utf-8")
    os.chdir(data_dir)
    listen = "SYSTEM START LISTEN HTTP; " + ("SYSTEM START LISTEN TCP; " if tcp_port else "")
    # chdb prints most failures itself and still reports success; keep what it returns.
    outcome: dict[str, str] = {}

    def run() -> None:
        # TabSeparated becomes the HTTP default format, as on a real server; CSV
        # (chdb's default) confuses clients that parse untagged answers.
        try:
            # The wheel's stub for _chdb omits query(); the call is the clickhouse-local one.
            res = _chdb.query(listen + _KEEPALIVE, "TabSeparated", path=str(data_dir / "db"))  # type: ignore[attr-defined]
            if res.has_error():
                outcome["error"] = str(res.error_message())
        except Exception as exc:  # noqa: BLE001 - reported to the caller as an exit code
            outcome["error"] = str(exc)

    worker = threading.Thread(target=run, name="clickhouse-local", daemon=True)
    worker.start()
    deadline = time.monotonic() + startup_timeout
    while not ping(http_port):
        if not worker.is_alive():
            progress(f"clickhouse: server ended during startup: {outcome.get('error', 'see the error above')}")
            return 1
        if stop.is_set():
            break
        if time.monotonic() > deadline:
            progress(f"clickhouse: no answer on port {http_port} after {startup_timeout:.0f}s")
            return 1
        time.sleep(0.1)
    else:
        if on_ready is not None:
            on_ready()
    while worker.is_alive() and not stop.wait(0.5):
        pass
    if not worker.is_alive():
        progress(f"clickhouse: server ended: {outcome.get('error', 'see the error above')}")
        return 1
    try:
        _http(
            http_port,
            f"KILL QUERY WHERE query LIKE '%{_KEEPALIVE_TAG}%' AND query NOT LIKE '%KILL QUERY%' SYNC",
            timeout=10,
        )
    except (OSError, urllib.error.URLError) as exc:
        progress(f"clickhouse: could not end the keepalive query: {exc}")
    worker.join(15)
    if worker.is_alive():
        progress("clickhouse: did not shut down within 15s")
        return 1
    progress("clickhouse: stopped")
    return 0


class ClickHouseServer(ManagedProcess):
    """Runs `python -m interlock.devservers clickhouse` as a child; data persists in data_dir."""

    name = "clickhouse"

    def __init__(
        self,
        data_dir: Path,
        http_port: int | None = None,
        *,
        tcp_port: int | None = None,
        python: str = sys.executable,
        startup_timeout: float = 60.0,
    ) -> None:
        super().__init__(data_dir, startup_timeout)
        self.http_port = http_port or free_port()
        self.tcp_port = tcp_port
        self.python = python

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.http_port, self.tcp_port) if self.tcp_port else (self.http_port,)

    def _command(self) -> Sequence[str]:
        cmd = [self.python, "-m", "interlock.devservers", "clickhouse"]
        cmd += ["--http-port", str(self.http_port), "--data", str(self.data_dir)]
        if self.tcp_port:
            cmd += ["--tcp-port", str(self.tcp_port)]
        return cmd

    def _ready(self) -> bool:
        return ping(self.http_port)


__all__ = ["ClickHouseServer", "DevServerError", "ping", "serve_clickhouse"]
