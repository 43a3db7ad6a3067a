"""The ledger in PostgreSQL, for budget replicas that share one store.

Same logic and guarantees as the SQLite ledger (see `ledger.py`): each transaction first
locks the spend rows of every scope it touches, in sorted order, with `SELECT ... FOR
UPDATE`, so reservations against one budget are serialized across all replicas while
unrelated budgets proceed in parallel. READ COMMITTED suffices: every statement after the
lock sees the latest committed spend.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg

from interlock.services.budget.adapters.ledger import ADDED_COLUMNS, SCHEMA, BudgetLedger, Row, Tx, iter_statements

T = TypeVar("T")
# Any constant: serializes schema creation when several replicas start at once.
_SCHEMA_LOCK_ID = 0x1A7E_B0D6


class _PostgresTx:
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def one(self, sql: str, *params: object) -> Row | None:
        row: Row | None = self._conn.execute(sql.replace("?", "%s"), params).fetchone()
        return row

    def all(self, sql: str, *params: object) -> list[Row]:
        return list(self._conn.execute(sql.replace("?", "%s"), params).fetchall())

    def run(self, sql: str, *params: object) -> None:
        self._conn.execute(sql.replace("?", "%s"), params)

    def many(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        with self._conn.cursor() as cursor:
            cursor.executemany(sql.replace("?", "%s"), rows)


class PostgresLedger(BudgetLedger):
    lock_row_suffix = " FOR UPDATE"
    skip_locked_suffix = " FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str) -> None:
        self._conn: psycopg.Connection[Any] = psycopg.connect(url, autocommit=True)
        self._lock = threading.Lock()
        with self._conn.transaction():
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK_ID,))
            schema = SCHEMA.format(int="BIGINT", ts="DOUBLE PRECISION", blob="BYTEA", serial="BIGSERIAL PRIMARY KEY")
            for statement in iter_statements(schema):
                self._conn.execute(statement)
            for table, columns in ADDED_COLUMNS.items():
                for column, decl in columns.items():
                    self._conn.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {decl}")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[Tx]:
        with self._lock, self._conn.transaction():
            yield _PostgresTx(self._conn)

    def _read(self, fn: Callable[[Tx], T]) -> T:
        with self._lock:
            return fn(_PostgresTx(self._conn))

    def _lock_scopes(self, tx: Tx, keys: Sequence[str]) -> None:
        ordered = sorted(set(keys))
        if not ordered:
            return
        # Rows must exist to be locked; inserting in sorted order keeps concurrent inserts deadlock-free.
        for key in ordered:
            tx.run("INSERT INTO spend (scope) VALUES (?) ON CONFLICT (scope) DO NOTHING", key)
        tx.all("SELECT scope FROM spend WHERE scope = ANY(?) ORDER BY scope FOR UPDATE", ordered)
