"""Usage analytics at volume: ingest rate, freshness and rollup query latency.

Three phases against a real Kafka and ClickHouse (started locally unless given):

1. bulk: `--rows` synthetic usage rows (12 projects, 200 developers, 8 models, 120 days)
   inserted with INSERT ... SELECT FROM numbers() in chunks of 1M, through the same
   materialized views that keep the rollups, so the queries below run over that volume;
2. stream: `--stream-events` UsageEvents produced to Kafka as budget does (key
   org/project, idempotent, acks=all) and consumed by trace-ingest (a child process) into
   ClickHouse; ingest rate = events / (first produce -> last row queryable); then
   `--fresh-events` more at `--rate` events/s, and freshness = p95 of (row's ingested_at -
   event's occurred_at, stamped when the request was done);
3. queries: each dashboard query `--repeat` times; p50 and p95 in milliseconds.

The issue asks for 100 million rows; that needs far more than a 2-core machine, so
`--rows` scales it down and the output says what ran:

    make bench-ingest ROWS=2000000
    python -m benchmarks.usage_ingest --rows 2000000 --stream-events 100000 --json
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
from google.protobuf.timestamp_pb2 import Timestamp

from interlock.devservers import ClickHouseServer, KafkaBroker, free_port
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
    concat('bulk-', toString(number)),
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


def _event(i: int, prefix: str) -> UsageEvent:
    done = Timestamp()
    done.GetCurrentTime()  # "request done": the producer stamps it as the budget commit would
    return UsageEvent(
        event_id=f"{prefix}-{i}",
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
        run_id=f"run-{i // 20}",
        agent="planner",
        schema_version=2,
    )


def _count(client: Any, where: str) -> int:
    return int(client.query(f"SELECT count() FROM {DB}.usage_events WHERE {where}").result_rows[0][0])


async def _stream(bootstrap: str, client: Any, events: int, prefix: str, rate: float | None) -> float:
    """Produce `events`; returns seconds from the first produce until all are queryable."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    start = time.perf_counter()
    try:
        futures = []
        for i in range(events):
            e = _event(i, prefix)
            futures.append(await producer.send(TOPIC, e.SerializeToString(), key=f"acme/{e.project}".encode()))
            if rate:
                # Paced: stay on the schedule `rate` sets, so freshness is not a backlog's age.
                ahead = (i + 1) / rate - (time.perf_counter() - start)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    like = f"event_id LIKE '{prefix}-%'"
    while True:  # polling is the measurement: "queryable" is what a reader sees
        if await asyncio.to_thread(_count, client, like) >= events:
            return time.perf_counter() - start
        await asyncio.sleep(0.05)


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="interlock-bench-ingest-"))
    kafka = None if args.kafka else KafkaBroker(work / "kafka", partitions=6)
    clickhouse = None if args.clickhouse else ClickHouseServer(work / "clickhouse")
    ingest: subprocess.Popen[bytes] | None = None
    try:
        if kafka is not None:
            kafka.start()
        if clickhouse is not None:
            clickhouse.start()
        bootstrap = args.kafka or (kafka.bootstrap if kafka else "")
        url = args.clickhouse or (clickhouse.url if clickhouse else "")
        env = {
            **os.environ,
            "INTERLOCK_TRACEINGEST_PORT": str(free_port()),
            "INTERLOCK_TRACEINGEST_KAFKA_BOOTSTRAP": bootstrap,
            "INTERLOCK_TRACEINGEST_CLICKHOUSE_URL": url,
            "INTERLOCK_TRACEINGEST_USAGE_BATCH_SIZE": str(args.batch),
            "INTERLOCK_TRACEINGEST_BUDGET_TARGET": "",
            "INTERLOCK_TRACEINGEST_LOG_LEVEL": "warning",
        }
        with (work / "trace-ingest.log").open("ab") as log:
            ingest = subprocess.Popen([sys.executable, "-m", "interlock.services.traceingest"], env=env, stderr=log)
        client = clickhouse_connect.get_client(dsn=url, send_receive_timeout=600)
        while True:  # trace-ingest applies the migrations at start
            try:
                if client.query(f"EXISTS TABLE {DB}.usage_daily_mv").result_rows[0][0] == 1:
                    break
            except Exception:  # noqa: BLE001 - database not there yet
                pass
            time.sleep(0.2)

        bulk_start = time.perf_counter()
        for start in range(0, args.rows, BULK_CHUNK):
            client.command(BULK_SQL.format(db=DB, start=start, count=min(BULK_CHUNK, args.rows - start)))
        bulk_s = time.perf_counter() - bulk_start

        stream_s = asyncio.run(_stream(bootstrap, client, args.stream_events, "stream", None))
        asyncio.run(_stream(bootstrap, client, args.fresh_events, "fresh", args.rate))
        fresh = client.query(
            "SELECT quantile(0.5)(d), quantile(0.95)(d), max(d) FROM (SELECT"
            " toUnixTimestamp64Milli(ingested_at) - toUnixTimestamp64Milli(occurred_at) AS d"
            f" FROM {DB}.usage_events WHERE event_id LIKE 'fresh-%')"
        ).result_rows[0]

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
        return {
            "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.python_implementation()}",
            "rows_requested_by_issue": 100_000_000,
            "rows_loaded": total_rows,
            "bulk_rows_per_s": round(args.rows / bulk_s) if args.rows else 0,
            "stream_events": args.stream_events,
            "ingest_events_per_s": round(args.stream_events / stream_s),
            "freshness_events": args.fresh_events,
            "freshness_rate_per_s": args.rate,
            "freshness_p50_ms": float(fresh[0]),
            "freshness_p95_ms": float(fresh[1]),
            "freshness_max_ms": float(fresh[2]),
            "query_repeats": args.repeat,
            "queries": latencies,
        }
    finally:
        if ingest is not None:
            ingest.send_signal(signal.SIGTERM)
            try:
                ingest.wait(30)
            except subprocess.TimeoutExpired:
                ingest.kill()
        if clickhouse is not None:
            clickhouse.stop()
        if kafka is not None:
            kafka.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000_000, help="synthetic rows bulk-loaded (issue: 100M)")
    parser.add_argument("--stream-events", type=int, default=100_000, help="events through Kafka for the rate")
    parser.add_argument("--fresh-events", type=int, default=5_000, help="paced events for freshness")
    parser.add_argument("--rate", type=float, default=1_000.0, help="events/s of the paced freshness phase")
    parser.add_argument("--batch", type=int, default=5_000, help="trace-ingest usage batch size")
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
    print(f"bulk load:  {result['bulk_rows_per_s']:,} rows/s (INSERT SELECT, through the rollup views)")
    print(f"ingest:     {result['ingest_events_per_s']:,} events/s through Kafka into ClickHouse")
    print(
        f"freshness:  p50 {result['freshness_p50_ms']:.0f} ms, p95 {result['freshness_p95_ms']:.0f} ms"
        " (request done -> row queryable;"
        f" {result['freshness_events']} events at {result['freshness_rate_per_s']:.0f}/s)"
    )
    for name, t in result["queries"].items():
        print(f"query {name:<44} p50 {t['p50_ms']:>7.1f} ms  p95 {t['p95_ms']:>7.1f} ms")


if __name__ == "__main__":
    main()
