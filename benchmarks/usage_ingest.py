"""Usage analytics at volume: ingest rate, freshness and rollup query latency.

Four phases against a real Kafka and ClickHouse (started locally unless given), printing
progress on stderr:

1. bulk: `--rows` synthetic usage rows (12 projects, 200 developers, 8 models, 120 days,
   UUIDv7 event ids) generated inside ClickHouse with INSERT ... SELECT FROM numbers() in
   chunks of 1M, through the same materialized views that keep the rollups. These rows do
   not travel through Kafka: they are the volume the queries and the consumer's copy checks
   run against;
2. stream: `--stream-events` UsageEvents produced to Kafka as budget does (key org/project,
   idempotent, acks=all, a W3C traceparent header) while trace-ingest is down, then
   trace-ingest (a child process) is started and drains that backlog into ClickHouse. One
   backlog per share in `--sampled` (default: every trace sampled, then 1% as the mesh
   samples in production), each drained by a fresh trace-ingest. Ingest rate = events /
   (first row stored -> last row stored), and trace-ingest's CPU per event, read from
   /proc (robust on a shared machine);
3. freshness: `--fresh-events` more at `--rate` events/s into the running trace-ingest;
   freshness = p95 of (row's ingested_at - event's occurred_at, stamped when the request
   was done);
4. queries: each dashboard query of `interlock costs` `--repeat` times; p50/p95 in ms.

The issue's volume is 100 million rows (the default of --rows); a smaller run prints what
the full volume would take at its measured rates:

    make bench-ingest ROWS=2000000
    python -m benchmarks.usage_ingest --rows 10000000 --stream-events 200000 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import clickhouse_connect
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from google.protobuf.timestamp_pb2 import Timestamp

from interlock.devservers import ClickHouseServer, KafkaBroker, free_port
from interlock.services.budget.domain.usage import usage_event_id
from interlock.services.traceingest.adapters.clickhouse import HttpClickHouse
from interlock.services.traceingest.adapters.kafka_topics import ensure_topics
from interlock.services.traceingest.adapters.migrations import MigrationRunner
from interlock.services.traceingest.config import TraceIngestSettings
from interlock.services.traceingest.main import usage_topic_specs
from interlock.usage.v1.usage_pb2 import UsageEvent

DB = "interlock"
TOPIC = "interlock.usage.v1"
BULK_CHUNK = 1_000_000

# Synthetic rows computed by ClickHouse from the row number: cheap to make, realistic spread.
BULK_SQL = """
INSERT INTO {db}.usage_events (event_id, org, project, developer, api_key_id, provider, model,
    input_tokens, output_tokens, cached_input_tokens, reasoning_tokens, cost_nanos, status, occurred_at,
    trace_id, run_id, agent, latency_ms, schema_version)
SELECT
    toString(generateUUIDv7(number)),
    'acme',
    concat('project-', toString(number % 12)),
    concat('dev-', toString(cityHash64(number, 1) % 200)),
    concat('key-', toString(cityHash64(number, 1) % 200)),
    ['openai', 'anthropic', 'google', 'mistral'][1 + number % 4],
    ['gpt-4o', 'gpt-4o-mini', 'claude-3-5-sonnet', 'claude-3-5-haiku', 'gemini-2.0-flash',
     'gemini-1.5-pro', 'mistral-large', 'mistral-small'][1 + cityHash64(number, 2) % 8],
    100 + cityHash64(number, 3) % 4000,
    10 + cityHash64(number, 4) % 800,
    cityHash64(number, 5) % 100,
    0,
    1000 + cityHash64(number, 6) % 20000000,
    'ok',
    toDateTime64(now() - toIntervalSecond(cityHash64(number, 7) % (120 * 86400)), 3, 'UTC'),
    '',
    concat('run-', toString(intDiv(number, 25))),
    ['planner', 'coder', 'critic', 'researcher'][1 + number % 4],
    200 + cityHash64(number, 8) % 5000,
    2
FROM numbers({start}, {count})
"""

QUERIES = {
    "totals by project (30d, rollup)": (
        "SELECT project, sum(requests), sum(cost_nanos) FROM {db}.usage_hourly"
        " WHERE hour >= now() - INTERVAL 30 DAY GROUP BY project ORDER BY 3 DESC"
    ),
    "project x developer x model (7d, rollup)": (
        "SELECT developer, model, sum(requests), sum(cost_nanos) FROM {db}.usage_hourly"
        " WHERE org = 'acme' AND project = 'project-3' AND hour >= now() - INTERVAL 7 DAY"
        " GROUP BY developer, model ORDER BY 4 DESC"
    ),
    "cost per day of a project (90d, rollup)": (
        "SELECT day, sum(cost_nanos) FROM {db}.usage_daily"
        " WHERE org = 'acme' AND project = 'project-5' AND day >= today() - 90 GROUP BY day ORDER BY day"
    ),
    "top 10 developers (30d, rollup)": (
        "SELECT developer, sum(cost_nanos) AS c FROM {db}.usage_daily"
        " WHERE day >= today() - 30 GROUP BY developer ORDER BY c DESC LIMIT 10"
    ),
    "day-over-day by model (14d, rollup)": (
        "SELECT day, model, sum(cost_nanos) FROM {db}.usage_daily"
        " WHERE day >= today() - 14 GROUP BY day, model ORDER BY day, model"
    ),
    "cost per run of a project (1d, raw FINAL)": (
        "SELECT run_id, sum(cost_nanos) AS c FROM {db}.usage_events FINAL"
        " WHERE org = 'acme' AND project = 'project-7' AND occurred_at >= now() - INTERVAL 1 DAY"
        " GROUP BY run_id ORDER BY c DESC LIMIT 20"
    ),
}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _event(i: int, agent: str) -> UsageEvent:
    done = Timestamp()
    done.GetCurrentTime()  # "request done": the producer stamps it as the budget commit would
    return UsageEvent(
        event_id=usage_event_id(f"{agent}-{i}", 0, done.ToNanoseconds() / 1e9),
        org="acme",
        project=f"project-{i % 12}",
        developer=f"dev-{i % 200}",
        api_key_id=f"key-{i % 200}",
        provider="openai",
        model="gpt-4o-mini",
        input_tokens=100 + i % 1000,
        output_tokens=20 + i % 300,
        cost_nanos=1000 + i % 100_000,
        status="ok",
        occurred_at=done,
        trace_id=f"{i + 1:032x}",
        run_id=f"run-{i // 20}",
        agent=agent,
        schema_version=2,
    )


def _headers(i: int, sampled: float) -> list[tuple[str, bytes]]:
    """The traceparent budget's produce span would inject; sampled for a `sampled` share of events."""
    flags = "01" if (i * 0.6180339887) % 1.0 < sampled else "00"
    return [("traceparent", f"00-{i + 1:032x}-{i + 1:016x}-{flags}".encode())]


def _count(client: Any, agent: str) -> int:
    sql = f"SELECT count() FROM {DB}.usage_events WHERE agent = '{agent}'"
    return int(client.query(sql).result_rows[0][0])


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _produce_backlog(bootstrap: str, events: int, sampled: float, agent: str) -> float:
    """Produce `events` in full batches per partition (keyed as budget keys them); returns seconds."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=50, max_batch_size=1 << 20
    )
    await producer.start()
    start = time.perf_counter()
    try:
        partitions = sorted(await producer.partitions_for(TOPIC))
        choose = DefaultPartitioner()
        batches: dict[int, Any] = {}
        pending: list[asyncio.Future[Any]] = []
        for i in range(events):
            event = _event(i, agent)
            key = f"acme/{event.project}".encode()
            partition = choose(key, partitions, partitions)
            value = event.SerializeToString()
            batch = batches.setdefault(partition, producer.create_batch())
            if batch.append(key=key, value=value, timestamp=None, headers=_headers(i, sampled)) is None:
                pending.append(await producer.send_batch(batch, TOPIC, partition=partition))
                batch = batches[partition] = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None, headers=_headers(i, sampled))
            if (i + 1) % 100_000 == 0:
                _progress(f"stream: produced {i + 1:,} of {events:,}")
        for partition, batch in batches.items():
            pending.append(await producer.send_batch(batch, TOPIC, partition=partition))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - start


async def _produce_paced(bootstrap: str, events: int, rate: float, sampled: float, agent: str) -> None:
    """Produce `events` one by one at `rate` a second, as budget publishes commits."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    start = time.perf_counter()
    try:
        futures = []
        for i in range(events):
            e = _event(i, agent)
            value = e.SerializeToString()
            futures.append(
                await producer.send(TOPIC, value, key=f"acme/{e.project}".encode(), headers=_headers(i, sampled))
            )
            # Paced: stay on the schedule `rate` sets, so freshness is not a backlog's age.
            ahead = (i + 1) / rate - (time.perf_counter() - start)
            if ahead > 0:
                await asyncio.sleep(ahead)
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _prepare(url: str, bootstrap: str, partitions: int) -> None:
    """Schema and topics as trace-ingest makes them at start, before any row is loaded."""
    client = HttpClickHouse(url)
    try:
        await MigrationRunner(client, DB).migrate()
    finally:
        await client.close()
    await ensure_topics(bootstrap, usage_topic_specs(TraceIngestSettings(usage_topic_partitions=partitions)))


def _wait_for(client: Any, agent: str, events: int, ingest: subprocess.Popen[bytes]) -> dict[str, float]:
    """Poll until `events` rows of `agent` are stored; rate and trace-ingest CPU from the first row on."""
    first_t = first_cpu = 0.0
    first_rows = 0
    last_report = time.perf_counter()
    while True:  # polling is the measurement: "queryable" is what a reader sees
        if ingest.poll() is not None:
            raise RuntimeError(f"trace-ingest exited with {ingest.returncode}")
        rows = _count(client, agent)
        now = time.perf_counter()
        if rows and not first_t:
            first_t, first_cpu, first_rows = now, _cpu_seconds(ingest.pid), rows
        if rows >= events:
            cpu = _cpu_seconds(ingest.pid) - first_cpu
            drained = max(1, rows - first_rows)
            return {"seconds": now - first_t, "rows": drained, "cpu_s": cpu}
        if now - last_report > 5:
            _progress(f"stream: {rows:,} of {events:,} stored")
            last_report = now
        time.sleep(0.05)


def _start_ingest(work: Path, bootstrap: str, url: str, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "INTERLOCK_TRACEINGEST_PORT": str(free_port()),
        "INTERLOCK_TRACEINGEST_KAFKA_BOOTSTRAP": bootstrap,
        "INTERLOCK_TRACEINGEST_CLICKHOUSE_URL": url,
        "INTERLOCK_TRACEINGEST_USAGE_BATCH_SIZE": str(args.batch),
        "INTERLOCK_TRACEINGEST_BUDGET_TARGET": "",
        "INTERLOCK_TRACEINGEST_LOG_LEVEL": "warning",
        "INTERLOCK_TRACEINGEST_KAFKA_RECEIVE_SPANS": "false" if args.no_receive_spans else "true",
    }
    with (work / "trace-ingest.log").open("ab") as log:
        return subprocess.Popen([sys.executable, "-m", "interlock.services.traceingest"], env=env, stderr=log)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _shares(text: str) -> list[float]:
    shares = [float(part) for part in text.split(",") if part.strip()]
    if not shares or any(not 0.0 <= share <= 1.0 for share in shares):
        raise argparse.ArgumentTypeError(f"expected shares between 0 and 1, comma-separated; got {text!r}")
    return shares


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="interlock-bench-ingest-"))
    kafka = None if args.kafka else KafkaBroker(work / "kafka", partitions=args.partitions)
    clickhouse = None if args.clickhouse else ClickHouseServer(work / "clickhouse")
    ingest: subprocess.Popen[bytes] | None = None
    try:
        _progress("starting Kafka and ClickHouse")
        if kafka is not None:
            kafka.start()
        if clickhouse is not None:
            clickhouse.start()
        bootstrap = args.kafka or (kafka.bootstrap if kafka else "")
        url = args.clickhouse or (clickhouse.url if clickhouse else "")
        asyncio.run(_prepare(url, bootstrap, args.partitions))
        client = clickhouse_connect.get_client(dsn=url, send_receive_timeout=600)

        bulk_start = time.perf_counter()
        for start in range(0, args.rows, BULK_CHUNK):
            client.command(BULK_SQL.format(db=DB, start=start, count=min(BULK_CHUNK, args.rows - start)))
            done = min(args.rows, start + BULK_CHUNK)
            rate = done / (time.perf_counter() - bulk_start)
            _progress(
                f"bulk: {done:,} of {args.rows:,} rows, {rate:,.0f} rows/s, {(args.rows - done) / rate:,.0f} s left"
            )
        bulk_s = time.perf_counter() - bulk_start

        # Agents named per run: the counts below see only this run's events on a reused server.
        tag = os.urandom(3).hex()
        streams = []
        for n, share in enumerate(args.sampled):
            stream_agent = f"bench-stream-{tag}-{n}"
            produce_s = asyncio.run(_produce_backlog(bootstrap, args.stream_events, share, stream_agent))
            _progress(
                f"stream: {args.stream_events:,} events in Kafka ({share:.0%} traced,"
                f" {args.stream_events / produce_s:,.0f}/s produced)"
            )
            if ingest is not None:  # a fresh trace-ingest for each backlog: its CPU counts only this share
                _stop(ingest)
            ingest = _start_ingest(work, bootstrap, url, args)
            drain = _wait_for(client, stream_agent, args.stream_events, ingest)
            streams.append(
                {
                    "sampled_share": share,
                    "events": args.stream_events,
                    "produce_events_per_s": round(args.stream_events / produce_s),
                    "ingest_events_per_s": round(drain["rows"] / drain["seconds"]) if drain["seconds"] else 0,
                    "ingest_cpu_us_per_event": round(1e6 * drain["cpu_s"] / drain["rows"], 1),
                }
            )
            _progress(f"stream: {streams[-1]['ingest_events_per_s']:,} events/s stored")
        assert ingest is not None
        fresh_agent = f"bench-fresh-{tag}"
        _progress(f"freshness: {args.fresh_events:,} events at {args.rate:,.0f}/s")
        asyncio.run(_produce_paced(bootstrap, args.fresh_events, args.rate, args.sampled[-1], fresh_agent))
        _wait_for(client, fresh_agent, args.fresh_events, ingest)
        fresh = client.query(
            "SELECT quantile(0.5)(d), quantile(0.95)(d), max(d) FROM (SELECT"
            " toUnixTimestamp64Milli(ingested_at) - toUnixTimestamp64Milli(occurred_at) AS d"
            f" FROM {DB}.usage_events WHERE agent = '{fresh_agent}')"
        ).result_rows[0]

        _progress(f"queries: {len(QUERIES)} x {args.repeat}")
        latencies: dict[str, dict[str, float]] = {}
        for name, sql in QUERIES.items():
            timings = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                client.query(sql.format(db=DB))
                timings.append((time.perf_counter() - t) * 1000)
            latencies[name] = {
                "p50_ms": round(statistics.median(timings), 1),
                "p95_ms": round(_percentile(timings, 0.95), 1),
            }
        total_rows = int(client.query(f"SELECT count() FROM {DB}.usage_events").result_rows[0][0])
        bulk_rate = args.rows / bulk_s if args.rows else 0.0
        ingest_rate = min(stream["ingest_events_per_s"] for stream in streams)
        full = 100_000_000
        return {
            "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.python_implementation()}",
            "rows_requested_by_issue": full,
            "rows_loaded": total_rows,
            "bulk_rows": args.rows,
            "bulk_rows_per_s": round(bulk_rate),
            "streams": streams,
            "ingest_batch": args.batch,
            "ingest_receive_spans": not args.no_receive_spans,
            "freshness_events": args.fresh_events,
            "freshness_rate_per_s": args.rate,
            "freshness_sampled_share": args.sampled[-1],
            "freshness_p50_ms": float(fresh[0]),
            "freshness_p95_ms": float(fresh[1]),
            "freshness_max_ms": float(fresh[2]),
            "query_repeats": args.repeat,
            "queries": latencies,
            "full_volume_bulk_s": round(full / bulk_rate) if bulk_rate else 0,
            "full_volume_through_kafka_s": round(full / ingest_rate) if ingest_rate else 0,
        }
    finally:
        if ingest is not None:
            _stop(ingest)
        if clickhouse is not None:
            clickhouse.stop()
        if kafka is not None:
            kafka.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000_000, help="synthetic rows bulk-loaded (issue: 100M)")
    parser.add_argument("--stream-events", type=int, default=200_000, help="events through Kafka for the rate")
    parser.add_argument(
        "--sampled",
        type=_shares,
        default=[1.0, 0.01],
        help="shares of streamed events whose trace is sampled, comma-separated: one backlog each (default 1,0.01)",
    )
    parser.add_argument("--fresh-events", type=int, default=5_000, help="paced events for freshness")
    parser.add_argument("--rate", type=float, default=1_000.0, help="events/s of the paced freshness phase")
    parser.add_argument("--batch", type=int, default=5_000, help="trace-ingest usage batch size")
    parser.add_argument("--partitions", type=int, default=6, help="partitions of the usage topic")
    parser.add_argument(
        "--no-receive-spans", action="store_true", help="trace-ingest without the instrumentation's receive spans"
    )
    parser.add_argument("--repeat", type=int, default=30, help="runs of each query")
    parser.add_argument("--kafka", help="use this Kafka (host:port) instead of starting one")
    parser.add_argument("--clickhouse", help="use this ClickHouse URL instead of starting one")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['machine']}; rows loaded {result['rows_loaded']:,} (issue asks 100,000,000)")
    print(
        f"bulk load:  {result['bulk_rows_per_s']:,} rows/s (INSERT SELECT inside ClickHouse, through the rollup"
        f" views); 100M rows: ~{result['full_volume_bulk_s']:,} s"
    )
    for stream in result["streams"]:
        print(
            f"ingest:     {stream['ingest_events_per_s']:,} events/s through Kafka into ClickHouse"
            f" ({stream['events']:,} events, {stream['sampled_share']:.0%} traced, batch {result['ingest_batch']:,});"
            f" trace-ingest CPU {stream['ingest_cpu_us_per_event']} us/event"
        )
    print(f"            100M events through Kafka at the slowest rate: ~{result['full_volume_through_kafka_s']:,} s")
    print(
        f"freshness:  p50 {result['freshness_p50_ms']:.0f} ms, p95 {result['freshness_p95_ms']:.0f} ms"
        " (request done -> row queryable;"
        f" {result['freshness_events']} events at {result['freshness_rate_per_s']:.0f}/s)"
    )
    for name, t in result["queries"].items():
        print(f"query {name:<44} p50 {t['p50_ms']:>7.1f} ms  p95 {t['p95_ms']:>7.1f} ms")


if __name__ == "__main__":
    main()
