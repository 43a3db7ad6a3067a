"""The durable ledger in SQLite: keys, budgets, reservations, settled usage, outbox.

Every state change is one IMMEDIATE transaction, so concurrent reservations against one
budget are serialized by SQLite's write lock: the check and the hold are atomic. The outbox
row for a usage event is written in the same transaction as the ledger row, so an event
is published exactly when spend is recorded, even across crashes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from interlock.errors import FailedPreconditionError, NotFoundError
from interlock.services.budget.domain.model import (
    NewApiKey,
    Principal,
    ReservationDecision,
    Scope,
    ScopeSpend,
    decide_reservation,
    new_api_key,
    scopes_of,
    secret_matches,
)
from interlock.services.budget.domain.usage import SettledUsage

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
  key_id TEXT PRIMARY KEY, secret_sha256 BLOB NOT NULL,
  org TEXT NOT NULL, project TEXT NOT NULL, developer TEXT NOT NULL,
  created_at REAL NOT NULL, revoked_at REAL
);
CREATE TABLE IF NOT EXISTS budgets (scope TEXT PRIMARY KEY, limit_nanos INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS spend (
  scope TEXT PRIMARY KEY, committed_nanos INTEGER NOT NULL DEFAULT 0, reserved_nanos INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS reservations (
  request_id TEXT PRIMARY KEY, org TEXT NOT NULL, project TEXT NOT NULL, developer TEXT NOT NULL,
  api_key_id TEXT NOT NULL, amount_nanos INTEGER NOT NULL, state TEXT NOT NULL,
  created_at REAL NOT NULL, expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS reservations_held ON reservations (state, expires_at);
CREATE TABLE IF NOT EXISTS ledger (
  request_id TEXT PRIMARY KEY, org TEXT NOT NULL, project TEXT NOT NULL, developer TEXT NOT NULL,
  api_key_id TEXT NOT NULL, provider TEXT NOT NULL, model TEXT NOT NULL,
  input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, cost_nanos INTEGER NOT NULL,
  committed_at REAL NOT NULL, trace_id TEXT NOT NULL, run_id TEXT NOT NULL, agent TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL UNIQUE,
  headers TEXT NOT NULL, published_at REAL
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (published_at, seq);
"""


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A usage event waiting to be published, with the trace context of its commit."""

    seq: int
    usage: SettledUsage
    headers: list[tuple[str, str]]


class SqliteLedger:
    """Synchronous store; the service calls it from one worker thread."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            return fn(self._db)

    # API keys

    def create_api_key(self, principal: Principal, now: float) -> NewApiKey:
        key = new_api_key()
        with self._tx() as db:
            db.execute(
                "INSERT INTO api_keys (key_id, secret_sha256, org, project, developer, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (key.key_id, key.secret_hash, principal.org, principal.project, principal.developer, now),
            )
        return key

    def authenticate(self, key_id: str, secret: str) -> Principal | None:
        row = self._read(
            lambda db: db.execute(
                "SELECT secret_sha256, org, project, developer FROM api_keys WHERE key_id = ? AND revoked_at IS NULL",
                (key_id,),
            ).fetchone()
        )
        if row is None or not secret_matches(secret, row[0]):
            return None
        return Principal(org=row[1], project=row[2], developer=row[3], api_key_id=key_id)

    # Budgets

    def set_budget(self, scope: Scope, limit_nanos: int) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO budgets (scope, limit_nanos) VALUES (?, ?)"
                " ON CONFLICT (scope) DO UPDATE SET limit_nanos = excluded.limit_nanos",
                (scope.key, limit_nanos),
            )

    def get_spend(self, scope: Scope) -> ScopeSpend:
        return self._read(lambda db: self._spend(db, [scope.key])[0])

    @staticmethod
    def _spend(db: sqlite3.Connection, keys: Sequence[str]) -> list[ScopeSpend]:
        out = []
        for key in keys:
            limit = db.execute("SELECT limit_nanos FROM budgets WHERE scope = ?", (key,)).fetchone()
            spent = db.execute("SELECT committed_nanos, reserved_nanos FROM spend WHERE scope = ?", (key,)).fetchone()
            committed, reserved = spent if spent else (0, 0)
            out.append(ScopeSpend(key, limit[0] if limit else None, committed, reserved))
        return out

    @staticmethod
    def _add_spend(db: sqlite3.Connection, keys: Sequence[str], committed: int, reserved: int) -> None:
        for key in keys:
            db.execute(
                "INSERT INTO spend (scope, committed_nanos, reserved_nanos) VALUES (?, ?, ?)"
                " ON CONFLICT (scope) DO UPDATE SET committed_nanos = committed_nanos + excluded.committed_nanos,"
                " reserved_nanos = reserved_nanos + excluded.reserved_nanos",
                (key, committed, reserved),
            )

    # Reservations

    def reserve(
        self, request_id: str, principal: Principal, amount_nanos: int, ttl_s: float, now: float
    ) -> ReservationDecision:
        keys = [s.key for s in scopes_of(principal)]
        with self._tx() as db:
            existing = db.execute("SELECT state FROM reservations WHERE request_id = ?", (request_id,)).fetchone()
            if existing is not None:
                if existing[0] in ("held", "committed"):
                    return ReservationDecision(True)
                raise FailedPreconditionError(
                    f"request {request_id} was already {existing[0]}; use a new request id", field="request_id"
                )
            decision = decide_reservation(amount_nanos, self._spend(db, keys))
            if not decision.granted:
                return decision
            db.execute(
                "INSERT INTO reservations (request_id, org, project, developer, api_key_id, amount_nanos, state,"
                " created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, 'held', ?, ?)",
                (
                    request_id,
                    principal.org,
                    principal.project,
                    principal.developer,
                    principal.api_key_id,
                    amount_nanos,
                    now,
                    now + ttl_s,
                ),
            )
            self._add_spend(db, keys, 0, amount_nanos)
            return decision

    def commit(self, usage: SettledUsage, headers: Sequence[tuple[str, str]]) -> bool:
        """Settle a held reservation to the actual cost; False when already committed."""
        with self._tx() as db:
            row = db.execute(
                "SELECT state, amount_nanos, org, project, developer, api_key_id FROM reservations"
                " WHERE request_id = ?",
                (usage.request_id,),
            ).fetchone()
            if row is None:
                raise NotFoundError(f"request {usage.request_id} holds no reservation", field="request_id")
            state, amount, org, project, developer, api_key_id = row
            if state == "committed":
                return False
            if state == "released":
                raise FailedPreconditionError(f"request {usage.request_id} was released", field="request_id")
            principal = Principal(org, project, developer, api_key_id)
            keys = [s.key for s in scopes_of(principal)]
            # An expired reservation no longer holds money, but the call did happen: record it.
            self._add_spend(db, keys, usage.cost_nanos, -amount if state == "held" else 0)
            db.execute("UPDATE reservations SET state = 'committed' WHERE request_id = ?", (usage.request_id,))
            db.execute(
                "INSERT INTO ledger (request_id, org, project, developer, api_key_id, provider, model, input_tokens,"
                " output_tokens, cost_nanos, committed_at, trace_id, run_id, agent)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    usage.request_id,
                    org,
                    project,
                    developer,
                    api_key_id,
                    usage.provider,
                    usage.model,
                    usage.input_tokens,
                    usage.output_tokens,
                    usage.cost_nanos,
                    usage.committed_at,
                    usage.trace_id,
                    usage.run_id,
                    usage.agent,
                ),
            )
            db.execute(
                "INSERT INTO outbox (request_id, headers) VALUES (?, ?)",
                (usage.request_id, json.dumps(list(headers))),
            )
            return True

    def release(self, request_id: str) -> bool:
        with self._tx() as db:
            row = db.execute(
                "SELECT state, amount_nanos, org, project, developer FROM reservations WHERE request_id = ?",
                (request_id,),
            ).fetchone()
            if row is None or row[0] != "held":
                return False
            keys = [s.key for s in scopes_of(Principal(row[2], row[3], row[4]))]
            self._add_spend(db, keys, 0, -row[1])
            db.execute("UPDATE reservations SET state = 'released' WHERE request_id = ?", (request_id,))
            return True

    def expire(self, now: float) -> int:
        """Drop held reservations past their expiry (their caller crashed or hung)."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT request_id, amount_nanos, org, project, developer FROM reservations"
                " WHERE state = 'held' AND expires_at <= ?",
                (now,),
            ).fetchall()
            for request_id, amount, org, project, developer in rows:
                keys = [s.key for s in scopes_of(Principal(org, project, developer))]
                self._add_spend(db, keys, 0, -amount)
                db.execute("UPDATE reservations SET state = 'expired' WHERE request_id = ?", (request_id,))
            return len(rows)

    # Outbox

    def pending_events(self, limit: int) -> list[OutboxEntry]:
        rows = self._read(
            lambda db: db.execute(
                "SELECT o.seq, o.headers, l.request_id, l.org, l.project, l.developer, l.api_key_id, l.provider,"
                " l.model, l.input_tokens, l.output_tokens, l.cost_nanos, l.committed_at, l.trace_id, l.run_id,"
                " l.agent FROM outbox o JOIN ledger l ON l.request_id = o.request_id"
                " WHERE o.published_at IS NULL ORDER BY o.seq LIMIT ?",
                (limit,),
            ).fetchall()
        )
        return [
            OutboxEntry(
                seq=r[0],
                headers=[(str(k), str(v)) for k, v in json.loads(r[1])],
                usage=SettledUsage(
                    request_id=r[2],
                    principal=Principal(r[3], r[4], r[5], r[6]),
                    provider=r[7],
                    model=r[8],
                    input_tokens=r[9],
                    output_tokens=r[10],
                    cost_nanos=r[11],
                    committed_at=r[12],
                    trace_id=r[13],
                    run_id=r[14],
                    agent=r[15],
                ),
            )
            for r in rows
        ]

    def mark_published(self, seqs: Sequence[int], now: float) -> None:
        with self._tx() as db:
            db.executemany("UPDATE outbox SET published_at = ? WHERE seq = ?", [(now, s) for s in seqs])

    def ledger_total(self) -> tuple[int, int]:
        """(rows, cost_nanos) of all settled usage."""
        row = self._read(lambda db: db.execute("SELECT count(*), coalesce(sum(cost_nanos), 0) FROM ledger").fetchone())
        return int(row[0]), int(row[1])
