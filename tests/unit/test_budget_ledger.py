"""The SQLite ledger: hard limits under concurrency, idempotency, expiry, outbox."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from interlock.errors import FailedPreconditionError, NotFoundError
from interlock.services.budget.adapters.sqlite_ledger import SqliteLedger
from interlock.services.budget.domain.model import (
    Principal,
    Scope,
    ScopeKind,
    ScopeSpend,
    decide_reservation,
    split_api_key,
)
from interlock.services.budget.domain.usage import SettledUsage

ALICE = Principal("acme", "search", "alice", "k1")
BOB = Principal("acme", "search", "bob", "k2")
PROJECT = Scope(ScopeKind.PROJECT, "acme", "search")


@pytest.fixture
def ledger(tmp_path: Path) -> SqliteLedger:
    return SqliteLedger(tmp_path / "ledger.db")


def usage(request_id: str, cost: int) -> SettledUsage:
    return SettledUsage(request_id, Principal("", "", ""), "openai", "gpt-4o-mini", 10, 5, cost, 1000.0)


def test_decision_names_the_first_scope_that_does_not_fit() -> None:
    spends = [ScopeSpend("org:acme", None, 0, 0), ScopeSpend("project:acme/search", 100, 60, 30)]
    assert decide_reservation(10, spends).granted
    denied = decide_reservation(11, spends)
    assert not denied.granted
    assert denied.exceeded_scope == "project:acme/search"
    assert denied.remaining_nanos == 10


def test_reservation_holds_then_commit_settles_to_actual(ledger: SqliteLedger) -> None:
    ledger.set_budget(PROJECT, 1000)
    assert ledger.reserve("r1", ALICE, 800, 60, now=0).granted
    assert not ledger.reserve("r2", BOB, 300, 60, now=0).granted
    assert ledger.commit(usage("r1", 150), [])
    spend = ledger.get_spend(PROJECT)
    assert (spend.committed_nanos, spend.reserved_nanos) == (150, 0)
    assert ledger.reserve("r2", BOB, 300, 60, now=0).granted


def test_commit_and_reserve_are_idempotent_by_request_id(ledger: SqliteLedger) -> None:
    assert ledger.reserve("r1", ALICE, 100, 60, now=0).granted
    assert ledger.reserve("r1", ALICE, 100, 60, now=0).granted
    assert ledger.get_spend(PROJECT).reserved_nanos == 100
    assert ledger.commit(usage("r1", 70), [])
    assert not ledger.commit(usage("r1", 70), [])
    assert ledger.get_spend(PROJECT).committed_nanos == 70
    assert ledger.ledger_total() == (1, 70)
    assert len(ledger.pending_events(10)) == 1


def test_release_frees_the_hold_and_blocks_reuse(ledger: SqliteLedger) -> None:
    assert ledger.reserve("r1", ALICE, 100, 60, now=0).granted
    assert ledger.release("r1")
    assert not ledger.release("r1")
    assert ledger.get_spend(PROJECT).reserved_nanos == 0
    with pytest.raises(FailedPreconditionError):
        ledger.commit(usage("r1", 1), [])
    with pytest.raises(FailedPreconditionError):
        ledger.reserve("r1", ALICE, 100, 60, now=0)


def test_commit_without_reservation_is_not_found(ledger: SqliteLedger) -> None:
    with pytest.raises(NotFoundError):
        ledger.commit(usage("never", 1), [])


def test_expired_reservations_free_their_hold(ledger: SqliteLedger) -> None:
    ledger.set_budget(PROJECT, 100)
    assert ledger.reserve("r1", ALICE, 100, ttl_s=5, now=0).granted
    assert ledger.expire(now=4) == 0
    assert not ledger.reserve("r2", BOB, 1, 60, now=4).granted
    assert ledger.expire(now=5) == 1
    assert ledger.reserve("r2", BOB, 100, 60, now=5).granted


def test_concurrent_reservations_never_exceed_the_limit(tmp_path: Path) -> None:
    # Two ledgers on one file stand for two budget replicas sharing the database.
    path = tmp_path / "ledger.db"
    replicas = [SqliteLedger(path), SqliteLedger(path)]
    replicas[0].set_budget(PROJECT, 1_000)
    granted: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        ledger = replicas[n % 2]
        for i in range(25):
            rid = f"w{n}-{i}"
            if ledger.reserve(rid, ALICE if n % 2 else BOB, 37, 60, now=0).granted:
                ledger.commit(usage(rid, 37), [])
                with lock:
                    granted.append(rid)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spend = replicas[0].get_spend(PROJECT)
    assert spend.committed_nanos == 37 * len(granted)
    assert spend.committed_nanos <= 1_000
    assert len(granted) == 1_000 // 37
    assert spend.reserved_nanos == 0


def test_outbox_drains_once(ledger: SqliteLedger) -> None:
    for i in range(3):
        ledger.reserve(f"r{i}", ALICE, 10, 60, now=0)
        ledger.commit(usage(f"r{i}", 10), [("traceparent", "00-" + "a" * 32 + "-" + "b" * 16 + "-01")])
    pending = ledger.pending_events(10)
    assert [e.usage.request_id for e in pending] == ["r0", "r1", "r2"]
    assert pending[0].usage.principal == ALICE
    assert pending[0].headers[0][0] == "traceparent"
    ledger.mark_published([e.seq for e in pending[:2]], now=1)
    assert [e.usage.request_id for e in ledger.pending_events(10)] == ["r2"]


def test_api_keys_are_stored_hashed_and_authenticate(ledger: SqliteLedger, tmp_path: Path) -> None:
    key = ledger.create_api_key(Principal("acme", "search", "alice"), now=0)
    parts = split_api_key(key.api_key)
    assert parts is not None
    assert ledger.authenticate(*parts) == Principal("acme", "search", "alice", key.key_id)
    assert ledger.authenticate(parts[0], parts[1][:-1] + ("A" if parts[1][-1] != "A" else "B")) is None
    assert split_api_key("il_nothex_x") is None
    ledger.close()
    assert parts[1].encode() not in (tmp_path / "ledger.db").read_bytes()
