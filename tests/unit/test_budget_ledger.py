"""The ledger on SQLite and on PostgreSQL: hard limits under concurrency, idempotency,
expiry, windows, alerts and the outbox. The PostgreSQL cases need the `postgres_url` server."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from interlock.errors import FailedPreconditionError, NotFoundError
from interlock.services.budget.adapters.ledger import BudgetLedger
from interlock.services.budget.adapters.sqlite_ledger import SqliteLedger
from interlock.services.budget.domain.model import (
    BudgetPolicy,
    Principal,
    Scope,
    ScopeKind,
    ScopeSpend,
    decide_reservation,
    split_api_key,
)
from interlock.services.budget.domain.usage import SettledUsage
from interlock.services.budget.domain.window import Window

ALICE = Principal("acme", "search", "alice", "k1")
BOB = Principal("acme", "search", "bob", "k2")
PROJECT = Scope(ScopeKind.PROJECT, "acme", "search")


@pytest.fixture(params=["sqlite", "postgres"])
def open_ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], BudgetLedger]]:
    """Opens a ledger replica; all replicas of one test share one database."""
    opened: list[BudgetLedger] = []

    def make() -> BudgetLedger:
        if request.param == "sqlite":
            replica: BudgetLedger = SqliteLedger(tmp_path / "ledger.db")
        else:
            from interlock.services.budget.adapters.postgres_ledger import PostgresLedger

            replica = PostgresLedger(url)
        opened.append(replica)
        return replica

    url = request.getfixturevalue("postgres_database") if request.param == "postgres" else ""
    yield make
    for replica in opened:
        replica.close()


@pytest.fixture
def ledger(open_ledger: Callable[[], BudgetLedger]) -> BudgetLedger:
    return open_ledger()


def usage(request_id: str, cost: int, at: float = 1000.0) -> SettledUsage:
    return SettledUsage(request_id, Principal("", "", ""), "openai", "gpt-4o-mini", 10, 5, cost, at)


def test_decision_names_the_first_scope_that_does_not_fit() -> None:
    spends = [ScopeSpend("org:acme", None, 0, 0), ScopeSpend("project:acme/search", 100, 60, 30)]
    assert decide_reservation(10, spends).granted
    denied = decide_reservation(11, spends)
    assert not denied.granted
    assert denied.exceeded_scope == "project:acme/search"
    assert denied.remaining_nanos == 10


def test_reservation_holds_then_commit_settles_to_actual(ledger: BudgetLedger) -> None:
    ledger.set_budget(PROJECT, BudgetPolicy(1000))
    assert ledger.reserve("r1", ALICE, 800, 60, now=0).granted
    assert not ledger.reserve("r2", BOB, 300, 60, now=0).granted
    assert ledger.commit(usage("r1", 150), [])
    spend = ledger.get_spend(PROJECT)
    assert (spend.committed_nanos, spend.reserved_nanos) == (150, 0)
    assert ledger.reserve("r2", BOB, 300, 60, now=0).granted


def test_commit_and_reserve_are_idempotent_by_request_id(ledger: BudgetLedger) -> None:
    assert ledger.reserve("r1", ALICE, 100, 60, now=0).granted
    assert ledger.reserve("r1", ALICE, 100, 60, now=0).granted
    assert ledger.get_spend(PROJECT).reserved_nanos == 100
    assert ledger.commit(usage("r1", 70), [])
    assert not ledger.commit(usage("r1", 70), [])
    assert ledger.get_spend(PROJECT).committed_nanos == 70
    assert ledger.ledger_total() == (1, 70)
    assert len(ledger.pending_events(10)) == 1


def test_release_frees_the_hold_and_blocks_reuse(ledger: BudgetLedger) -> None:
    assert ledger.reserve("r1", ALICE, 100, 60, now=0).granted
    assert ledger.release("r1")
    assert not ledger.release("r1")
    assert ledger.get_spend(PROJECT).reserved_nanos == 0
    with pytest.raises(FailedPreconditionError):
        ledger.commit(usage("r1", 1), [])
    with pytest.raises(FailedPreconditionError):
        ledger.reserve("r1", ALICE, 100, 60, now=0)


def test_commit_without_reservation_is_not_found(ledger: BudgetLedger) -> None:
    with pytest.raises(NotFoundError):
        ledger.commit(usage("never", 1), [])


def test_expired_reservations_free_their_hold(ledger: BudgetLedger) -> None:
    ledger.set_budget(PROJECT, BudgetPolicy(100))
    assert ledger.reserve("r1", ALICE, 100, ttl_s=5, now=0).granted
    assert ledger.expire(now=4) == 0
    assert not ledger.reserve("r2", BOB, 1, 60, now=4).granted
    assert ledger.expire(now=5) == 1
    assert ledger.reserve("r2", BOB, 100, 60, now=5).granted


def test_concurrent_reservations_never_exceed_the_limit(open_ledger: Callable[[], BudgetLedger]) -> None:
    # Two ledgers on one database stand for two budget replicas sharing it.
    replicas = [open_ledger(), open_ledger()]
    replicas[0].set_budget(PROJECT, BudgetPolicy(1_000))
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


def test_outbox_drains_once(ledger: BudgetLedger) -> None:
    for i in range(3):
        ledger.reserve(f"r{i}", ALICE, 10, 60, now=0)
        ledger.commit(usage(f"r{i}", 10), [("traceparent", "00-" + "a" * 32 + "-" + "b" * 16 + "-01")])
    pending = ledger.pending_events(10)
    assert [e.usage.request_id for e in pending] == ["r0", "r1", "r2"]
    assert pending[0].usage.principal == ALICE
    assert pending[0].headers[0][0] == "traceparent"
    ledger.mark_published([e.seq for e in pending[:2]], now=1)
    assert [e.usage.request_id for e in ledger.pending_events(10)] == ["r2"]


def test_api_keys_are_stored_hashed_and_authenticate(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "ledger.db")
    key = ledger.create_api_key(Principal("acme", "search", "alice"), now=0)
    parts = split_api_key(key.api_key)
    assert parts is not None
    assert ledger.authenticate(*parts) == Principal("acme", "search", "alice", key.key_id)
    assert ledger.authenticate(parts[0], parts[1][:-1] + ("A" if parts[1][-1] != "A" else "B")) is None
    assert split_api_key("il_nothex_x") is None
    ledger.close()
    assert parts[1].encode() not in (tmp_path / "ledger.db").read_bytes()


KEY_SCOPE = Scope(ScopeKind.API_KEY, "acme", "search", "alice", "k1")
DAY_START = 1_700_006_400.0  # 2023-11-15 00:00 UTC


def test_api_key_budget_refuses_only_that_key_and_names_itself(ledger: BudgetLedger) -> None:
    ledger.set_budget(KEY_SCOPE, BudgetPolicy(100))
    denied = ledger.reserve("r1", ALICE, 101, 60, now=0)
    assert not denied.granted and denied.exceeded_scope == "api_key:acme/search/alice/k1"
    assert denied.refused_by is not None and denied.refused_by.limit_nanos == 100
    assert ledger.reserve("r2", Principal("acme", "search", "alice", "k9"), 101, 60, now=0).granted
    assert ledger.reserve("r3", ALICE, 100, 60, now=0).granted
    assert ledger.release("r3")
    assert ledger.get_spend(KEY_SCOPE).reserved_nanos == 0


def test_daily_window_resets_at_midnight_and_denial_tells_when(ledger: BudgetLedger) -> None:
    ledger.set_budget(PROJECT, BudgetPolicy(100, Window.DAY, "UTC"), now=DAY_START + 10)
    assert ledger.reserve("r1", ALICE, 100, 60, now=DAY_START + 10).granted
    assert ledger.commit(usage("r1", 90, at=DAY_START + 20), [])
    denied = ledger.reserve("r2", ALICE, 20, 60, now=DAY_START + 30)
    assert not denied.granted and denied.refused_by is not None
    assert (denied.refused_by.committed_nanos, denied.refused_by.span.reset_at) == (90, DAY_START + 86400)
    # One second into the next day the window is empty again; lifetime totals stay.
    assert ledger.reserve("r2", ALICE, 100, 60, now=DAY_START + 86400).granted
    spend = ledger.get_spend(PROJECT, now=DAY_START + 86400)
    assert (spend.committed_nanos, spend.reserved_nanos) == (0, 100)
    assert ledger.ledger_total() == (1, 90)


def test_budget_set_mid_window_counts_spend_already_in_the_ledger(ledger: BudgetLedger) -> None:
    assert ledger.reserve("r1", ALICE, 50, 60, now=DAY_START + 5)
    assert ledger.commit(usage("r1", 40, at=DAY_START + 6), [])
    ledger.set_budget(PROJECT, BudgetPolicy(100, Window.DAY), now=DAY_START + 7)
    assert ledger.get_spend(PROJECT, now=DAY_START + 8).committed_nanos == 40
    assert not ledger.reserve("r2", BOB, 61, 60, now=DAY_START + 8).granted


def test_alerts_fire_once_per_threshold_and_window_in_the_commit_transaction(ledger: BudgetLedger) -> None:
    ledger.set_budget(PROJECT, BudgetPolicy(1000, Window.DAY, "UTC", (50, 80, 100)), now=DAY_START)
    costs = [400, 200, 100, 300]  # 400 -> 600 (50%) -> 700 -> 1000 (80%, 100%)
    for i, cost in enumerate(costs):
        assert ledger.reserve(f"r{i}", ALICE, cost, 60, now=DAY_START + i).granted
        assert ledger.commit(usage(f"r{i}", cost, at=DAY_START + i), [])
    alerts = [a.alert for a in ledger.pending_alerts(10)]
    assert [(a.threshold_pct, a.committed_nanos, a.request_id) for a in alerts] == [
        (50, 600, "r1"),
        (80, 1000, "r3"),
        (100, 1000, "r3"),
    ]
    assert alerts[0].alert_id == f"project:acme/search@{int(DAY_START)}#50"
    assert alerts[0].reset_at == DAY_START + 86400
    ledger.mark_alerts_published([a.alert_id for a in alerts], now=DAY_START + 10)
    assert ledger.pending_alerts(10) == []
    # The next day is a new window: the thresholds fire again.
    assert ledger.reserve("n1", ALICE, 600, 60, now=DAY_START + 86400).granted
    assert ledger.commit(usage("n1", 600, at=DAY_START + 86400), [])
    assert [a.alert.threshold_pct for a in ledger.pending_alerts(10)] == [50]


def test_held_reservations_report_what_is_past_expiry(ledger: BudgetLedger) -> None:
    assert ledger.reserve("r1", ALICE, 10, ttl_s=5, now=0).granted
    assert ledger.reserve("r2", ALICE, 10, ttl_s=50, now=0).granted
    assert ledger.held_reservations(now=10) == (2, 1)
    ledger.expire(now=10)
    assert ledger.held_reservations(now=10) == (1, 0)
