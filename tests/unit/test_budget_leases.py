"""The router's lease book against the real ledger (SQLite): concurrent calls share one
lease, never reserve more than it was granted, give back what does not fit, and close
idle leases."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from pathlib import Path

from interlock.budget.v1 import budget_pb2
from interlock.services.budget.adapters.sqlite_ledger import SqliteLedger
from interlock.services.budget.domain.model import BudgetPolicy, LeaseChange, Principal, Scope, ScopeKind
from interlock.services.budget.domain.usage import SettledUsage
from interlock.services.router.adapters.budget_leases import CommitBatcher, CommitOutcome, LeaseBook, LeasePolicy
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
    # 50 calls of 1,000 from one lease: opened with 11,000, then topped up by at least half a
    # slice (5,000) whenever it fell below that, and closed: at most 11 round trips, not 50.
    assert rpc.calls <= 11
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


CURRENT_CALL: contextvars.ContextVar[str] = contextvars.ContextVar("current_call", default="")


class GatedLeases(LedgerLeases):
    """The ledger's Lease RPC, held after the first change until the test lets it through
    (or failing, when `fail` is set)."""

    def __init__(self, ledger: SqliteLedger, max_share: float = 0.25) -> None:
        super().__init__(ledger, max_share)
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()
        self.fail = False
        self.seen_calls: list[str] = []
        """The value of CURRENT_CALL each change was sent under (a call's span, in the router)."""

    async def __call__(self, request: budget_pb2.LeaseRequest, timeout_s: float) -> budget_pb2.LeaseResponse:
        self.seen_calls.append(CURRENT_CALL.get())
        if self.calls >= 1:
            self.waiting.set()
            await self.gate.wait()
            if self.fail:
                self.calls += 1
                raise RuntimeError("budget service unavailable")
        return await super().__call__(request, timeout_s)


async def settle_all(book: LeaseBook, ledger: SqliteLedger, first: int, last: int, cost: int) -> None:
    for i in range(first, last):
        lease_id = book.settle(f"r{i}", cost)
        assert ledger.commit(SettledUsage(f"r{i}", Principal("", "", ""), "openai", "m", 1, 1, cost, 0.0), [], lease_id)
        book.commit_done(lease_id)


def test_a_lease_half_spent_is_topped_up_while_calls_go_on_reserving_from_it(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "ledger.db")
    ledger.set_budget(PROJECT, BudgetPolicy(1_000_000_000))
    rpc = GatedLeases(ledger)
    book = LeaseBook(LeasePolicy(slice_nanos=10_000), rpc)

    async def run() -> tuple[list[bool], int, int]:
        CURRENT_CALL.set("r0")
        assert await book.grow_and_take("r0", CALLER, 1_000, 5.0)  # opened with 11,000
        # Calls 1-5 reserve in memory; after call 6 the lease holds less than half its slice
        # (4,000 left), and a top-up leaves for the budget service, which holds it.
        taken = [book.take(f"r{i}", CALLER, 1_000) for i in range(1, 7)]
        await asyncio.wait_for(rpc.waiting.wait(), timeout=10)
        # The top-up is in flight: the next calls are still served from what the lease holds.
        await settle_all(book, ledger, 0, 7, 900)
        taken += [book.take(f"r{i}", CALLER, 1_000) for i in range(7, 11)]
        in_flight_calls = rpc.calls
        rpc.gate.set()
        for _ in range(100):
            if book.refills:
                break
            await asyncio.sleep(0.01)
        await settle_all(book, ledger, 7, 11, 900)
        more = [book.take(f"r{i}", CALLER, 1_000) for i in range(11, 16)]
        await settle_all(book, ledger, 11, 16, 900)
        await book.close_all()
        return taken + more, in_flight_calls, rpc.calls

    taken, during, total = asyncio.run(run())
    assert taken == [True] * 15  # no call waited for a round trip or was turned away
    assert during == 1  # while the top-up was held, only the opening change had been answered
    assert book.refills == 1
    assert total == 3  # open, one top-up (back to a full slice: 15 calls fit), close
    # The opening change was the call's own (it waited for it); the top-up is no call's.
    assert rpc.seen_calls[:2] == ["r0", ""]
    # Every call's cost landed under the lease, and the close gave the rest back.
    spend = ledger.get_spend(PROJECT)
    assert spend.committed_nanos == 16 * 900
    assert ledger.held_leases(now=0) == (0, 0, 0)
    ledger.close()


def test_a_top_up_that_fails_or_falls_short_waits_before_the_next(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "ledger.db")
    # Room of 40,000 and a share of a quarter: the lease opens with 10,000 and every top-up
    # is cut to a quarter of what is left, never back to the 50,000 slice.
    ledger.set_budget(PROJECT, BudgetPolicy(40_000))
    rpc = GatedLeases(ledger)
    rpc.gate.set()
    clock = [100.0]
    book = LeaseBook(LeasePolicy(slice_nanos=50_000, refill_retry_s=1.0), rpc, clock=lambda: clock[0])

    async def drain() -> None:
        # Top-ups start a few milliseconds after the call that asks (background.START_DELAY_S).
        for _ in range(5):
            await asyncio.sleep(0)
        if book._refills:
            await asyncio.wait(set(book._refills), timeout=5)

    async def run() -> tuple[int, int, int, int]:
        assert await book.grow_and_take("r0", CALLER, 1_000, 5.0)
        await drain()
        after_open = rpc.calls  # the opening change, then one top-up cut short by the share
        for i in range(1, 4):
            assert book.take(f"r{i}", CALLER, 1_000)
            await drain()
        within_retry = rpc.calls  # no second top-up within refill_retry_s of the short one
        clock[0] += 1.5
        rpc.fail = True
        assert book.take("r4", CALLER, 1_000)
        await drain()
        after_failure = rpc.calls  # one more, which failed
        assert book.take("r5", CALLER, 1_000)  # the lease still serves what it holds
        await drain()
        return after_open, within_retry, after_failure, rpc.calls

    assert asyncio.run(run()) == (2, 2, 3, 3)
    ledger.close()


class HeldSends:
    """A commit RPC that records each batch; the first is answered only when the test lets it."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = asyncio.Event()
        self.sent = asyncio.Event()

    async def __call__(self, requests: list[budget_pb2.CommitRequest]) -> list[budget_pb2.CommitResponse]:
        self.batches.append([r.request_id for r in requests])
        self.sent.set()
        if len(self.batches) == 1:
            await self.release.wait()
        return [budget_pb2.CommitResponse() for _ in requests]


def test_commits_queued_behind_a_batch_in_flight_linger_for_company() -> None:
    async def scenario() -> list[list[str]]:
        sends = HeldSends()
        batcher = CommitBatcher(sends, linger_s=0.3)
        commits = [asyncio.create_task(batcher.commit(budget_pb2.CommitRequest(request_id="a")))]
        await asyncio.wait_for(sends.sent.wait(), timeout=10)  # the first batch lingers, then goes alone
        commits += [asyncio.create_task(batcher.commit(budget_pb2.CommitRequest(request_id=i))) for i in "bc"]
        await asyncio.sleep(0)
        sends.release.set()  # "a" answered; "b" and "c" waited in the queue meanwhile
        await commits[0]
        # Queued within the linger of the next batch: they go with "b" and "c", not after them.
        commits += [asyncio.create_task(batcher.commit(budget_pb2.CommitRequest(request_id=i))) for i in "de"]
        await asyncio.wait_for(asyncio.gather(*commits), timeout=10)
        return sends.batches

    assert asyncio.run(scenario()) == [["a"], ["b", "c", "d", "e"]]


def test_a_full_batch_goes_out_without_lingering() -> None:
    async def scenario() -> list[list[str]]:
        sends = HeldSends()
        sends.release.set()
        batcher = CommitBatcher(sends, max_batch=2, linger_s=60.0)
        commits = [asyncio.create_task(batcher.commit(budget_pb2.CommitRequest(request_id=i))) for i in "ab"]
        # A linger of a minute would time this out: two queued commits fill a batch.
        await asyncio.wait_for(asyncio.gather(*commits), timeout=10)
        return sends.batches

    assert asyncio.run(scenario()) == [["a", "b"]]


def test_submitted_commits_share_a_batch_and_a_failing_handler_spares_the_others() -> None:
    async def scenario() -> tuple[list[list[str]], list[str]]:
        sends = HeldSends()
        sends.release.set()
        batcher = CommitBatcher(sends, linger_s=0.01)
        outcomes: list[str] = []
        done = asyncio.Event()

        def handler(request_id: str) -> Callable[[CommitOutcome], None]:
            def on_outcome(outcome: CommitOutcome) -> None:
                if request_id == "b":
                    raise RuntimeError("handler bug")
                outcomes.append(f"{request_id}:{'error' if isinstance(outcome, Exception) else 'ok'}")
                if len(outcomes) == 2:
                    done.set()

            return on_outcome

        for request_id in "abc":
            batcher.submit(budget_pb2.CommitRequest(request_id=request_id), handler(request_id))
        await asyncio.wait_for(done.wait(), timeout=10)
        return sends.batches, outcomes

    batches, outcomes = asyncio.run(scenario())
    assert batches == [["a", "b", "c"]]
    assert outcomes == ["a:ok", "c:ok"]


def test_a_failed_batch_reports_each_submitted_commit_its_own_outcome() -> None:
    async def send(requests: list[budget_pb2.CommitRequest]) -> list[budget_pb2.CommitResponse]:
        if any(r.request_id == "bad" for r in requests):
            raise RuntimeError("refused")
        return [budget_pb2.CommitResponse(first_commit=True) for _ in requests]

    async def scenario() -> dict[str, str]:
        batcher = CommitBatcher(send, linger_s=0.01)
        outcomes: dict[str, str] = {}
        done = asyncio.Event()

        def record(request_id: str) -> Callable[[CommitOutcome], None]:
            def on_outcome(outcome: CommitOutcome) -> None:
                outcomes[request_id] = str(outcome) if isinstance(outcome, Exception) else "landed"
                if len(outcomes) == 3:
                    done.set()

            return on_outcome

        for request_id in ("a", "bad", "c"):
            batcher.submit(budget_pb2.CommitRequest(request_id=request_id), record(request_id))
        await asyncio.wait_for(done.wait(), timeout=10)
        return outcomes

    assert asyncio.run(scenario()) == {"a": "landed", "bad": "refused", "c": "landed"}
