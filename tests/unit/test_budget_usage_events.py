"""Usage event ids: one UUIDv7 per settled attempt of a request, fixed at commit, the same on
every re-send; attempt and provider attempts carried on the event. Budget's servicer over a
real SQLite ledger, no network."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from interlock.budget.v1 import budget_pb2
from interlock.services.budget.adapters.outbox_publisher import to_event
from interlock.services.budget.adapters.sqlite_ledger import SqliteLedger
from interlock.services.budget.api.servicer import BudgetServicer
from interlock.services.budget.domain.model import Principal
from interlock.services.budget.domain.usage import SettledUsage, usage_event_id

CONTEXT: Any = None  # the servicer's methods do not read their gRPC context
PRINCIPAL = budget_pb2.Principal(org="acme", project="search", developer="alice", api_key_id="k1")


def test_usage_event_id_is_a_uuid7_of_commit_time_and_request_attempt() -> None:
    at = 1_764_000_000.123
    first = uuid.UUID(usage_event_id("req-1", 0, at))
    assert first.version == 7 and first.variant == uuid.RFC_4122
    assert first.int >> 80 == 1_764_000_000_123  # unix milliseconds in the top 48 bits
    assert str(first) == usage_event_id("req-1", 0, at)  # deterministic
    others = {usage_event_id("req-1", 1, at), usage_event_id("req-2", 0, at), usage_event_id("req-1#1", 0, at)}
    assert str(first) not in others and len(others) == 3
    # Later commits sort after earlier ones, as text too (the ClickHouse sorting key).
    assert usage_event_id("req-9", 0, at) < usage_event_id("req-0", 0, at + 0.002)


async def test_each_attempt_is_its_own_event_and_a_replayed_commit_keeps_its_id(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "ledger.db")
    times = iter([100.0, 101.0, 102.5, 103.0, 104.0, 105.0, 106.0])
    servicer = BudgetServicer(ledger, 60.0, on_commit=lambda: None, clock=lambda: next(times))
    try:
        for attempt in (0, 1):
            reserve = budget_pb2.ReserveRequest(
                request_id="req-1", principal=PRINCIPAL, amount_nanos=50, attempt=attempt
            )
            assert (await servicer.Reserve(reserve, CONTEXT)).granted
        commits = [
            budget_pb2.CommitRequest(
                request_id="req-1", cost_nanos=7, provider="openai", model="m", attempt=0, provider_attempts=3
            ),
            budget_pb2.CommitRequest(request_id="req-1", cost_nanos=9, provider="openai", model="m", attempt=1),
        ]
        assert [(await servicer.Commit(c, CONTEXT)).first_commit for c in commits] == [True, True]
        pending = ledger.pending_events(10)
        events = [to_event(entry.usage) for entry in pending]
        # A replayed commit is answered as such and writes no second event.
        assert not (await servicer.Commit(commits[0], CONTEXT)).first_commit
        assert len(ledger.pending_events(10)) == 2
    finally:
        servicer.shutdown()
        ledger.close()

    assert [e.event_id for e in events] == [usage_event_id("req-1", 0, 102.5), usage_event_id("req-1", 1, 103.0)]
    assert all(uuid.UUID(e.event_id).version == 7 for e in events)
    assert [(e.attempt, e.provider_attempts, e.cost_nanos) for e in events] == [(0, 3, 7), (1, 0, 9)]
    assert all(e.schema_version == 2 for e in events)
    # The outbox rebuilds the event from the ledger row on every send: same id each time.
    reopened = SqliteLedger(tmp_path / "ledger.db")
    try:
        assert [to_event(entry.usage).event_id for entry in reopened.pending_events(10)] == [e.event_id for e in events]
    finally:
        reopened.close()


def test_a_row_committed_before_uuid7_ids_keeps_the_id_it_was_sent_with() -> None:
    legacy = SettledUsage("req-7#1", Principal("acme", "search", "alice"), "openai", "m", 1, 1, 5, 100.0)
    assert to_event(legacy).event_id == "req-7#1"
