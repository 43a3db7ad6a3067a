"""The router's cache of API key checks: a key in use is checked again in the background
in the last third of its cache life, so no call of a busy key waits for the budget service;
a key revoked meanwhile stops working as soon as that check says so.

The budget service is the real servicer over a real SQLite ledger, served by gRPC on
loopback; its key checks can be held back, to see that a call does not wait for them. The
cache's clock is the test's own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from polling import wait_until

from interlock._server import add_service
from interlock.budget.v1 import budget_pb2
from interlock.errors import AuthenticationError
from interlock.services.budget.adapters.sqlite_ledger import SqliteLedger
from interlock.services.budget.api.servicer import BudgetServicer
from interlock.services.budget.domain.model import Principal
from interlock.services.router.adapters.mesh_clients import BudgetClient
from interlock.services.router.domain.flow import Caller

TTL_S = 30.0


class CountingServicer(BudgetServicer):
    """The budget servicer, counting key checks; they wait while `gate` is closed."""

    def __init__(self, ledger: SqliteLedger) -> None:
        super().__init__(ledger, 60.0, on_commit=lambda: None)
        self.gate = asyncio.Event()
        self.gate.set()
        self.checks = 0

    async def AuthenticateApiKey(
        self, request: budget_pb2.AuthenticateApiKeyRequest, context: Any
    ) -> budget_pb2.AuthenticateApiKeyResponse:
        self.checks += 1
        await self.gate.wait()
        return await super().AuthenticateApiKey(request, context)


@dataclass
class Setup:
    ledger: SqliteLedger
    servicer: CountingServicer
    client: BudgetClient
    api_key: str
    caller: Caller
    now: list[float]

    def revoke(self) -> None:
        with self.ledger._tx() as tx:
            tx.run("UPDATE api_keys SET revoked_at = 1 WHERE key_id = ?", self.caller.api_key_id)


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    ledger = SqliteLedger(tmp_path / "ledger.db")
    key = ledger.create_api_key(Principal("acme", "search", "alice"), now=0.0)
    servicer = CountingServicer(ledger)
    server = grpc.aio.server()
    add_service(server, budget_pb2.DESCRIPTOR.services_by_name["BudgetService"], servicer)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    now = [1000.0]
    client = BudgetClient(f"127.0.0.1:{port}", auth_cache_ttl_s=TTL_S, clock=lambda: now[0])
    caller = Caller("acme", "search", "alice", key.key_id)
    try:
        yield Setup(ledger, servicer, client, key.api_key, caller, now)
    finally:
        await client.aclose()
        await server.stop(None)
        servicer.shutdown()
        ledger.close()


async def test_a_key_in_use_is_checked_again_in_the_background_before_its_entry_expires(setup: Setup) -> None:
    s = setup
    assert await s.client.authenticate(s.api_key) == s.caller
    assert s.servicer.checks == 1
    s.now[0] += TTL_S / 2  # early in its life: from the cache, nothing asked
    assert await s.client.authenticate(s.api_key) == s.caller
    assert s.servicer.checks == 1
    s.servicer.gate.clear()
    s.now[0] += TTL_S / 4  # in the last third: answered from the cache while the service is asked
    assert await asyncio.wait_for(s.client.authenticate(s.api_key), timeout=5) == s.caller
    await wait_until(lambda: s.servicer.checks == 2, "the background check")
    assert await s.client.authenticate(s.api_key) == s.caller  # one check at a time per key
    assert s.servicer.checks == 2
    s.servicer.gate.set()
    await wait_until(lambda: not s.client._auth_refreshing, "the background check to land")
    s.now[0] += TTL_S / 2  # past the first entry's expiry, within the renewed one's
    assert await asyncio.wait_for(s.client.authenticate(s.api_key), timeout=5) == s.caller
    assert s.servicer.checks == 2


async def test_a_key_revoked_stops_working_when_the_background_check_says_so(setup: Setup) -> None:
    s = setup
    assert await s.client.authenticate(s.api_key) == s.caller
    s.revoke()
    s.now[0] += TTL_S * 0.8  # the call that starts the check still gets the cached answer
    assert await s.client.authenticate(s.api_key) == s.caller
    await wait_until(lambda: not s.client._auth_refreshing, "the background check")
    with pytest.raises(AuthenticationError):
        await s.client.authenticate(s.api_key)
    assert s.servicer.checks == 3


async def test_an_idle_key_expires_and_the_next_call_waits_for_its_check(setup: Setup) -> None:
    s = setup
    assert await s.client.authenticate(s.api_key) == s.caller
    s.now[0] += TTL_S + 1
    s.servicer.gate.clear()
    waiting = asyncio.create_task(s.client.authenticate(s.api_key))
    await wait_until(lambda: s.servicer.checks == 2, "the check")
    await asyncio.sleep(0.05)
    assert not waiting.done()
    s.servicer.gate.set()
    assert await asyncio.wait_for(waiting, timeout=5) == s.caller
