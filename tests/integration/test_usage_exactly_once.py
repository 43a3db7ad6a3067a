"""Done-when (a): 100,000 usage events through Kafka into ClickHouse, counted exactly once.

Real processes only: a Kafka 4 broker and a ClickHouse server of this test's own (so they
can be restarted), and trace-ingest as a child process (so it can be killed with SIGKILL,
which is a crash between an insert and its offset commit). Events are produced the way
budget's outbox publishes them (UsageEvent protobuf, key `org/project`, idempotent
producer, acks=all), including the copies an outbox sends again after its own crash and a
few malformed records. Along the way: trace-ingest is killed and restarted twice, Kafka is
restarted, and ClickHouse is stopped for 30 seconds. At the end the table holds exactly
one row per event, and every total equals the ledger's (the produced events'), to the
nano-dollar.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import clickhouse_connect
import grpc
import pytest
from aiokafka import AIOKafkaProducer
from google.protobuf.timestamp_pb2 import Timestamp

from interlock.devservers import ClickHouseServer, DevServerError, KafkaBroker, free_port
from interlock.traceingest.v1 import traceingest_pb2 as pb
from interlock.traceingest.v1.traceingest_pb2_grpc import TraceIngestServiceStub
from interlock.usage.v1.usage_pb2 import UsageEvent

pytestmark = pytest.mark.integration

EVENTS = 100_000
CHUNKS = 10
PROJECTS = [f"project-{i}" for i in range(12)]
MODELS = ["gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet", "gemini-2.0-flash"]
TOPIC = "interlock.usage.v1"
DATABASE = "interlock"


def _ledger(seed: int = 7) -> list[UsageEvent]:
    """The events the ledger committed: ids unique per request and attempt, costs in nano-dollars."""
    rng = random.Random(seed)
    events = []
    for i in range(EVENTS):
        attempt = 1 if i % 50 == 0 else 0
        events.append(
            UsageEvent(
                event_id=f"req-{i:06d}" + (f"#{attempt}" if attempt else ""),
                org="acme",
                project=rng.choice(PROJECTS),
                developer=f"dev-{rng.randrange(40)}",
                api_key_id=f"key-{rng.randrange(40)}",
                provider="openai",
                model=rng.choice(MODELS),
                input_tokens=rng.randrange(1, 4000),
                output_tokens=rng.randrange(1, 800),
                cached_input_tokens=rng.randrange(0, 2),
                cost_nanos=rng.randrange(1, 50_000_000),
                status="ok",
                occurred_at=Timestamp(seconds=1_760_000_000 + i * 3, nanos=(i % 1000) * 1_000_000),
                run_id=f"run-{i // 20}",
                agent=rng.choice(["planner", "coder", "critic"]),
                attempt=attempt,
                schema_version=2,
            )
        )
    return events


@pytest.fixture
def servers(
    kafka_bootstrap: str, clickhouse_url: str, tmp_path: Path
) -> Iterator[tuple[KafkaBroker, ClickHouseServer]]:
    """A Kafka broker and a ClickHouse server of this test alone (the session ones must not restart)."""
    del kafka_bootstrap, clickhouse_url  # required only so a missing Kafka/ClickHouse skips (fails in CI)
    kafka = KafkaBroker(tmp_path / "kafka", partitions=6)
    clickhouse = ClickHouseServer(tmp_path / "clickhouse")
    try:
        kafka.start()
        clickhouse.start()
    except (DevServerError, OSError) as exc:
        kafka.stop()
        pytest.fail(f"cannot start test servers: {exc}")
    try:
        yield kafka, clickhouse
    finally:
        clickhouse.stop()
        kafka.stop()


class TraceIngestProcess:
    """`python -m interlock.services.traceingest` as a child, killable with SIGKILL."""

    def __init__(self, kafka: str, clickhouse: str, log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.env = {
            **os.environ,
            "INTERLOCK_TRACEINGEST_PORT": str(self.port),
            "INTERLOCK_TRACEINGEST_KAFKA_BOOTSTRAP": kafka,
            "INTERLOCK_TRACEINGEST_CLICKHOUSE_URL": clickhouse,
            "INTERLOCK_TRACEINGEST_USAGE_BATCH_SIZE": "5000",
            "INTERLOCK_TRACEINGEST_RETRY_MAX_S": "1",
            "INTERLOCK_TRACEINGEST_BUDGET_TARGET": "",
            "INTERLOCK_TRACEINGEST_LOG_LEVEL": "warning",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "interlock.services.traceingest"], env=self.env, stdout=out, stderr=out
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


async def _produce(producer: AIOKafkaProducer, events: list[UsageEvent]) -> None:
    futures = [await producer.send(TOPIC, e.SerializeToString(), key=f"{e.org}/{e.project}".encode()) for e in events]
    await asyncio.gather(*futures)


def _stored_rows(url: str) -> int:
    try:
        client = clickhouse_connect.get_client(dsn=url)
        return int(client.query(f"SELECT count() FROM {DATABASE}.usage_events").result_rows[0][0])
    except Exception:  # noqa: BLE001 - down or not created yet
        return -1


async def _wait_for_rows(url: str, minimum: int, within_s: float) -> int:
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        rows = await asyncio.to_thread(_stored_rows, url)
        if rows >= minimum or asyncio.get_running_loop().time() > deadline:
            return rows
        await asyncio.sleep(0.2)


async def test_100k_events_counted_exactly_once_through_crashes_and_outages(
    servers: tuple[KafkaBroker, ClickHouseServer], tmp_path: Path
) -> None:
    kafka, clickhouse = servers
    ledger = _ledger()
    ledger_total = sum(e.cost_nanos for e in ledger)
    chunk = EVENTS // CHUNKS
    resent = ledger[10_000:11_000]  # what an outbox re-sends after dying before marking them published
    ingest = TraceIngestProcess(kafka.bootstrap, clickhouse.url, tmp_path / "trace-ingest.log")
    ingest.start()
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all", enable_idempotence=True, linger_ms=20)
    await producer.start()
    try:
        chunks = [ledger[n * chunk : (n + 1) * chunk] for n in range(CHUNKS)]
        await _produce(producer, chunks[0])
        await _produce(producer, chunks[1])
        # Crash mid-stream, likely between an insert and its offset commit; then come back.
        await _wait_for_rows(clickhouse.url, 5_000, 60)
        ingest.kill()
        ingest.start()
        await _produce(producer, chunks[2])
        await _produce(producer, chunks[3])
        await _produce(producer, resent)
        await producer.send_and_wait(TOPIC, b"\x08\x96\x01 not a usage event", key=b"acme/project-0")
        # Kafka restarts on the same port and data.
        await producer.stop()
        await asyncio.to_thread(kafka.stop)
        await asyncio.to_thread(kafka.start)
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all", enable_idempotence=True)
        await producer.start()
        await _produce(producer, chunks[4])
        await _produce(producer, chunks[5])
        # ClickHouse away for 30 s while events keep coming; trace-ingest holds and retries.
        await asyncio.to_thread(clickhouse.stop)
        await _produce(producer, chunks[6])
        await asyncio.sleep(30)
        await asyncio.to_thread(clickhouse.start)
        await _produce(producer, chunks[7])
        await _produce(producer, chunks[8])
        ingest.kill()
        ingest.start()
        await _produce(producer, chunks[9])
        await producer.send_and_wait(TOPIC, b"", key=b"acme/project-1")  # empty value: dead-lettered
    finally:
        await producer.stop()

    rows = await _wait_for_rows(clickhouse.url, EVENTS, 150)
    try:
        assert rows == EVENTS, f"{rows} rows stored of {EVENTS}"
        await asyncio.sleep(1.0)  # nothing more may arrive: the copies were dropped, not delayed
        client = clickhouse_connect.get_client(dsn=clickhouse.url)
        raw = client.query(
            f"SELECT count(), uniqExact(event_id), sum(cost_nanos) FROM {DATABASE}.usage_events"
        ).result_rows[0]
        final = client.query(f"SELECT count(), sum(cost_nanos) FROM {DATABASE}.usage_events FINAL").result_rows[0]
        hourly = client.query(f"SELECT sum(requests), sum(cost_nanos) FROM {DATABASE}.usage_hourly").result_rows[0]
        daily = client.query(f"SELECT sum(requests), sum(cost_nanos) FROM {DATABASE}.usage_daily").result_rows[0]
        assert tuple(raw) == (EVENTS, EVENTS, ledger_total)  # no copy even before merges
        assert tuple(final) == (EVENTS, ledger_total)
        assert tuple(hourly) == (EVENTS, ledger_total)
        assert tuple(daily) == (EVENTS, ledger_total)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{ingest.port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 30)
            stub = TraceIngestServiceStub(channel)
            response = await stub.QueryCosts(pb.QueryCostsRequest(group_by=["project"]))
            assert sum(r.requests for r in response.rows) == EVENTS
            assert sum(r.cost_nanos for r in response.rows) == ledger_total
            per_project = {r.keys[0]: r.cost_nanos for r in response.rows}
        expected = {p: sum(e.cost_nanos for e in ledger if e.project == p) for p in PROJECTS}
        assert per_project == expected
    finally:
        ingest.stop()
