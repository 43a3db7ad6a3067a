"""Cost analytics against real ClickHouse and Kafka: versioned migrations, copies kept out of
the rollups, the dead-letter topic, topic creation, the `interlock costs` queries, and
tenant scoping of QueryCosts by API key (checked by a real budget service)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import clickhouse_connect
import grpc
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from google.protobuf.timestamp_pb2 import Timestamp

from interlock import cli
from interlock.budget.v1 import budget_pb2, budget_pb2_grpc
from interlock.devservers import free_port
from interlock.errors import AuthenticationError, PermissionDeniedError, from_rpc_error
from interlock.services.budget.config import BudgetSettings
from interlock.services.budget.main import serve as serve_budget
from interlock.services.traceingest.adapters.clickhouse import HttpClickHouse
from interlock.services.traceingest.adapters.dead_letters import REASON_HEADER, SOURCE_HEADER
from interlock.services.traceingest.adapters.migrations import MigrationRunner, load_migrations
from interlock.services.traceingest.adapters.store import TraceStore
from interlock.services.traceingest.config import TraceIngestSettings
from interlock.services.traceingest.domain import CostQuery, UsageRecord
from interlock.services.traceingest.main import build_trace_ingest
from interlock.spool import UsageSpool
from interlock.traceingest.v1 import traceingest_pb2 as pb
from interlock.traceingest.v1.traceingest_pb2_grpc import TraceIngestServiceStub
from interlock.usage.v1.usage_pb2 import UsageEvent

pytestmark = pytest.mark.integration

T = TypeVar("T")
T0_MS = 1_760_000_000_000  # 2025-10-09 08:53:20 UTC


def _name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


async def eventually(check: Callable[[], Awaitable[T | None]], within_s: float = 60.0, what: str = "condition") -> T:
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        value = await check()
        if value is not None and value is not False:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def _record(i: int, project: str = "search", *, minutes: int = 7, **more: Any) -> UsageRecord:
    fields: dict[str, Any] = {
        "event_id": f"evt-{i}",
        "org": "acme",
        "project": project,
        "developer": f"dev-{i % 3}",
        "api_key_id": "key-1",
        "provider": "openai",
        "model": "gpt-4o-mini" if i % 2 else "gpt-4o",
        "input_tokens": 100 + i,
        "output_tokens": 10 + i,
        "cost_nanos": 1_000 + 7 * i,
        "status": "ok",
        "occurred_at_ms": T0_MS + i * minutes * 60_000,
        "trace_id": "",
        "run_id": f"run-{i % 4}",
        "agent": "planner",
        "cached_input_tokens": i % 5,
    }
    fields.update(more)
    return UsageRecord(**fields)


def _event(i: int, project: str, cost: int, **more: Any) -> UsageEvent:
    return UsageEvent(
        event_id=f"{project}-{i}",
        org="acme",
        project=project,
        developer="dev",
        api_key_id="key",
        provider="openai",
        model="gpt-4o-mini",
        input_tokens=10,
        output_tokens=5,
        cost_nanos=cost,
        status="ok",
        occurred_at=Timestamp(seconds=T0_MS // 1000 + i * 60),
        schema_version=2,
        **more,
    )


def _ingest_settings(tmp_path: Path, **fields: Any) -> TraceIngestSettings:
    base = TraceIngestSettings(
        port=0,
        chdb_path=str(tmp_path / "chdb"),
        spool_path=str(tmp_path / "spool.db"),
        dlq_spool_path=str(tmp_path / "spool.dlq.db"),
        retry_initial_s=0.05,
        retry_max_s=0.5,
        grace_s=2.0,
        budget_target="",
    )
    return replace(base, **fields)


@asynccontextmanager
async def running_trace_ingest(settings: TraceIngestSettings) -> AsyncIterator[tuple[Any, str]]:
    service = build_trace_ingest(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    while service.bound_port == 0:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.bound_port}")
    try:
        await asyncio.wait_for(channel.channel_ready(), 20)
        yield TraceIngestServiceStub(channel), f"127.0.0.1:{service.bound_port}"
    finally:
        await channel.close()
        stop.set()
        await asyncio.wait_for(task, 60)


# migrations


async def test_migrations_apply_in_order_once_and_upgrade_a_version_1_table(clickhouse_url: str) -> None:
    db = _name("mig")
    ch = clickhouse_connect.get_client(dsn=clickhouse_url)
    # A database as trace-ingest made it before versioned migrations, with one stored event.
    first = load_migrations()[0]
    ch.command(f"CREATE DATABASE {db}")
    for statement in first.statements(db):
        ch.command(statement)
    ch.command(
        f"INSERT INTO {db}.usage_events (event_id, org, project, developer, api_key_id, provider, model,"
        " input_tokens, output_tokens, cost_nanos, status, occurred_at, trace_id, run_id, agent)"
        " VALUES ('old-1', 'acme', 'search', 'dev', 'k', 'openai', 'gpt-4o', 10, 5, 12345, 'ok',"
        " '2025-10-09 08:00:00', '', '', '')"
    )
    client = HttpClickHouse(clickhouse_url)
    try:
        runner = MigrationRunner(client, db)
        applied = await runner.migrate()
        assert [m.version for m in applied] == [m.version for m in load_migrations()]
        assert await runner.migrate() == []  # idempotent: nothing left to apply
        recorded = await runner.applied()
        assert [(m.version, m.name) for m in recorded] == [(m.version, m.name) for m in load_migrations()]
        # New columns arrived with defaults; the old row was rolled up by the backfill.
        row = ch.query(f"SELECT cached_input_tokens, schema_version FROM {db}.usage_events").result_rows
        assert row == [(0, 1)]
        hourly = ch.query(f"SELECT sum(requests), sum(cost_nanos) FROM {db}.usage_hourly").result_rows
        assert hourly == [(1, 12345)]
        # Running the files again (a crash before they were recorded) changes nothing.
        for migration in load_migrations():
            for statement in migration.statements(db):
                ch.command(statement)
        assert ch.query(f"SELECT sum(requests) FROM {db}.usage_hourly").result_rows == [(1,)]
    finally:
        await client.close()
        ch.command(f"DROP DATABASE IF EXISTS {db}")


def test_db_migrate_command_prints_json(clickhouse_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    db = _name("cli")
    assert cli.main(["db", "migrate", "--clickhouse", clickhouse_url, "--database", db, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [m["version"] for m in out["applied_now"]] == [m.version for m in load_migrations()]
    assert cli.main(["db", "migrate", "--clickhouse", clickhouse_url, "--database", db, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["applied_now"] == []


# copies and rollups


async def test_copies_never_reach_raw_rows_or_rollups_and_rollups_answer_like_raw(clickhouse_url: str) -> None:
    db = _name("dedup")
    store = TraceStore(HttpClickHouse(clickhouse_url), db)
    try:
        records = [_record(i) for i in range(60)]
        assert await store.insert_usage(records[:40]) == 40
        # A replayed batch (crash before the offset commit), a re-sent event inside a new batch,
        # and a copy inside one batch: none of them counts twice.
        assert await store.insert_usage(records[:40]) == 0
        assert await store.insert_usage([*records[30:60], records[45]]) == 20
        ch = clickhouse_connect.get_client(dsn=clickhouse_url)
        assert ch.query(f"SELECT count() FROM {db}.usage_events").result_rows == [(60,)]
        total = sum(r.cost_nanos for r in records)
        assert ch.query(f"SELECT sum(requests), sum(cost_nanos) FROM {db}.usage_hourly").result_rows == [(60, total)]
        assert ch.query(f"SELECT sum(requests), sum(cost_nanos) FROM {db}.usage_daily").result_rows == [(60, total)]

        # The same answer from rollup + ragged-edge raw rows as from raw rows alone.
        since = datetime.fromtimestamp((T0_MS + 23 * 60_000 + 1234) / 1000, UTC)
        until = datetime.fromtimestamp((T0_MS + 5 * 3600_000 + 17_000) / 1000, UTC)
        expected = sum(
            r.cost_nanos for r in records if since.timestamp() * 1000 <= r.occurred_at_ms < until.timestamp() * 1000
        )
        for dims in (["project"], ["developer", "model"], ["day"], ["hour"], ["run_id"], []):
            rows = await store.query_costs(CostQuery.parse(dims, since, "", "", until=until))
            assert sum(r.cost_nanos for r in rows) == expected, dims
        top = await store.query_costs(CostQuery.parse(["developer"], None, "", "", limit=2))
        assert len(top) == 2 and top[0].cost_nanos >= top[1].cost_nanos
    finally:
        await store.close()


async def test_reprice_recomputes_from_tokens_and_leaves_raw_costs(clickhouse_url: str) -> None:
    from interlock.services.traceingest.adapters.repricing import ListPrices, reprice_usage

    db = _name("reprice")
    store = TraceStore(HttpClickHouse(clickhouse_url), db)
    try:
        records = [_record(i, cost_nanos=1) for i in range(10)]
        await store.insert_usage(records)
        report = await reprice_usage(store, T0_MS, ListPrices(), page=3)
        assert report.events == report.repriced == 10 and report.billed_nanos == 10
        billed = await store.query_costs(CostQuery.parse(["model"], None, "", ""))
        repriced = await store.query_costs(CostQuery.parse(["model"], None, "", "", repriced=True))
        assert sum(r.cost_nanos for r in billed) == 10  # raw events untouched
        assert sum(r.cost_nanos for r in repriced) == report.repriced_nanos > 10
    finally:
        await store.close()


# Kafka: topics and dead letters


async def test_malformed_events_go_to_the_dead_letter_topic_and_never_block(
    kafka_bootstrap: str, clickhouse_url: str, tmp_path: Path
) -> None:
    topic, db = _name("usage"), _name("dlq")
    settings = _ingest_settings(
        tmp_path,
        kafka_bootstrap=kafka_bootstrap,
        clickhouse_url=clickhouse_url,
        database=db,
        usage_topic=topic,
        dlq_topic=f"{topic}.dlq",
        consumer_group=_name("group"),
        usage_topic_partitions=3,
    )
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True)
    async with running_trace_ingest(settings) as (stub, _):
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:

            async def created() -> list[Any] | None:
                # Listing first: describing a missing topic would auto-create it with defaults.
                if not {topic, f"{topic}.dlq"} <= set(await admin.list_topics()):
                    return None
                found = await admin.describe_topics([topic, f"{topic}.dlq"])
                ok = all(t["error_code"] == 0 and t["partitions"] for t in found)
                return found if ok else None

            described = {t["topic"]: len(t["partitions"]) for t in await eventually(created, what="topics")}
            assert described == {topic: 3, f"{topic}.dlq": 1}
        finally:
            await admin.close()
        await producer.start()
        try:
            await producer.send_and_wait(topic, _event(1, "search", 100).SerializeToString(), key=b"acme/search")
            await producer.send_and_wait(topic, b"\xff\xfe not protobuf", key=b"acme/search")
            await producer.send_and_wait(topic, _event(2, "search", -5).SerializeToString(), key=b"acme/search")
            await producer.send_and_wait(topic, _event(3, "search", 200).SerializeToString(), key=b"acme/search")
        finally:
            await producer.stop()

        async def total() -> int | None:
            response = await stub.QueryCosts(pb.QueryCostsRequest(group_by=["project"]))
            return response.rows[0].cost_nanos if response.rows and response.rows[0].requests == 2 else None

        assert await eventually(total, what="the two good events") == 300

    consumer = AIOKafkaConsumer(f"{topic}.dlq", bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        letters: list[Any] = []
        while len(letters) < 2:
            batch = await asyncio.wait_for(consumer.getmany(timeout_ms=1000), 30)
            letters += [r for records in batch.values() for r in records]
    finally:
        await consumer.stop()
    reasons = [dict(r.headers)[REASON_HEADER].decode() for r in letters]
    assert "DecodeError" in reasons[0]
    assert "cost_nanos is negative" in reasons[1]
    assert dict(letters[0].headers)[SOURCE_HEADER].decode().startswith(f"{topic}/")
    assert letters[0].value == b"\xff\xfe not protobuf"


def test_kafka_topics_create_command(kafka_bootstrap: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["kafka", "topics", "create", "--kafka", kafka_bootstrap, "--partitions", "4", "--json"]
    assert cli.main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert {t["name"]: t["partitions"] for t in first["topics"]} == {
        "interlock.usage.v1": 4,
        "interlock.usage.v1.dlq": 1,
    }
    assert cli.main(args) == 0
    assert json.loads(capsys.readouterr().out)["created"] == []


# tenant scoping (done-when c)


@asynccontextmanager
async def running_budget(tmp_path: Path) -> AsyncIterator[str]:
    port = free_port()
    settings = BudgetSettings(
        port=port,
        db_path=str(tmp_path / "ledger.db"),
        spool_path=str(tmp_path / "budget-spool.db"),
        alerts_spool_path=str(tmp_path / "alerts.db"),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(serve_budget(settings, stop))
    target = f"127.0.0.1:{port}"
    async with grpc.aio.insecure_channel(target) as channel:
        await asyncio.wait_for(channel.channel_ready(), 20)
    try:
        yield target
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)


async def test_a_project_key_reads_only_its_own_projects_costs(tmp_path: Path) -> None:
    async with running_budget(tmp_path) as budget_target:
        async with grpc.aio.insecure_channel(budget_target) as channel:
            budget = budget_pb2_grpc.BudgetServiceStub(channel)
            key_a = (
                await budget.CreateApiKey(budget_pb2.CreateApiKeyRequest(org="acme", project="alpha", developer="ann"))
            ).api_key
        spool = UsageSpool(tmp_path / "spool.db")
        for i, (project, cost) in enumerate([("alpha", 100), ("alpha", 20), ("beta", 5000), ("beta", 7)]):
            event = _event(i, project, cost)
            await spool.append(f"acme/{project}", event.SerializeToString())
        spool.close()
        settings = _ingest_settings(tmp_path, budget_target=budget_target, chdb_path=str(tmp_path / "chdb"))
        async with running_trace_ingest(settings) as (stub, _):

            async def everything() -> Any:
                response = await stub.QueryCosts(pb.QueryCostsRequest(group_by=["project"]))
                return response if sum(r.requests for r in response.rows) == 4 else None

            operator = await eventually(everything, what="all usage stored")
            assert {r.keys[0] for r in operator.rows} == {"alpha", "beta"}

            as_a = [("authorization", f"Bearer {key_a}")]
            mine = await stub.QueryCosts(pb.QueryCostsRequest(group_by=["project", "developer"]), metadata=as_a)
            assert [(list(r.keys), r.cost_nanos) for r in mine.rows] == [(["alpha", "dev"], 120)]
            by_day = await stub.QueryCosts(pb.QueryCostsRequest(group_by=["day"]), metadata=as_a)
            assert sum(r.cost_nanos for r in by_day.rows) == 120

            with pytest.raises(grpc.RpcError) as denied:
                await stub.QueryCosts(pb.QueryCostsRequest(group_by=["project"], project="beta"), metadata=as_a)
            assert isinstance(from_rpc_error(denied.value), PermissionDeniedError)
            with pytest.raises(grpc.RpcError) as other_org:
                await stub.QueryCosts(pb.QueryCostsRequest(group_by=["project"], org="globex"), metadata=as_a)
            assert isinstance(from_rpc_error(other_org.value), PermissionDeniedError)
            with pytest.raises(grpc.RpcError) as forged:
                bad = [("authorization", "Bearer il_0000_not-a-key")]
                await stub.QueryCosts(pb.QueryCostsRequest(group_by=["project"]), metadata=bad)
            assert isinstance(from_rpc_error(forged.value), AuthenticationError)


def _router_span(trace_id: str, span_id: str, org: str, project: str) -> Any:
    """An OTLP span as the router exports its server span: the caller's org and project on it."""
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    # Recent: span attribute maps are cleared 30 days after the span (migration 004).
    start_ns = time.time_ns() - 60_000_000_000
    return Span(
        trace_id=bytes.fromhex(trace_id),
        span_id=bytes.fromhex(span_id),
        name="interlock.router.v1.RouterService/Chat",
        kind=Span.SPAN_KIND_SERVER,
        start_time_unix_nano=start_ns,
        end_time_unix_nano=start_ns + 5_000_000,
        attributes=[
            KeyValue(key="interlock.org", value=AnyValue(string_value=org)),
            KeyValue(key="interlock.project", value=AnyValue(string_value=project)),
        ],
    )


async def test_a_project_key_reads_only_its_own_projects_traces(tmp_path: Path) -> None:
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans

    alpha_trace, beta_trace = "a1" * 16, "b2" * 16
    async with running_budget(tmp_path) as budget_target:
        async with grpc.aio.insecure_channel(budget_target) as channel:
            budget = budget_pb2_grpc.BudgetServiceStub(channel)
            key_a = (
                await budget.CreateApiKey(budget_pb2.CreateApiKeyRequest(org="acme", project="alpha", developer="ann"))
            ).api_key
        settings = _ingest_settings(tmp_path, budget_target=budget_target, chdb_path=str(tmp_path / "chdb"))
        async with running_trace_ingest(settings) as (stub, address):
            spans = [
                _router_span(alpha_trace, "01" * 8, "acme", "alpha"),
                _router_span(beta_trace, "02" * 8, "acme", "beta"),
            ]
            async with grpc.aio.insecure_channel(address) as otlp_channel:
                otlp = trace_service_pb2_grpc.TraceServiceStub(otlp_channel)  # type: ignore[no-untyped-call]
                await otlp.Export(
                    trace_service_pb2.ExportTraceServiceRequest(
                        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=spans)])]
                    )
                )

            async def both_stored() -> bool:
                found = [await stub.GetTrace(pb.GetTraceRequest(trace_id=t)) for t in (alpha_trace, beta_trace)]
                return all(len(r.spans) == 1 for r in found)

            await eventually(both_stored, what="spans stored")  # keyless: an operator reads every trace

            as_a = [("authorization", f"Bearer {key_a}")]
            mine = await stub.GetTrace(pb.GetTraceRequest(trace_id=alpha_trace), metadata=as_a)
            assert [s.span_id for s in mine.spans] == ["01" * 8]
            # Another project's trace answers exactly as a trace that does not exist.
            theirs = await stub.GetTrace(pb.GetTraceRequest(trace_id=beta_trace), metadata=as_a)
            missing = await stub.GetTrace(pb.GetTraceRequest(trace_id="c3" * 16), metadata=as_a)
            assert list(theirs.spans) == [] and theirs == missing
            with pytest.raises(grpc.RpcError) as forged:
                bad = [("authorization", "Bearer il_0000_not-a-key")]
                await stub.GetTrace(pb.GetTraceRequest(trace_id=beta_trace), metadata=bad)
            assert isinstance(from_rpc_error(forged.value), AuthenticationError)


# the CLI over a running trace-ingest (embedded: spool + chdb)


async def test_costs_command_answers_totals_top_per_run_change_csv_and_chart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spool = UsageSpool(tmp_path / "spool.db")
    for i, (project, cost) in enumerate([("alpha", 100), ("alpha", 20), ("beta", 5000), ("beta", 7)]):
        event = _event(i * 1440, project, cost, run_id=f"run-{i % 2}", agent="planner")  # one a day
        await spool.append(f"acme/{project}", event.SerializeToString())
    spool.close()
    async with running_trace_ingest(_ingest_settings(tmp_path)) as (stub, address):

        async def stored() -> bool:
            response = await stub.QueryCosts(pb.QueryCostsRequest(group_by=[]))
            return bool(response.rows) and response.rows[0].requests == 4

        await eventually(stored, what="usage stored")
        target = ["--traceingest-target", address]

        async def run(*args: str) -> str:
            assert await asyncio.to_thread(cli.main, [*args, *target]) == 0
            return capsys.readouterr().out

        top = json.loads(await run("costs", "--by", "project", "--top", "1", "--json"))
        assert [(r["project"], r["cost_nanos"]) for r in top] == [("beta", 5007)]
        csv_out = (await run("costs", "--by", "project", "--csv")).splitlines()
        assert csv_out[0].startswith("project,requests") and csv_out[1].startswith("beta,2,")
        runs = json.loads(await run("costs", "--per-run", "--json"))
        assert {r["run_id"]: r["cost_nanos"] for r in runs} == {"run-0": 5100, "run-1": 27}
        change = json.loads(await run("costs", "--by", "project", "--change", "--since", "2025-10-01", "--json"))
        assert [(c["project"], c["change_pct"]) for c in change if c["project"] == "alpha"] == [
            ("alpha", "new"),
            ("alpha", "-80.0%"),
        ]
        table = await run("costs", "--by", "day")
        assert table.splitlines()[0].split()[:2] == ["DAY", "REQUESTS"]
        out = tmp_path / "cost.html"
        await run("costs", "chart", "--project", "alpha", "--since", "2025-10-01", "--out", str(out))
        assert out.read_text().count("<rect") == 2
