"""The durable ledger's logic in SQL, shared by the SQLite and PostgreSQL stores.

Keys, budgets, per-scope spend (lifetime, per window, held), reservations, settled usage
and the outbox of usage and alert events. Every state change is one transaction that
first locks the spend rows of every scope it touches (in sorted order, so it cannot
deadlock): the check and the hold of a reservation are atomic across any number of
budget replicas sharing the database. Outbox rows are written in the same transaction
as the spend they report, so an event is published exactly when spend is recorded.

Subclasses supply the connection, the transaction and the row lock (`_Tx`, `_lock_scopes`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from interlock.errors import FailedPreconditionError, NotFoundError
from interlock.services.budget.domain.model import (
    BudgetPolicy,
    LeaseChange,
    LeaseState,
    NewApiKey,
    Principal,
    ReservationDecision,
    Scope,
    ScopeKind,
    ScopeSpend,
    crossed_thresholds,
    decide_reservation,
    lease_growth,
    new_api_key,
    scope_keys,
    scopes_of,
    secret_matches,
)
from interlock.services.budget.domain.usage import BudgetAlert, SettledUsage
from interlock.services.budget.domain.window import NO_WINDOW, Window, window_span

T = TypeVar("T")
Row = tuple[Any, ...]

# {int} 64-bit integer, {ts} Unix seconds as a double, {blob} bytes, {serial} auto-increment key.
SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
  key_id TEXT PRIMARY KEY, secret_sha256 {blob} NOT NULL,
  org TEXT NOT NULL, project TEXT NOT NULL, developer TEXT NOT NULL,
  created_at {ts} NOT NULL, revoked_at {ts}
);
CREATE TABLE IF NOT EXISTS budgets (scope TEXT PRIMARY KEY, limit_nanos {int} NOT NULL);
CREATE TABLE IF NOT EXISTS spend (
  scope TEXT PRIMARY KEY, committed_nanos {int} NOT NULL DEFAULT 0, reserved_nanos {int} NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS window_spend (
  scope TEXT NOT NULL, window_start {ts} NOT NULL, committed_nanos {int} NOT NULL DEFAULT 0,
  PRIMARY KEY (scope, window_start)
);
CREATE TABLE IF NOT EXISTS reservations (
  request_id TEXT PRIMARY KEY, org TEXT NOT NULL, project TEXT NOT NULL, developer TEXT NOT NULL,
  api_key_id TEXT NOT NULL, amount_nanos {int} NOT NULL, state TEXT NOT NULL,
  created_at {ts} NOT NULL, expires_at {ts} NOT NULL
);
CREATE INDEX IF NOT EXISTS reservations_held ON reservations (state, expires_at);
CREATE TABLE IF NOT EXISTS ledger (
  request_id TEXT PRIMARY KEY, org TEXT NOT NULL, project TEXT NOT NULL, developer TEXT NOT NULL,
  api_key_id TEXT NOT NULL, provider TEXT NOT NULL, model TEXT NOT NULL,
  input_tokens {int} NOT NULL, output_tokens {int} NOT NULL, cost_nanos {int} NOT NULL,
  committed_at {ts} NOT NULL, trace_id TEXT NOT NULL, run_id TEXT NOT NULL, agent TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_project_time ON ledger (org, project, committed_at);
CREATE TABLE IF NOT EXISTS outbox (
  seq {serial}, request_id TEXT NOT NULL UNIQUE,
  headers TEXT NOT NULL, published_at {ts}
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (published_at, seq);
CREATE TABLE IF NOT EXISTS alerts (
  alert_id TEXT PRIMARY KEY, scope TEXT NOT NULL, threshold_pct {int} NOT NULL, limit_nanos {int} NOT NULL,
  committed_nanos {int} NOT NULL, window_kind TEXT NOT NULL, window_start {ts} NOT NULL, reset_at {ts} NOT NULL,
  request_id TEXT NOT NULL, occurred_at {ts} NOT NULL, headers TEXT NOT NULL, published_at {ts}
);
CREATE INDEX IF NOT EXISTS alerts_pending ON alerts (published_at, occurred_at);
CREATE TABLE IF NOT EXISTS leases (
  lease_id TEXT PRIMARY KEY, org TEXT NOT NULL, project TEXT NOT NULL, developer TEXT NOT NULL,
  api_key_id TEXT NOT NULL, granted_nanos {int} NOT NULL, consumed_nanos {int} NOT NULL, seq {int} NOT NULL,
  state TEXT NOT NULL, created_at {ts} NOT NULL, expires_at {ts} NOT NULL
);
CREATE INDEX IF NOT EXISTS leases_active ON leases (state, expires_at);
"""
# Columns added to `budgets` after its first release; older ledgers gain them on open.
BUDGET_COLUMNS = {
    "window_kind": "TEXT NOT NULL DEFAULT 'none'",
    "time_zone": "TEXT NOT NULL DEFAULT 'UTC'",
    "thresholds": "TEXT NOT NULL DEFAULT ''",
}
ADDED_COLUMNS = {
    "budgets": BUDGET_COLUMNS,
    # Usage details that ride along to the usage event (config version, cache and reasoning
    # tokens, latency): JSON, so new details need no schema change.
    "ledger": {"details": "TEXT NOT NULL DEFAULT '{}'"},
}


class Tx(Protocol):
    """One open transaction (or read) on the store; SQL uses `?` placeholders."""

    def one(self, sql: str, *params: object) -> Row | None: ...

    def all(self, sql: str, *params: object) -> list[Row]: ...

    def run(self, sql: str, *params: object) -> None: ...

    def many(self, sql: str, rows: Sequence[Sequence[object]]) -> None:
        """`run` once per row, the statement prepared once."""
        ...


_INSERT_USAGE = (
    "INSERT INTO ledger (request_id, org, project, developer, api_key_id, provider, model, input_tokens,"
    " output_tokens, cost_nanos, committed_at, trace_id, run_id, agent, details)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_OUTBOX = "INSERT INTO outbox (request_id, headers) VALUES (?, ?)"


def _usage_row(usage: SettledUsage, payer: Principal) -> tuple[object, ...]:
    """The `ledger` row of a settled call (`_INSERT_USAGE`'s parameters)."""
    return (
        usage.request_id,
        payer.org,
        payer.project,
        payer.developer,
        payer.api_key_id,
        usage.provider,
        usage.model,
        usage.input_tokens,
        usage.output_tokens,
        usage.cost_nanos,
        usage.committed_at,
        usage.trace_id,
        usage.run_id,
        usage.agent,
        json.dumps(usage.details, sort_keys=True),
    )


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A usage event waiting to be published, with the trace context of its commit."""

    seq: int
    usage: SettledUsage
    headers: list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class AlertEntry:
    """An alert event waiting to be published."""

    alert: BudgetAlert
    headers: list[tuple[str, str]]


def _scope_filter(key: str) -> tuple[str, list[str]]:
    """SQL condition on ledger columns selecting the rows a scope key covers."""
    kind, _, path = key.partition(":")
    columns = {
        ScopeKind.ORG.value: ["org"],
        ScopeKind.PROJECT.value: ["org", "project"],
        ScopeKind.DEVELOPER.value: ["org", "project", "developer"],
        ScopeKind.API_KEY.value: ["org", "project", "developer", "api_key_id"],
    }[kind]
    return " AND ".join(f"{c} = ?" for c in columns), path.split("/")


class BudgetLedger:
    """Synchronous store; the service calls it from one worker thread."""

    lock_row_suffix = ""
    """Appended to a SELECT of a reservation that is about to change (`FOR UPDATE` where rows lock)."""

    def _tx(self) -> AbstractContextManager[Tx]:
        raise NotImplementedError

    def _read(self, fn: Callable[[Tx], T]) -> T:
        raise NotImplementedError

    def _lock_scopes(self, tx: Tx, keys: Sequence[str]) -> None:
        """Serialize every writer of these scopes until the transaction ends."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # API keys

    def create_api_key(self, principal: Principal, now: float) -> NewApiKey:
        key = new_api_key()
        with self._tx() as tx:
            tx.run(
                "INSERT INTO api_keys (key_id, secret_sha256, org, project, developer, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                key.key_id,
                key.secret_hash,
                principal.org,
                principal.project,
                principal.developer,
                now,
            )
        return key

    def authenticate(self, key_id: str, secret: str) -> Principal | None:
        row = self._read(
            lambda tx: tx.one(
                "SELECT secret_sha256, org, project, developer FROM api_keys WHERE key_id = ? AND revoked_at IS NULL",
                key_id,
            )
        )
        if row is None or not secret_matches(secret, bytes(row[0])):
            return None
        return Principal(org=row[1], project=row[2], developer=row[3], api_key_id=key_id)

    # Budgets

    def set_budget(self, scope: Scope, policy: BudgetPolicy, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._tx() as tx:
            self._lock_scopes(tx, [scope.key])
            tx.run(
                "INSERT INTO budgets (scope, limit_nanos, window_kind, time_zone, thresholds) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (scope) DO UPDATE SET limit_nanos = excluded.limit_nanos,"
                " window_kind = excluded.window_kind, time_zone = excluded.time_zone,"
                " thresholds = excluded.thresholds",
                scope.key,
                policy.limit_nanos,
                policy.window.value,
                policy.time_zone,
                ",".join(str(t) for t in policy.alert_thresholds_pct),
            )
            if policy.window is not Window.NONE:
                # Window rows are kept only for budgets that have a window; a budget set (or
                # changed) mid-window starts from what the ledger already holds for it.
                span = window_span(policy.window, policy.time_zone, now)
                where, args = _scope_filter(scope.key)
                row = tx.one(
                    f"SELECT coalesce(sum(cost_nanos), 0) FROM ledger WHERE {where}"
                    " AND committed_at >= ? AND committed_at < ?",
                    *args,
                    span.start,
                    span.reset_at,
                )
                tx.run(
                    "INSERT INTO window_spend (scope, window_start, committed_nanos) VALUES (?, ?, ?)"
                    " ON CONFLICT (scope, window_start) DO UPDATE SET committed_nanos = excluded.committed_nanos",
                    scope.key,
                    span.start,
                    int(row[0]) if row else 0,
                )

    def get_spend(self, scope: Scope, now: float | None = None) -> ScopeSpend:
        now = time.time() if now is None else now
        return self._read(lambda tx: self._spend(tx, [scope.key], now)[0])

    @staticmethod
    def _policies(tx: Tx, keys: Sequence[str]) -> dict[str, BudgetPolicy]:
        out = {}
        for key in keys:
            row = tx.one("SELECT limit_nanos, window_kind, time_zone, thresholds FROM budgets WHERE scope = ?", key)
            if row is not None:
                thresholds = tuple(int(t) for t in str(row[3]).split(",") if t)
                out[key] = BudgetPolicy(int(row[0]), Window(row[1]), str(row[2]), thresholds)
        return out

    @staticmethod
    def _window_committed(tx: Tx, key: str, start: float) -> int:
        row = tx.one("SELECT committed_nanos FROM window_spend WHERE scope = ? AND window_start = ?", key, start)
        return int(row[0]) if row else 0

    def _spend(self, tx: Tx, keys: Sequence[str], now: float) -> list[ScopeSpend]:
        return _Settlement(self, tx, keys).spend(keys, now)

    @staticmethod
    def _add_spend(tx: Tx, keys: Sequence[str], committed: int, reserved: int) -> None:
        for key in keys:
            tx.run(
                "INSERT INTO spend (scope, committed_nanos, reserved_nanos) VALUES (?, ?, ?)"
                " ON CONFLICT (scope) DO UPDATE SET committed_nanos = spend.committed_nanos + excluded.committed_nanos,"
                " reserved_nanos = spend.reserved_nanos + excluded.reserved_nanos",
                key,
                committed,
                reserved,
            )

    # Reservations

    def reserve(
        self, request_id: str, principal: Principal, amount_nanos: int, ttl_s: float, now: float
    ) -> ReservationDecision:
        keys = list(scope_keys(principal))
        with self._tx() as tx:
            self._lock_scopes(tx, keys)
            existing = tx.one("SELECT state FROM reservations WHERE request_id = ?", request_id)
            if existing is not None:
                if existing[0] in ("held", "committed"):
                    return ReservationDecision(True)
                raise FailedPreconditionError(
                    f"request {request_id} was already {existing[0]}; use a new request id", field="request_id"
                )
            decision = decide_reservation(amount_nanos, self._spend(tx, keys, now))
            if not decision.granted:
                return decision
            tx.run(
                "INSERT INTO reservations (request_id, org, project, developer, api_key_id, amount_nanos, state,"
                " created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, 'held', ?, ?)",
                request_id,
                principal.org,
                principal.project,
                principal.developer,
                principal.api_key_id,
                amount_nanos,
                now,
                now + ttl_s,
            )
            self._add_spend(tx, keys, 0, amount_nanos)
            return decision

    def commit(self, usage: SettledUsage, headers: Sequence[tuple[str, str]], lease_id: str = "") -> bool:
        """Settle a call to its actual cost; False when already committed.

        Without `lease_id` the call's own held reservation is settled; with one, the cost is
        taken out of that lease's hold (see `lease`)."""
        return self.commit_many([(usage, headers, lease_id)])[0]

    def commit_many(self, items: Sequence[tuple[SettledUsage, Sequence[tuple[str, str]], str]]) -> list[bool]:
        """Settle several calls in one transaction; a failing one fails them all.

        The calls are settled in order, with the same outcome (spend, windows, leases, alerts)
        as one by one, but each scope's spend and window and each lease is read and written
        once per batch rather than once per call, the calls under leases are claimed in one
        statement, and the usage rows are written in two (ledger, outbox).

        Lock order, here as everywhere: reservation rows, then scope rows (sorted), then lease rows."""
        with self._tx() as tx:
            claimed = self._claim_lease_commits(tx, items)
            encoded: dict[int, str] = {}  # one encoding per headers list (a batch's commits share one)
            plans: list[tuple[SettledUsage, str, str, Principal, int | None] | None] = []
            for usage, headers, lease_id in items:
                claim = claimed.pop(usage.request_id, None) if lease_id else self._claim_commit(tx, usage)
                if claim is None:
                    plans.append(None)
                    continue
                headers_json = encoded.get(id(headers))
                if headers_json is None:
                    headers_json = encoded[id(headers)] = json.dumps(list(headers))
                plans.append((usage, headers_json, lease_id, *claim))
            keys_all = sorted({key for p in plans if p is not None for key in scope_keys(p[3])})
            self._lock_scopes(tx, keys_all)
            batch = _Settlement(self, tx, keys_all)
            usage_rows: list[tuple[object, ...]] = []
            outbox_rows: list[tuple[str, str]] = []
            for plan in plans:
                if plan is None:
                    continue
                usage, headers_json, lease_id, principal, held = plan
                keys = list(scope_keys(principal))
                self._count_and_alert(tx, batch, keys, usage, headers_json)
                if lease_id:
                    held = batch.consume_lease(lease_id, usage.cost_nanos)
                else:
                    tx.run("UPDATE reservations SET state = 'committed' WHERE request_id = ?", usage.request_id)
                # An expired reservation or lease no longer holds money, but the call did happen: record it.
                batch.add_spend(keys, usage.cost_nanos, -(held or 0))
                usage_rows.append(_usage_row(usage, principal))
                outbox_rows.append((usage.request_id, headers_json))
            if usage_rows:
                tx.many(_INSERT_USAGE, usage_rows)
                tx.many(_INSERT_OUTBOX, outbox_rows)
            batch.write()
            return [plan is not None for plan in plans]

    def _claim_lease_commits(
        self, tx: Tx, items: Sequence[tuple[SettledUsage, Sequence[tuple[str, str]], str]]
    ) -> dict[str, tuple[Principal, None]]:
        """Claim, in one statement, the calls of a batch settled under leases: request id ->
        (payer, None) for each claimed here, absent when already committed (a replay) or
        repeated earlier in the batch. The call's row in `reservations` is what makes a
        replayed commit a no-op."""
        first: dict[str, tuple[SettledUsage, str]] = {}
        for usage, _, lease_id in items:
            if lease_id and usage.request_id not in first:
                first[usage.request_id] = (usage, lease_id)
        if not first:
            return {}
        lease_ids = sorted({lease_id for _, lease_id in first.values()})
        owners = {
            row[0]: tuple(row[1:])
            for row in tx.all(
                "SELECT lease_id, org, project, developer, api_key_id FROM leases WHERE lease_id IN ("
                + ", ".join("?" * len(lease_ids))
                + ")",
                *lease_ids,
            )
        }
        params: list[object] = []
        for usage, lease_id in first.values():
            owner = owners.get(lease_id)
            if owner is None:
                raise NotFoundError(f"lease {lease_id} does not exist", field="lease_id")
            params += (usage.request_id, *owner, usage.cost_nanos, usage.committed_at, usage.committed_at)
        rows = tx.all(
            "INSERT INTO reservations (request_id, org, project, developer, api_key_id, amount_nanos, state,"
            " created_at, expires_at) VALUES "
            + ", ".join(["(?, ?, ?, ?, ?, ?, 'committed', ?, ?)"] * len(first))
            + " ON CONFLICT (request_id) DO NOTHING RETURNING request_id",
            *params,
        )
        return {row[0]: (Principal(*owners[first[row[0]][1]]), None) for row in rows}

    def _claim_commit(self, tx: Tx, usage: SettledUsage) -> tuple[Principal, int | None] | None:
        """(payer, nanos its reservation holds) of a call reserved exactly; None when already committed."""
        row = tx.one(
            "SELECT state, amount_nanos, org, project, developer, api_key_id FROM reservations"
            " WHERE request_id = ?" + self.lock_row_suffix,
            usage.request_id,
        )
        if row is None:
            raise NotFoundError(f"request {usage.request_id} holds no reservation", field="request_id")
        state, amount, org, project, developer, api_key_id = row
        if state == "committed":
            return None
        if state == "released":
            raise FailedPreconditionError(f"request {usage.request_id} was released", field="request_id")
        return Principal(org, project, developer, api_key_id), int(amount) if state == "held" else None

    # Leases

    def lease(
        self,
        lease_id: str,
        principal: Principal,
        seq: int,
        change: LeaseChange,
        ttl_s: float,
        now: float,
        max_share: float,
    ) -> LeaseState:
        """Open, grow, shrink or close a lease: a prepaid slice of every budget above `principal`.

        What a lease holds (granted minus consumed) counts as reserved spend of each scope, so
        a lease only grows into room that no reservation or other lease holds: the total
        leased never exceeds what remains. Idempotent by (lease_id, seq)."""
        keys = list(scope_keys(principal))
        with self._tx() as tx:
            owner = tx.one("SELECT org, project, developer, api_key_id FROM leases WHERE lease_id = ?", lease_id)
            if owner is not None and Principal(*owner) != principal:
                raise FailedPreconditionError(f"lease {lease_id} belongs to another principal", field="principal")
            self._lock_scopes(tx, keys)
            row = tx.one(
                "SELECT granted_nanos, consumed_nanos, seq, state, expires_at FROM leases WHERE lease_id = ?"
                + self.lock_row_suffix,
                lease_id,
            )
            if row is None:
                tx.run(
                    "INSERT INTO leases (lease_id, org, project, developer, api_key_id, granted_nanos, consumed_nanos,"
                    " seq, state, created_at, expires_at) VALUES (?, ?, ?, ?, ?, 0, 0, -1, 'active', ?, ?)",
                    lease_id,
                    principal.org,
                    principal.project,
                    principal.developer,
                    principal.api_key_id,
                    now,
                    now + ttl_s,
                )
                row = (0, 0, -1, "active", now + ttl_s)
            granted, consumed, last_seq, state, expires_at = int(row[0]), int(row[1]), int(row[2]), row[3], row[4]
            if seq <= last_seq:
                return LeaseState(granted, consumed, 0, float(expires_at))
            if state != "active":
                raise FailedPreconditionError(f"lease {lease_id} is {state}; open a new one", field="lease_id")
            unused = max(0, granted - consumed)
            give = unused if change.close else min(max(0, change.return_nanos), unused)
            self._add_spend(tx, keys, 0, -give)
            added, limiting = 0, ""
            if not change.close and change.grow_nanos > 0:
                added, limiting = lease_growth(change.grow_nanos, self._spend(tx, keys, now), max_share)
                self._add_spend(tx, keys, 0, added)
            granted += added - give
            tx.run(
                "UPDATE leases SET granted_nanos = ?, seq = ?, state = ?, expires_at = ? WHERE lease_id = ?",
                granted,
                seq,
                "closed" if change.close else "active",
                now + ttl_s,
                lease_id,
            )
            return LeaseState(granted, consumed, added, now + ttl_s, limiting)

    def _count_and_alert(
        self, tx: Tx, batch: _Settlement, keys: Sequence[str], usage: SettledUsage, headers_json: str
    ) -> None:
        """Add the cost to each budgeted scope's current window; write an alert per threshold crossed."""
        now = usage.committed_at
        for spend in batch.spend(keys, now):
            if spend.limit_nanos is None:
                continue
            if spend.window is not Window.NONE:
                batch.add_window(spend.scope_key, spend.span.start, usage.cost_nanos)
            after = spend.committed_nanos + usage.cost_nanos
            for pct in crossed_thresholds(spend.limit_nanos, spend.committed_nanos, after, spend.alert_thresholds_pct):
                alert = BudgetAlert(
                    scope_key=spend.scope_key,
                    threshold_pct=pct,
                    limit_nanos=spend.limit_nanos,
                    committed_nanos=after,
                    window=spend.window,
                    window_start=spend.span.start,
                    reset_at=spend.span.reset_at,
                    request_id=usage.request_id,
                    occurred_at=now,
                )
                tx.run(
                    "INSERT INTO alerts (alert_id, scope, threshold_pct, limit_nanos, committed_nanos, window_kind,"
                    " window_start, reset_at, request_id, occurred_at, headers)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (alert_id) DO NOTHING",
                    alert.alert_id,
                    alert.scope_key,
                    pct,
                    alert.limit_nanos,
                    alert.committed_nanos,
                    alert.window.value,
                    alert.window_start,
                    alert.reset_at,
                    alert.request_id,
                    alert.occurred_at,
                    headers_json,
                )

    def release(self, request_id: str) -> bool:
        with self._tx() as tx:
            row = tx.one(
                "SELECT state, amount_nanos, org, project, developer, api_key_id FROM reservations"
                " WHERE request_id = ?" + self.lock_row_suffix,
                request_id,
            )
            if row is None or row[0] != "held":
                return False
            keys = [s.key for s in scopes_of(Principal(row[2], row[3], row[4], row[5]))]
            self._lock_scopes(tx, keys)
            self._add_spend(tx, keys, 0, -int(row[1]))
            tx.run("UPDATE reservations SET state = 'released' WHERE request_id = ?", request_id)
            return True

    def expire(self, now: float) -> int:
        """Drop held reservations past their expiry (their caller crashed or hung)."""
        with self._tx() as tx:
            rows = tx.all(
                "SELECT request_id, amount_nanos, org, project, developer, api_key_id FROM reservations"
                " WHERE state = 'held' AND expires_at <= ? ORDER BY request_id" + self.skip_locked_suffix,
                now,
            )
            keys_of = {r[0]: [s.key for s in scopes_of(Principal(r[2], r[3], r[4], r[5]))] for r in rows}
            self._lock_scopes(tx, sorted({k for keys in keys_of.values() for k in keys}))
            for request_id, amount, *_ in rows:
                self._add_spend(tx, keys_of[request_id], 0, -int(amount))
                tx.run("UPDATE reservations SET state = 'expired' WHERE request_id = ?", request_id)
        # Leases in a transaction of their own: scope locks are taken once, in sorted order.
        with self._tx() as tx:
            return len(rows) + self._expire_leases(tx, now)

    def _expire_leases(self, tx: Tx, now: float) -> int:
        """Give back the unused hold of leases whose holder stopped renewing them."""
        due = tx.all(
            "SELECT lease_id, org, project, developer, api_key_id FROM leases"
            " WHERE state = 'active' AND expires_at <= ? ORDER BY lease_id",
            now,
        )
        keys_of = {r[0]: [s.key for s in scopes_of(Principal(r[1], r[2], r[3], r[4]))] for r in due}
        self._lock_scopes(tx, sorted({k for keys in keys_of.values() for k in keys}))
        expired = 0
        for lease_id, keys in keys_of.items():
            # Re-read under the row lock: the holder may have renewed it meanwhile.
            row = tx.one(
                "SELECT granted_nanos, consumed_nanos FROM leases"
                " WHERE lease_id = ? AND state = 'active' AND expires_at <= ?" + self.lock_row_suffix,
                lease_id,
                now,
            )
            if row is None:
                continue
            self._add_spend(tx, keys, 0, -max(0, int(row[0]) - int(row[1])))
            tx.run("UPDATE leases SET state = 'expired' WHERE lease_id = ?", lease_id)
            expired += 1
        return expired

    def held_leases(self, now: float) -> tuple[int, int, int]:
        """(active leases, of which past their expiry, nanos they hold unused); for checks after a crash."""
        row = self._read(
            lambda tx: tx.one(
                "SELECT count(*), coalesce(sum(CASE WHEN expires_at <= ? THEN 1 ELSE 0 END), 0),"
                " coalesce(sum(CASE WHEN granted_nanos > consumed_nanos THEN granted_nanos - consumed_nanos"
                " ELSE 0 END), 0) FROM leases WHERE state = 'active'",
                now,
            )
        )
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2])

    skip_locked_suffix = ""
    """Appended to the expiry scan (`FOR UPDATE SKIP LOCKED` where replicas expire concurrently)."""

    # Outbox

    def pending_events(self, limit: int) -> list[OutboxEntry]:
        rows = self._read(
            lambda tx: tx.all(
                "SELECT o.seq, o.headers, l.request_id, l.org, l.project, l.developer, l.api_key_id, l.provider,"
                " l.model, l.input_tokens, l.output_tokens, l.cost_nanos, l.committed_at, l.trace_id, l.run_id,"
                " l.agent, l.details FROM outbox o JOIN ledger l ON l.request_id = o.request_id"
                " WHERE o.published_at IS NULL ORDER BY o.seq LIMIT ?",
                limit,
            )
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
                    details=json.loads(r[16] or "{}"),
                ),
            )
            for r in rows
        ]

    def mark_published(self, seqs: Sequence[int], now: float) -> None:
        with self._tx() as tx:
            for seq in seqs:
                tx.run("UPDATE outbox SET published_at = ? WHERE seq = ?", now, seq)

    def pending_alerts(self, limit: int) -> list[AlertEntry]:
        rows = self._read(
            lambda tx: tx.all(
                "SELECT alert_id, scope, threshold_pct, limit_nanos, committed_nanos, window_kind, window_start,"
                " reset_at, request_id, occurred_at, headers FROM alerts WHERE published_at IS NULL"
                " ORDER BY occurred_at, scope, threshold_pct LIMIT ?",
                limit,
            )
        )
        return [
            AlertEntry(
                alert=BudgetAlert(
                    scope_key=r[1],
                    threshold_pct=int(r[2]),
                    limit_nanos=int(r[3]),
                    committed_nanos=int(r[4]),
                    window=Window(r[5]),
                    window_start=float(r[6]),
                    reset_at=float(r[7]),
                    request_id=r[8],
                    occurred_at=float(r[9]),
                ),
                headers=[(str(k), str(v)) for k, v in json.loads(r[10])],
            )
            for r in rows
        ]

    def mark_alerts_published(self, alert_ids: Sequence[str], now: float) -> None:
        with self._tx() as tx:
            for alert_id in alert_ids:
                tx.run("UPDATE alerts SET published_at = ? WHERE alert_id = ?", now, alert_id)

    def ledger_total(self) -> tuple[int, int]:
        """(rows, cost_nanos) of all settled usage."""
        row = self._read(lambda tx: tx.one("SELECT count(*), coalesce(sum(cost_nanos), 0) FROM ledger"))
        assert row is not None
        return int(row[0]), int(row[1])

    def held_reservations(self, now: float) -> tuple[int, int]:
        """(held, of which past their expiry) reservations; for checks after a crash."""
        row = self._read(
            lambda tx: tx.one(
                "SELECT count(*), coalesce(sum(CASE WHEN expires_at <= ? THEN 1 ELSE 0 END), 0)"
                " FROM reservations WHERE state = 'held'",
                now,
            )
        )
        assert row is not None
        return int(row[0]), int(row[1])


def iter_statements(schema: str) -> Iterator[str]:
    """The statements of a schema script, one at a time."""
    for statement in schema.split(";"):
        if statement.strip():
            yield statement.strip()


class _Settlement:
    """The spend, window and lease rows a batch of commits changes, read once each (the
    scope rows locked by the caller, lease rows locked here on first use) and kept up to date
    in memory as the batch's calls are settled in order; `write` stores them."""

    def __init__(self, ledger: BudgetLedger, tx: Tx, keys: Sequence[str]) -> None:
        self._ledger = ledger
        self._tx = tx
        self._policies = ledger._policies(tx, keys)
        self._spent: dict[str, list[int]] = {}
        """scope -> [committed, reserved] as the batch has made them so far."""
        self._spend_delta: dict[str, list[int]] = {}
        self._windows: dict[tuple[str, float], int] = {}
        self._window_delta: dict[tuple[str, float], int] = {}
        self._leases: dict[str, list[Any]] = {}
        """lease id -> [granted, consumed, state]; consumed as the batch has made it so far."""

    def _spent_of(self, key: str) -> list[int]:
        spent = self._spent.get(key)
        if spent is None:
            row = self._tx.one("SELECT committed_nanos, reserved_nanos FROM spend WHERE scope = ?", key)
            spent = self._spent[key] = [int(row[0]), int(row[1])] if row else [0, 0]
        return spent

    def _window_of(self, key: str, start: float) -> int:
        committed = self._windows.get((key, start))
        if committed is None:
            committed = self._windows[(key, start)] = self._ledger._window_committed(self._tx, key, start)
        return committed

    def spend(self, keys: Sequence[str], now: float) -> list[ScopeSpend]:
        """Each scope's limit and spend (in its window at `now`) as the batch has made them so far."""
        out = []
        for key in keys:
            committed, reserved = self._spent_of(key)
            policy = self._policies.get(key)
            if policy is None:
                out.append(ScopeSpend(key, None, committed, reserved))
                continue
            span = NO_WINDOW
            if policy.window is not Window.NONE:
                span = window_span(policy.window, policy.time_zone, now)
                committed = self._window_of(key, span.start)
            out.append(
                ScopeSpend(
                    key,
                    policy.limit_nanos,
                    committed,
                    reserved,
                    policy.window,
                    policy.time_zone,
                    span,
                    policy.alert_thresholds_pct,
                )
            )
        return out

    def add_window(self, key: str, start: float, nanos: int) -> None:
        self._windows[(key, start)] = self._window_of(key, start) + nanos
        self._window_delta[(key, start)] = self._window_delta.get((key, start), 0) + nanos

    def add_spend(self, keys: Sequence[str], committed: int, reserved: int) -> None:
        for key in keys:
            spent = self._spent_of(key)
            spent[0] += committed
            spent[1] += reserved
            delta = self._spend_delta.setdefault(key, [0, 0])
            delta[0] += committed
            delta[1] += reserved

    def consume_lease(self, lease_id: str, cost_nanos: int) -> int:
        """Count a call's cost against its lease; returns the nanos of hold that cost used up."""
        lease = self._leases.get(lease_id)
        if lease is None:
            row = self._tx.one(
                "SELECT granted_nanos, consumed_nanos, state FROM leases WHERE lease_id = ?"
                + self._ledger.lock_row_suffix,
                lease_id,
            )
            assert row is not None  # checked by _claim_lease_commits in this transaction
            lease = self._leases[lease_id] = [int(row[0]), int(row[1]), row[2]]
        granted, consumed, state = lease
        lease[1] = consumed + cost_nanos
        # Only an active lease still holds its unused part; a closed or expired one gave it back.
        return min(cost_nanos, max(0, granted - consumed)) if state == "active" else 0

    def write(self) -> None:
        for (key, start), nanos in self._window_delta.items():
            self._tx.run(
                "INSERT INTO window_spend (scope, window_start, committed_nanos) VALUES (?, ?, ?)"
                " ON CONFLICT (scope, window_start) DO UPDATE"
                " SET committed_nanos = window_spend.committed_nanos + excluded.committed_nanos",
                key,
                start,
                nanos,
            )
        for key, (committed, reserved) in self._spend_delta.items():
            self._ledger._add_spend(self._tx, [key], committed, reserved)
        for lease_id, (_, consumed, _) in self._leases.items():
            self._tx.run("UPDATE leases SET consumed_nanos = ? WHERE lease_id = ?", consumed, lease_id)
