"""The embedded ledger in SQLite.

Every state change is one IMMEDIATE transaction, so all writers (threads, or budget
processes sharing the file) are serialized by SQLite's write lock: the check and the
hold of a reservation are atomic.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from interlock.services.budget.adapters.ledger import (
    ADDED_COLUMNS,
    SCHEMA,
    AlertEntry,
    BudgetLedger,
    OutboxEntry,
    Row,
    Tx,
)
from interlock.spool import prepare_wal_database

T = TypeVar("T")
__all__ = ["AlertEntry", "OutboxEntry", "SqliteLedger"]


class _SqliteTx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def one(self, sql: str, *params: object) -> Row | None:
        row: Row | None = self._db.execute(sql, params).fetchone()
        return row

    def all(self, sql: str, *params: object) -> list[Row]:
        return list(self._db.execute(sql, params).fetchall())

    def run(self, sql: str, *params: object) -> None:
        self._db.execute(sql, params)

    def many(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        self._db.executemany(sql, rows)


class SqliteLedger(BudgetLedger):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
        prepare_wal_database(self._db, (), timeout_s=30)
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(
            SCHEMA.format(int="INTEGER", ts="REAL", blob="BLOB", serial="INTEGER PRIMARY KEY AUTOINCREMENT")
        )
        for table, columns in ADDED_COLUMNS.items():
            present = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
            for column, decl in columns.items():
                if column not in present:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[Tx]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield _SqliteTx(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, fn: Callable[[Tx], T]) -> T:
        with self._lock:
            return fn(_SqliteTx(self._db))

    def _lock_scopes(self, tx: Tx, keys: Sequence[str]) -> None:
        # BEGIN IMMEDIATE already holds the database's single write lock.
        return None
