"""Budget service throughput: reserve+commit pairs per second and their latency.

Starts the budget service as its own process (SQLite ledger by default, or PostgreSQL
with --database-url) on a free port, then runs closed-loop workers: each reserves a
call's worst case against one project budget, commits the actual cost, and repeats.
Prints pairs per second and p50/p90/p99 of one reserve+commit pair, per ledger.

    make bench-budget                                     # SQLite, 32 workers, 10 s
    python -m benchmarks.budget_throughput --workers 64 --seconds 10 --json
    python -m benchmarks.budget_throughput --database-url postgresql://interlock@127.0.0.1:5432/postgres

Leases (a router reserving from a prepaid slice locally) are not implemented yet, so
only the path without leases is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc

from interlock.budget.v1 import budget_pb2, budget_pb2_grpc
from interlock.devservers import free_port
from interlock.mesh import health_status

WORST_NANOS = 30_000
ACTUAL_NANOS = 21_000


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def drive(target: str, workers: int, seconds: float) -> tuple[list[float], int, int]:
    """Latencies (ms) of reserve+commit pairs, and counts of denials and errors."""
    channel = grpc.aio.insecure_channel(target)
    stub = budget_pb2_grpc.BudgetServiceStub(channel)
    project = f"bench-{uuid.uuid4().hex[:8]}"
    await stub.SetBudget(
        budget_pb2.SetBudgetRequest(
            scope=budget_pb2.Scope(kind=budget_pb2.SCOPE_KIND_PROJECT, project=project),
            limit_nanos=10**15,
            window=budget_pb2.BUDGET_WINDOW_MONTH,
            alert_thresholds_pct=[50, 80, 100],
        )
    )
    latencies: list[float] = []
    denied = errors = 0
    deadline = time.perf_counter() + seconds

    async def worker(n: int) -> None:
        nonlocal denied, errors
        principal = budget_pb2.Principal(project=project, developer=f"dev{n % 8}", api_key_id=f"key{n}")
        while time.perf_counter() < deadline:
            request_id = uuid.uuid4().hex
            start = time.perf_counter()
            try:
                r = await stub.Reserve(
                    budget_pb2.ReserveRequest(request_id=request_id, principal=principal, amount_nanos=WORST_NANOS)
                )
                if not r.granted:
                    denied += 1
                    continue
                await stub.Commit(
                    budget_pb2.CommitRequest(
                        request_id=request_id, cost_nanos=ACTUAL_NANOS, provider="openai", model="bench"
                    )
                )
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            latencies.append((time.perf_counter() - start) * 1000)

    await asyncio.gather(*(worker(n) for n in range(workers)))
    await channel.close()
    return latencies, denied, errors


def run(args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="interlock-bench-budget-") as tmp:
        port = free_port()
        env = dict(os.environ)
        env.update(
            {
                "INTERLOCK_BUDGET_PORT": str(port),
                "INTERLOCK_BUDGET_DB_PATH": str(Path(tmp) / "ledger.db"),
                "INTERLOCK_BUDGET_SPOOL_PATH": str(Path(tmp) / "usage.db"),
                "INTERLOCK_BUDGET_ALERTS_SPOOL_PATH": str(Path(tmp) / "alerts.db"),
                "INTERLOCK_BUDGET_DATABASE_URL": args.database_url,
                "INTERLOCK_BUDGET_LOG_LEVEL": "warning",
            }
        )
        with (Path(tmp) / "budget.log").open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "interlock.services.budget"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            target = f"127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while health_status(target) != "SERVING":
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"budget service did not start:\n{(Path(tmp) / 'budget.log').read_text()}")
                time.sleep(0.1)
            print(f"bench: warm-up, then {args.workers} workers for {args.seconds:g}s", file=sys.stderr, flush=True)
            asyncio.run(drive(target, args.workers, 1.0))
            started = time.perf_counter()
            latencies, denied, errors = asyncio.run(drive(target, args.workers, args.seconds))
            elapsed = time.perf_counter() - started
        finally:
            proc.terminate()
            proc.wait(30)
    return {
        "ledger": "postgresql" if args.database_url else "sqlite",
        "leases": False,
        "workers": args.workers,
        "seconds": round(elapsed, 2),
        "pairs": len(latencies),
        "denied": denied,
        "errors": errors,
        "pairs_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies), 3),
        "p90_ms": round(pct(latencies, 90), 3),
        "p99_ms": round(pct(latencies, 99), 3),
        "machine": f"{platform.machine()} cores={os.cpu_count()}",
        "python": platform.python_version(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=32, help="concurrent reserve+commit loops")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured duration")
    parser.add_argument("--database-url", default="", help="PostgreSQL ledger URL; default: SQLite in a temp dir")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    summary = run(args)
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(
        f"\nBudget reserve+commit, {summary['ledger']} ledger, no leases, {args.workers} workers,"
        f" {summary['seconds']}s: {summary['pairs_per_s']} pairs/s"
    )
    print(f"p50 {summary['p50_ms']} ms  p90 {summary['p90_ms']} ms  p99 {summary['p99_ms']} ms")
    print(f"pairs {summary['pairs']}  denied {summary['denied']}  errors {summary['errors']}")


if __name__ == "__main__":
    main()
