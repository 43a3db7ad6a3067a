"""The ledger on SQLite and on PostgreSQL: hard limits under concurrency, idempotency,
expiry, windows, alerts and the outbox. The PostgreSQL cases need the `postgres_url` server."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from interlock.errors import FailedPreconditionError, NotFoundError
from interlock.services.budget.adapters.ledger import BudgetLedger, Tx
from interlock.services.budget.adapters.sqlite_ledger import SqliteLedger
from interlock.services.budget.domain.model import (
    BudgetPolicy,
    LeaseChange,
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


def grow(n: int) -> LeaseChange:
    return LeaseChange(grow_nanos=n)


def test_a_lease_holds_budget_and_commits_under_it_settle_from_its_hold(ledger: BudgetLedger) -> None:
    ledger.set_budget(PROJECT, BudgetPolicy(1_000))
    state = ledger.lease("L1", ALICE, 1, grow(100), 30, now=0, max_share=0.5)
    assert (state.granted_nanos, state.added_nanos, state.expires_at) == (100, 100, 30)
    assert ledger.get_spend(PROJECT).reserved_nanos == 100
    # A call under the lease needs no reservation of its own; its cost leaves the hold.
    assert ledger.commit(usage("c1", 30), [], lease_id="L1")
    assert not ledger.commit(usage("c1", 30), [], lease_id="L1")  # a replay settles nothing
    spend = ledger.get_spend(PROJECT)
    assert (spend.committed_nanos, spend.reserved_nanos) == (30, 70)
    assert ledger.ledger_total() == (1, 30) and len(ledger.pending_events(10)) == 1
    # Giving back part, then closing, frees the rest; the ledger keeps what was spent.
    assert ledger.lease("L1", ALICE, 2, LeaseChange(return_nanos=50), 30, now=1, max_share=0.5).granted_nanos == 50
    assert ledger.get_spend(PROJECT).reserved_nanos == 20
    closed = ledger.lease("L1", ALICE, 3, LeaseChange(close=True), 30, now=2, max_share=0.5)
    assert (closed.granted_nanos, closed.consumed_nanos) == (30, 30)
    assert ledger.get_spend(PROJECT).reserved_nanos == 0
    with pytest.raises(FailedPreconditionError):
        ledger.lease("L1", ALICE, 4, grow(10), 30, now=3, max_share=0.5)


def test_leases_never_exceed_what_remains_and_shrink_as_the_budget_runs_low(ledger: BudgetLedger) -> None:
    ledger.set_budget(PROJECT, BudgetPolicy(1_000))
    assert ledger.reserve("r1", BOB, 200, 60, now=0).granted
    added = [ledger.lease(f"L{i}", ALICE, 1, grow(10_000), 30, now=0, max_share=0.25).added_nanos for i in range(6)]
    # Each lease takes a quarter of the room left at its turn: 800, then 600, ...
    assert added == [200, 150, 112, 84, 63, 47]
    spend = ledger.get_spend(PROJECT)
    assert spend.reserved_nanos == 200 + sum(added) <= 1_000
    assert ledger.lease("L9", ALICE, 1, grow(10), 30, now=0, max_share=0.25).limiting_scope == ""
    room = ledger.get_spend(PROJECT).remaining_nanos
    assert room is not None
    assert not ledger.reserve("r2", BOB, room + 1, 60, now=0).granted
    assert ledger.reserve("r3", BOB, room, 60, now=0).granted


def test_lease_changes_are_idempotent_by_sequence_and_bound_to_one_principal(ledger: BudgetLedger) -> None:
    ledger.set_budget(PROJECT, BudgetPolicy(1_000))
    first = ledger.lease("L1", ALICE, 1, grow(100), 30, now=0, max_share=1.0)
    replay = ledger.lease("L1", ALICE, 1, grow(100), 30, now=0, max_share=1.0)
    assert (first.granted_nanos, replay.granted_nanos, replay.added_nanos) == (100, 100, 0)
    assert ledger.get_spend(PROJECT).reserved_nanos == 100
    with pytest.raises(FailedPreconditionError):
        ledger.lease("L1", BOB, 2, grow(100), 30, now=0, max_share=1.0)
    with pytest.raises(NotFoundError):
        ledger.commit(usage("c1", 1), [], lease_id="unknown")


def test_an_expired_lease_frees_its_unused_hold_but_late_commits_still_count(ledger: BudgetLedger) -> None:
    ledger.set_budget(PROJECT, BudgetPolicy(1_000))
    ledger.lease("L1", ALICE, 1, grow(400), ttl_s=5, now=0, max_share=1.0)
    assert ledger.commit(usage("c1", 100, at=1), [], lease_id="L1")
    assert ledger.expire(now=4) == 0
    assert ledger.held_leases(now=5) == (1, 1, 300)
    assert ledger.expire(now=5) == 1
    assert ledger.held_leases(now=5) == (0, 0, 0)
    spend = ledger.get_spend(PROJECT)
    assert (spend.committed_nanos, spend.reserved_nanos) == (100, 0)
    assert ledger.commit(usage("c2", 50, at=6), [], lease_id="L1")
    spend = ledger.get_spend(PROJECT)
    assert (spend.committed_nanos, spend.reserved_nanos) == (150, 0)


def test_concurrent_leases_and_reservations_never_exceed_the_limit(open_ledger: Callable[[], BudgetLedger]) -> None:
    # Router-like holders on two budget replicas: each leases, spends from its lease, falls
    # back to exact reservations when the lease is short, and gives back what it did not use.
    replicas = [open_ledger(), open_ledger()]
    replicas[0].set_budget(PROJECT, BudgetPolicy(10_000))
    spent: list[int] = []
    lock = threading.Lock()

    def holder(n: int) -> None:
        ledger, payer, lease_id, seq = replicas[n % 2], ALICE if n % 2 else BOB, f"L{n}", 0
        granted = consumed = 0
        for i in range(60):
            rid, cost = f"h{n}-{i}", 37
            if granted - consumed < cost:
                seq += 1
                granted = ledger.lease(lease_id, payer, seq, grow(200), 30, now=0, max_share=0.25).granted_nanos
            if granted - consumed >= cost:
                assert ledger.commit(usage(rid, cost), [], lease_id=lease_id)
                consumed += cost
            elif ledger.reserve(rid, payer, cost, 60, now=0).granted:
                assert ledger.commit(usage(rid, cost), [])
            else:
                continue
            with lock:
                spent.append(cost)
        seq += 1
        ledger.lease(lease_id, payer, seq, LeaseChange(close=True), 30, now=0, max_share=0.25)

    threads = [threading.Thread(target=holder, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spend = replicas[0].get_spend(PROJECT)
    assert spend.committed_nanos == sum(spent) <= 10_000
    assert spend.reserved_nanos == 0
    assert replicas[0].ledger_total() == (len(spent), sum(spent))


def test_a_batch_of_commits_settles_exactly_as_the_same_commits_one_by_one(tmp_path: Path) -> None:
    """commit_many reads and writes each scope, window and lease once per batch: spend,
    windows, lease consumption, alerts, usage rows and reservations must still come out as
    if each call had been committed alone, in order, including a lease whose hold runs out
    mid-batch, a replayed commit and a window boundary inside the batch."""
    day = 86_400.0
    developer = Scope(ScopeKind.DEVELOPER, "acme", "search", "alice")

    def prepared(name: str) -> BudgetLedger:
        ledger = SqliteLedger(tmp_path / f"{name}.db")
        ledger.set_budget(PROJECT, BudgetPolicy(2_000, Window.DAY, "UTC", (25, 50, 80, 100)), now=day - 100)
        ledger.set_budget(developer, BudgetPolicy(5_000, alert_thresholds_pct=(10, 20)), now=day - 100)
        ledger.lease("L1", ALICE, 1, grow(450), 300, now=day - 100, max_share=1.0)
        for i in range(3):
            assert ledger.reserve(f"b{i}", BOB, 400, 300, now=day - 100).granted
        return ledger

    commits: list[tuple[SettledUsage, list[tuple[str, str]], str]] = []
    for i in range(8):  # 8 x 100 under a 450 lease: the hold runs out at the fifth
        at = day - 50 + 10 * i  # the last three on the next day: a new window
        commits.append((SettledUsage(f"a{i}", ALICE, "openai", "m", 10, 5, 100, at), [("h", str(i))], "L1"))
        if i < 3:
            commits.append((SettledUsage(f"b{i}", BOB, "openai", "m", 10, 5, 350, at), [], ""))
    commits.insert(4, commits[0])  # a replay of a settled call, inside the batch

    one_by_one, batched = prepared("one"), prepared("batch")
    alone = [one_by_one.commit(u, h, lease_id) for u, h, lease_id in commits]
    assert batched.commit_many(commits) == alone
    assert alone.count(False) == 1

    def state(ledger: BudgetLedger) -> dict[str, list[tuple[object, ...]]]:
        queries = {
            "spend": "SELECT scope, committed_nanos, reserved_nanos FROM spend ORDER BY scope",
            "windows": "SELECT scope, window_start, committed_nanos FROM window_spend ORDER BY scope, window_start",
            "leases": "SELECT lease_id, granted_nanos, consumed_nanos, state FROM leases",
            "alerts": "SELECT scope, threshold_pct, committed_nanos, window_start, request_id FROM alerts"
            " ORDER BY scope, window_start, threshold_pct",
            "ledger": "SELECT request_id, cost_nanos, committed_at FROM ledger ORDER BY request_id",
            "reservations": "SELECT request_id, state FROM reservations ORDER BY request_id",
            "outbox": "SELECT request_id, headers FROM outbox ORDER BY seq",
        }
        out = {}
        for name, query in queries.items():

            def rows(tx: Tx, query: str = query) -> list[tuple[object, ...]]:
                return [tuple(row) for row in tx.all(query)]

            out[name] = ledger._read(rows)
        return out

    expected = state(one_by_one)
    assert state(batched) == expected
    assert len(expected["alerts"]) == 3 and len(expected["windows"]) == 2  # the case is not trivial
    one_by_one.close()
    batched.close()
