"""The budget's outbox publisher: commits arriving together leave in one publish, every
event exactly once, into the real spool trace-ingest reads (SQLite ledger, no network)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from interlock.services.budget.adapters.outbox_publisher import OutboxPublisher
from interlock.services.budget.adapters.sqlite_ledger import SqliteLedger
from interlock.services.budget.adapters.usage_sink import OutgoingEvent, SpoolUsageSink
from interlock.services.budget.api.servicer import BudgetServicer
from interlock.services.budget.domain.model import Principal, Scope, ScopeKind
from interlock.services.budget.domain.usage import SettledUsage

PRINCIPAL = Principal("acme", "search", "alice", "k1")


class CountingSpoolSink(SpoolUsageSink):
    """The spool sink, counting its publishes."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "interlock.usage.v1")
        self.publishes: list[int] = []

    async def publish_many(self, events: Sequence[OutgoingEvent]) -> None:
        self.publishes.append(len(events))
        await super().publish_many(events)


async def _publish_burst(tmp_path: Path, linger_s: float, calls: int) -> tuple[list[int], int]:
    ledger = SqliteLedger(tmp_path / "ledger.db")
    servicer = BudgetServicer(ledger, 60.0, on_commit=lambda: None)
    sink = CountingSpoolSink(tmp_path / "spool.db")
    publisher = OutboxPublisher(ledger, sink, servicer.run_in_ledger_thread, linger_s=linger_s)
    await publisher.start()
    try:
        await asyncio.sleep(0.05)  # the publisher is idle, waiting for a commit
        for i in range(calls):
            # Reservations and commits as the servicer makes them, a few milliseconds apart.
            assert ledger.reserve(f"r{i}", PRINCIPAL, 100, 60.0, 0.0).granted
            assert ledger.commit(SettledUsage(f"r{i}", PRINCIPAL, "openai", "m", 1, 1, 10, 0.0), [])
            publisher.notify()
            await asyncio.sleep(0.002)
        for _ in range(300):
            if sum(sink.publishes) >= calls:
                break
            await asyncio.sleep(0.01)
    finally:
        await publisher.stop()
        servicer.shutdown()
    records = await SpoolUsageSink(tmp_path / "spool.db", "t")._spool.read("check", 10_000)
    assert ledger.get_spend(Scope(ScopeKind.PROJECT, "acme", "search")).committed_nanos == 10 * calls
    ledger.close()
    return sink.publishes, len(records)


async def test_commits_within_the_linger_leave_in_one_publish(tmp_path: Path) -> None:
    publishes, spooled = await _publish_burst(tmp_path, linger_s=0.5, calls=10)
    assert spooled == 10  # every event once
    assert publishes == [10]


async def test_stop_publishes_what_waits_in_the_linger(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "ledger.db")
    servicer = BudgetServicer(ledger, 60.0, on_commit=lambda: None)
    sink = CountingSpoolSink(tmp_path / "spool.db")
    publisher = OutboxPublisher(ledger, sink, servicer.run_in_ledger_thread, linger_s=30.0)
    await publisher.start()
    await asyncio.sleep(0.05)
    assert ledger.reserve("r1", PRINCIPAL, 100, 60.0, 0.0).granted
    assert ledger.commit(SettledUsage("r1", PRINCIPAL, "openai", "m", 1, 1, 10, 0.0), [])
    publisher.notify()
    await asyncio.sleep(0.05)  # now lingering
    await asyncio.wait_for(publisher.stop(), 10.0)  # does not sit out the 30 s
    servicer.shutdown()
    ledger.close()
    assert sink.publishes == [1]
