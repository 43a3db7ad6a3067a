"""Commits sent after the caller has its answer (`INTERLOCK_ROUTER_COMMIT_AFTER_ANSWER`): the
router's budget client returns at once, the commit lands in the background (retried through
an outage of the budget service), the reservation holds the money until then, the router's
stop waits for it, and a lease is not closed while a commit under it is on its way.

The budget service is the real servicer over a real SQLite ledger, served by gRPC on
loopback; only its commit handlers can be held back, to see what happens meanwhile."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from polling import wait_until

from interlock._server import add_service
from interlock.budget.v1 import budget_pb2
from interlock.services.budget.adapters.sqlite_ledger import SqliteLedger
from interlock.services.budget.api.servicer import BudgetServicer
from interlock.services.budget.domain.model import BudgetPolicy, Scope, ScopeKind
from interlock.services.router.adapters.budget_leases import LeasePolicy
from interlock.services.router.adapters.mesh_clients import BudgetClient
from interlock.services.router.domain.chat import ChatCall
from interlock.services.router.domain.flow import Caller
from interlock.services.router.domain.provider import TokenUsage

CALLER = Caller("acme", "search", "alice", "k1")
PROJECT = Scope(ScopeKind.PROJECT, "acme", "search")


class GatedServicer(BudgetServicer):
    """The budget servicer, whose commits wait while `gate` is closed."""

    def __init__(self, ledger: SqliteLedger) -> None:
        super().__init__(ledger, 60.0, on_commit=lambda: None)
        self.gate = asyncio.Event()
        self.gate.set()
        self.batches: list[int] = []
        """Commits per Commit / CommitBatch call received."""

    async def Commit(self, request: budget_pb2.CommitRequest, context: Any) -> budget_pb2.CommitResponse:
        self.batches.append(1)
        await self.gate.wait()
        return await super().Commit(request, context)

    async def CommitBatch(self, request: budget_pb2.CommitBatchRequest, context: Any) -> budget_pb2.CommitBatchResponse:
        self.batches.append(len(request.commits))
        await self.gate.wait()
        return await super().CommitBatch(request, context)


@dataclass
class Budget:
    ledger: SqliteLedger
    servicer: GatedServicer
    port: int
    server: grpc.aio.Server

    async def start(self) -> None:
        self.server = grpc.aio.server()
        add_service(self.server, budget_pb2.DESCRIPTOR.services_by_name["BudgetService"], self.servicer)
        assert self.server.add_insecure_port(f"127.0.0.1:{self.port}") == self.port
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop(None)

    def spend(self) -> tuple[int, int]:
        spend = self.ledger.get_spend(PROJECT)
        return spend.committed_nanos, spend.reserved_nanos


@pytest.fixture
async def budget(tmp_path: Path) -> AsyncIterator[Budget]:
    ledger = SqliteLedger(tmp_path / "ledger.db")
    ledger.set_budget(PROJECT, BudgetPolicy(1_000_000_000))
    servicer = GatedServicer(ledger)
    server = grpc.aio.server()
    add_service(server, budget_pb2.DESCRIPTOR.services_by_name["BudgetService"], servicer)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    b = Budget(ledger, servicer, port, server)
    try:
        yield b
    finally:
        await b.stop()
        servicer.shutdown()
        ledger.close()


def call(request_id: str) -> ChatCall:
    route: Any = SimpleNamespace(name="gpt-4o-mini")  # commit reads only the route's name
    return ChatCall(route, (), 16, None, request_id, run_id="", agent="")


async def commit(client: BudgetClient, request_id: str, cost: int) -> None:
    # What ChatFlow._settle does after the provider answered.
    await client.commit(call(request_id), "openai", TokenUsage(10, 5), cost)


async def test_commit_returns_before_it_lands_and_the_reservation_holds_until_then(budget: Budget) -> None:
    client = BudgetClient(f"127.0.0.1:{budget.port}", commit_after_answer=True)
    try:
        assert (await client.reserve("r1", CALLER, 1_000, 5.0)).granted
        budget.servicer.gate.clear()
        await commit(client, "r1", 300)  # returns although the service has not taken it
        assert budget.spend() == (0, 1_000)  # the worst case is still held: the budget stays hard
        assert not await client.flush_commits(0.1)
        budget.servicer.gate.set()
        assert await client.flush_commits(5.0)
        assert budget.spend() == (300, 0)
        assert client.commits_lost == 0
    finally:
        await client.aclose()


async def test_commit_is_retried_through_an_outage_of_the_budget_service(budget: Budget) -> None:
    client = BudgetClient(f"127.0.0.1:{budget.port}", commit_after_answer=True)
    try:
        assert (await client.reserve("r1", CALLER, 1_000, 5.0)).granted
        await budget.stop()
        await commit(client, "r1", 400)
        await asyncio.sleep(0.5)  # a few failed attempts
        assert budget.spend() == (0, 1_000)
        await budget.start()
        assert await client.flush_commits(10.0)
        assert budget.spend() == (400, 0)
        assert client.commits_lost == 0
    finally:
        await client.aclose()


async def test_a_commit_refused_for_good_is_counted_lost_not_retried(budget: Budget) -> None:
    client = BudgetClient(f"127.0.0.1:{budget.port}", commit_after_answer=True)
    try:
        await commit(client, "never-reserved", 400)  # the service refuses it (NOT_FOUND)
        assert await client.flush_commits(5.0)
        assert client.commits_lost == 1
        assert budget.spend() == (0, 0)
    finally:
        await client.aclose()


async def test_stop_waits_for_pending_commits_before_closing_leases(budget: Budget) -> None:
    client = BudgetClient(f"127.0.0.1:{budget.port}", leases=LeasePolicy(slice_nanos=10_000), commit_after_answer=True)
    assert (await client.reserve("r1", CALLER, 1_000, 5.0)).granted
    assert client.leases is not None and client.leases.local_reservations == 1
    budget.servicer.gate.clear()
    await commit(client, "r1", 250)
    stopping = asyncio.create_task(client.aclose(commit_grace_s=10.0))
    await asyncio.sleep(0.3)
    assert not stopping.done()  # waiting for the commit, the lease still open
    assert budget.spend()[1] > 0
    budget.servicer.gate.set()
    await asyncio.wait_for(stopping, 10.0)
    # The commit landed under the lease, then the lease closed: nothing held, nothing lost.
    assert budget.spend() == (250, 0)


async def test_an_idle_lease_is_not_closed_while_a_commit_under_it_is_on_its_way(budget: Budget) -> None:
    client = BudgetClient(
        f"127.0.0.1:{budget.port}",
        leases=LeasePolicy(slice_nanos=10_000, idle_s=0.05),
        commit_after_answer=True,
    )
    try:
        assert (await client.reserve("r1", CALLER, 1_000, 5.0)).granted
        budget.servicer.gate.clear()
        await commit(client, "r1", 250)
        await asyncio.sleep(0.5)  # ten idle periods
        assert budget.spend()[1] >= 1_000  # still leased: the commit has not landed
        budget.servicer.gate.set()
        await wait_until(lambda: budget.spend() == (250, 0), "the commit, then the idle lease closed")
    finally:
        await client.aclose()


async def test_commits_sent_after_their_answers_share_a_round_trip(budget: Budget) -> None:
    client = BudgetClient(f"127.0.0.1:{budget.port}", commit_after_answer=True)
    try:
        for i in range(5):
            assert (await client.reserve(f"r{i}", CALLER, 1_000, 5.0)).granted
        for i in range(5):  # five calls answered within the commit linger
            await commit(client, f"r{i}", 100)
        assert await client.flush_commits(5.0)
        assert budget.servicer.batches == [5]
        assert budget.spend() == (500, 0)
    finally:
        await client.aclose()


async def test_a_commit_the_caller_waits_for_goes_out_at_once(budget: Budget) -> None:
    client = BudgetClient(f"127.0.0.1:{budget.port}")
    try:
        assert (await client.reserve("r1", CALLER, 1_000, 5.0)).granted
        await commit(client, "r1", 100)  # returns once the service has it
        assert budget.servicer.batches == [1]
        assert budget.spend() == (100, 0)
    finally:
        await client.aclose()
