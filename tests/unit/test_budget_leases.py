"""The router's lease book against the real ledger (SQLite): concurrent calls share one
lease, never reserve more than it was granted, give back what does not fit, and close
idle leases."""

from __future__ import annotations

import asyncio
from pathlib import Path

from interlock.budget.v1 import budget_pb2
from interlock.services.budget.adapters.sqlite_ledger import SqliteLedger
from interlock.services.budget.domain.model import BudgetPolicy, LeaseChange, Principal, Scope, ScopeKind
from interlock.services.budget.domain.usage import SettledUsage
from interlock.services.router.adapters.budget_leases import LeaseBook, LeasePolicy
from interlock.services.router.domain.flow import Caller

CALLER = Caller("acme", "search", "alice", "k1")
PROJECT = Scope(ScopeKind.PROJECT, "acme", "search")


class LedgerLeases:
    """The Lease RPC's work, done by the ledger in this process; counts round trips."""

    def __init__(self, ledger: SqliteLedger, max_share: float = 0.25) -> None:
        self.ledger = ledger
        self.max_share = max_share
        self.calls = 0
        self.now = 0.0

    async def __call__(self, request: budget_pb2.LeaseRequest, timeout_s: float) -> budget_pb2.LeaseResponse:
        self.calls += 1
        await asyncio.sleep(0)  # let concurrent callers queue up behind the lease lock
        p = request.principal
        state = self.ledger.lease(
            request.lease_id,
            Principal(p.org, p.project, p.developer, p.api_key_id),
            request.seq,
            LeaseChange(request.grow_nanos, request.return_nanos, request.close),
            float(request.ttl_seconds),
            self.now,
            self.max_share,
        )
        return budget_pb2.LeaseResponse(granted_nanos=state.granted_nanos, consumed_nanos=state.consumed_nanos)


def test_concurrent_calls_share_one_lease_and_never_overdraw_it(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "ledger.db")
    ledger.set_budget(PROJECT, BudgetPolicy(1_000_000))
    rpc = LedgerLeases(ledger)
    book = LeaseBook(LeasePolicy(slice_nanos=10_000), rpc)

    async def run() -> list[bool]:
        async def one(i: int) -> bool:
            if book.take(f"r{i}", CALLER, 1_000):
                return True
            return await book.grow_and_take(f"r{i}", CALLER, 1_000, 5.0)

        results = await asyncio.gather(*(one(i) for i in range(50)))
        await book.close_all()
        return list(results)

    assert all(asyncio.run(run()))
    # 50 calls of 1,000 from slices of 11,000: five grows of one lease, not one lease per call.
    assert rpc.calls <= 6
    assert book.local_reservations == 50
    spend = ledger.get_spend(PROJECT)
    assert spend.reserved_nanos == 50 * 1_000  # the calls are still in flight: the lease holds them
    ledger.close()


def test_a_call_that_does_not_fit_gives_the_lease_back_for_an_exact_reservation(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "ledger.db")
    ledger.set_budget(PROJECT, BudgetPolicy(40_000))
    rpc = LedgerLeases(ledger, max_share=0.25)
    book = LeaseBook(LeasePolicy(slice_nanos=1_000_000), rpc)

    async def run() -> tuple[bool, bool]:
        first = await book.grow_and_take("r1", CALLER, 5_000, 5.0)  # lease of 10,000 (a quarter of the room)
        lease_id = book.settle("r1", 5_000)
        assert ledger.commit(SettledUsage("r1", Principal("", "", ""), "openai", "m", 1, 1, 5_000, 0.0), [], lease_id)
        # 20,000 fits neither what is left (5,000) nor that plus a quarter of the room (7,500):
        # the whole lease goes back, for the exact reservation the router falls back to.
        second = await book.grow_and_take("r2", CALLER, 20_000, 5.0)
        return first, second

    assert asyncio.run(run()) == (True, False)
    spend = ledger.get_spend(PROJECT)
    assert spend.reserved_nanos == 0
    assert ledger.reserve("exact", Principal("acme", "search", "alice", "k1"), 35_000, 60, now=0).granted
    ledger.close()


def test_idle_leases_are_given_back(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "ledger.db")
    ledger.set_budget(PROJECT, BudgetPolicy(1_000_000))
    book = LeaseBook(LeasePolicy(slice_nanos=10_000, idle_s=0.05), LedgerLeases(ledger))

    async def run() -> None:
        assert await book.grow_and_take("r1", CALLER, 1_000, 5.0)
        lease_id = book.settle("r1", 700)
        assert lease_id
        assert ledger.commit(SettledUsage("r1", Principal("", "", ""), "openai", "m", 1, 1, 700, 0.0), [], lease_id)
        await asyncio.sleep(0.2)  # idle, but its commit has not been reported as landed
        assert ledger.get_spend(PROJECT).reserved_nanos > 0
        book.commit_done(lease_id)
        for _ in range(200):
            if ledger.get_spend(PROJECT).reserved_nanos == 0:
                return
            await asyncio.sleep(0.02)

    asyncio.run(run())
    assert ledger.get_spend(PROJECT).reserved_nanos == 0
    assert ledger.held_leases(now=0) == (0, 0, 0)
    ledger.close()
