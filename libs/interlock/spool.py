"""A local durable spool that stands in for Kafka in embedded mode.

One SQLite file (WAL mode) holds an append-only log of records and, per consumer group,
the offset of the last record it has processed. The budget process appends usage events
and trace-ingest reads and commits them; both open the same file, so every write waits on
the other process's lock (busy_timeout) instead of failing. `append` returns only after
the record is on disk (synchronous=FULL), and a committed offset survives a crash: after a
restart a group reads exactly the records after its last commit (at-least-once).

One consumer per group: the spool has no partitions to share between consumers.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

_BUSY_TIMEOUT_MS = 10_000
_SCHEMA = (
    # AUTOINCREMENT keeps offsets growing even after pruning, so an offset is never reused.
    "CREATE TABLE IF NOT EXISTS records ("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " key TEXT NOT NULL,"
    " value BLOB NOT NULL,"
    " headers TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS group_offsets (group_name TEXT PRIMARY KEY, committed INTEGER NOT NULL)",
)


@dataclass(frozen=True)
class SpoolRecord:
    """One record of the spool, as appended."""

    offset: int
    """Position in the spool; strictly increasing, never reused."""
    key: str
    value: bytes
    headers: tuple[tuple[str, bytes], ...]
    """Record headers (e.g. W3C `traceparent`), in append order."""


class SpoolClosedError(RuntimeError):
    """The spool was used after `close()`."""


def prepare_wal_database(conn: sqlite3.Connection, schema: Sequence[str], timeout_s: float) -> None:
    """Switch a database to WAL and create its schema, also while other processes do the same.

    Changing the journal mode of a new file needs an exclusive lock and SQLite may report
    "database is locked" at once, without waiting in its busy handler, when another
    connection is initialising the same file; so retry until the busy timeout.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            for statement in schema:
                conn.execute(statement)
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class UsageSpool:
    """The spool file at `path`; safe to open from several processes at once."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        # One worker thread owns the connection: sqlite3 objects stay on one thread and
        # calls from one process are serialized without a lock.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="interlock-spool")
        self._local = threading.local()
        self._closed = False

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: every statement commits by itself; writes are single statements.
            conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            # FULL: in WAL mode NORMAL may lose the last commits on power loss; append promises durability.
            conn.execute("PRAGMA synchronous = FULL")
            prepare_wal_database(conn, _SCHEMA, _BUSY_TIMEOUT_MS / 1000)
            self._local.conn = conn
        return conn

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise SpoolClosedError(f"spool {self.path} is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: work(self._connection()))

    async def append(self, key: str, value: bytes, headers: Sequence[tuple[str, bytes]] = ()) -> int:
        """Append one record; returns its offset once it is durable on disk."""
        encoded = _encode_headers(headers)

        def work(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "INSERT INTO records (key, value, headers) VALUES (?, ?, ?)", (key, bytes(value), encoded)
            )
            assert cursor.lastrowid is not None
            return cursor.lastrowid

        return await self._run(work)

    async def append_many(self, records: Sequence[tuple[str, bytes, Sequence[tuple[str, bytes]]]]) -> list[int]:
        """Append (key, value, headers) records in one transaction; their offsets once durable."""
        rows = [(key, bytes(value), _encode_headers(headers)) for key, value, headers in records]
        if not rows:
            return []

        def work(conn: sqlite3.Connection) -> list[int]:
            offsets: list[int] = []
            # One fsync for the batch; a crash leaves all of it or none (at-least-once upstream).
            conn.execute("BEGIN IMMEDIATE")
            try:
                for row in rows:
                    cursor = conn.execute("INSERT INTO records (key, value, headers) VALUES (?, ?, ?)", row)
                    assert cursor.lastrowid is not None
                    offsets.append(cursor.lastrowid)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return offsets

        return await self._run(work)

    async def read(self, group: str, max_records: int) -> list[SpoolRecord]:
        """Up to `max_records` records after `group`'s committed offset, oldest first."""

        def work(conn: sqlite3.Connection) -> list[SpoolRecord]:
            rows = conn.execute(
                "SELECT seq, key, value, headers FROM records"
                " WHERE seq > COALESCE((SELECT committed FROM group_offsets WHERE group_name = ?), 0)"
                " ORDER BY seq LIMIT ?",
                (group, max_records),
            ).fetchall()
            return [SpoolRecord(int(s), str(k), bytes(v), _decode_headers(str(h))) for s, k, v, h in rows]

        return await self._run(work)

    async def commit(self, group: str, offset: int) -> None:
        """Mark every record up to and including `offset` as processed by `group`."""

        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO group_offsets (group_name, committed) VALUES (?, ?)"
                " ON CONFLICT (group_name) DO UPDATE SET committed = excluded.committed",
                (group, offset),
            )

        await self._run(work)

    async def committed(self, group: str) -> int:
        """The offset `group` last committed, 0 when it never did."""

        def work(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT committed FROM group_offsets WHERE group_name = ?", (group,)).fetchone()
            return int(row[0]) if row else 0

        return await self._run(work)

    async def prune(self) -> int:
        """Delete records every known group has committed; returns how many were deleted.

        Only a consumer should call this: a group that has never committed is unknown, so
        records must not be pruned before the consumer group first commits.
        """

        def work(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "DELETE FROM records WHERE seq <= (SELECT MIN(committed) FROM group_offsets)"
                " AND EXISTS (SELECT 1 FROM group_offsets)"
            )
            return cursor.rowcount

        return await self._run(work)

    def close(self) -> None:
        """Close the file; pending calls finish first. Idempotent."""
        if self._closed:
            return
        self._closed = True

        def work() -> None:
            conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
            if conn is not None:
                conn.close()
                self._local.conn = None

        self._executor.submit(work).result()
        self._executor.shutdown(wait=True)


def _encode_headers(headers: Sequence[tuple[str, bytes]]) -> str:
    return json.dumps([[name, bytes(value).hex()] for name, value in headers])


def _decode_headers(raw: str) -> tuple[tuple[str, bytes], ...]:
    return tuple((str(name), bytes.fromhex(value)) for name, value in json.loads(raw))


__all__ = ["SpoolClosedError", "SpoolRecord", "UsageSpool"]
