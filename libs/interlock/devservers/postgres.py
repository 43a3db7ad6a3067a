"""A throwaway PostgreSQL server (Debian's postgresql package) on 127.0.0.1.

PostgreSQL refuses to run as root, so under root the cluster belongs to the `postgres`
system user (made by the Debian package) and its files live in a directory that user
owns; the server is exec'd under that user with setpriv, so its pid is the postmaster's.
Authentication is `trust` on loopback only; the URL names user `interlock`. Under root
the cluster is deleted on stop.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from interlock.devservers._ports import LOOPBACK, free_port
from interlock.devservers._process import DevServerError, ManagedProcess

_SYSTEM_USER = "postgres"
_DB_USER = "interlock"


def find_postgres_bin() -> Path | None:
    """The newest `/usr/lib/postgresql/<version>/bin`, or the folder of `postgres` on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parent.parent.name))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("postgres")
    return Path(on_path).parent if on_path else None


class PostgresServer(ManagedProcess):
    """postgres with fsync on (the ledger's crash tests need real durability) and trust auth on loopback."""

    name = "postgres"

    def __init__(self, data_dir: Path, port: int | None = None, *, startup_timeout: float = 60.0) -> None:
        super().__init__(data_dir, startup_timeout)
        self.port = port or free_port()
        self._bin = find_postgres_bin()
        self._as_root = os.geteuid() == 0
        self._cluster: Path | None = None

    @property
    def url(self) -> str:
        return f"postgresql://{_DB_USER}@{LOOPBACK}:{self.port}/postgres"

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.port,)

    def _as_owner(self, argv: Sequence[str]) -> list[str]:
        if not self._as_root:
            return list(argv)
        return ["setpriv", f"--reuid={_SYSTEM_USER}", f"--regid={_SYSTEM_USER}", "--init-groups", *argv]

    def _prepare(self) -> None:
        if self._bin is None:
            raise DevServerError("postgres: no PostgreSQL binaries found; install them (apt-get install postgresql)")
        if self._cluster is None:
            if self._as_root:
                try:
                    owner = pwd.getpwnam(_SYSTEM_USER)
                except KeyError:
                    raise DevServerError(f"postgres: running as root needs the `{_SYSTEM_USER}` user") from None
                # The session's tmp dirs are private to root; the cluster needs a folder its user can reach.
                self._cluster = Path(tempfile.mkdtemp(prefix="interlock-postgres-"))
                os.chown(self._cluster, owner.pw_uid, owner.pw_gid)
            else:
                self._cluster = self.data_dir / "cluster"
            (self.data_dir / "cluster-path").write_text(str(self._cluster))
        if (self._cluster / "data" / "PG_VERSION").exists():
            return
        result = subprocess.run(
            self._as_owner(
                [
                    str(self._bin / "initdb"),
                    "-D",
                    str(self._cluster / "data"),
                    "-U",
                    _DB_USER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-instructions",
                ]
            ),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise DevServerError(f"postgres: initdb failed: {result.stderr.strip()[-2000:]}")

    def _command(self) -> Sequence[str]:
        assert self._bin is not None and self._cluster is not None
        return self._as_owner(
            [
                str(self._bin / "postgres"),
                "-D",
                str(self._cluster / "data"),
                "-h",
                LOOPBACK,
                "-p",
                str(self.port),
                "-k",
                str(self._cluster),
                "-c",
                "max_connections=200",
            ]
        )

    def _ready(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.url, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def stop(self, timeout: float = 20.0) -> None:
        # SIGTERM is postgres' "smart" shutdown that waits for every client; SIGINT is "fast".
        if self.running and self.pid is not None:
            os.kill(self.pid, signal.SIGINT)
            try:
                assert self._proc is not None
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        super().stop(timeout)
        if self._cluster is not None and self._as_root:
            # The cluster folder outside data_dir is a private temp dir: throwaway, like the server.
            shutil.rmtree(self._cluster, ignore_errors=True)
            self._cluster = None
