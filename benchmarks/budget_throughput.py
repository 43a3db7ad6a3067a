"""Budget service throughput: reserve+commit pairs per second and their latency, with and
without budget leases.

Starts the budget service as its own process (SQLite ledger by default, or PostgreSQL
with --database-url) on a free port, then runs closed-loop workers through the router's own
budget client: each reserves a call's worst case against one project budget, commits the
actual cost, and repeats. Without leases every reserve is a round trip to the budget
service; with leases (what `INTERLOCK_ROUTER_BUDGET_LEASE_USD` turns on) the router
reserves against a prepaid slice in memory and commits travel in batches. The two modes
alternate in rounds so machine drift hits both. Prints pairs per second and p50/p90/p99 of
one reserve+commit pair, per mode.

    make bench-budget                                     # SQLite, 32 workers, 2 rounds of 5 s
    python -m benchmarks.budget_throughput --workers 64 --seconds 5 --json
    python -m benchmarks.budget_throughput --database-url postgresql://interlock@127.0.0.1:5432/postgres
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
from decimal import Decimal
from pathlib import Path

import grpc

from interlock.budget.v1 import budget_pb2, budget_pb2_grpc
from interlock.devservers import free_port
from interlock.mesh import health_status
from interlock.pricing import ModelPricing
from interlock.services.router.adapters.budget_leases import LeasePolicy
from interlock.services.router.adapters.mesh_clients import BudgetClient
from interlock.services.router.domain.chat import ChatCall
from interlock.services.router.domain.flow import Caller
from interlock.services.router.domain.provider import TokenUsage
from interlock.services.router.domain.routing import ModelRoute

WORST_NANOS = 30_000
ACTUAL_NANOS = 21_000
LEASE_SLICE_NANOS = 50_000_000
"""$0.05, the slice a router asks of a lease beyond the call that needs it."""
ROUTE = ModelRoute("bench", "openai", "bench", ModelPricing.custom("bench", Decimal(1), Decimal(1)))


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def drive(target: str, workers: int, seconds: float, leases: bool) -> tuple[list[float], int, int]:
    """Latencies (ms) of reserve+commit pairs, and counts of denials and errors."""
    async with grpc.aio.insecure_channel(target) as channel:
        project = f"bench-{uuid.uuid4().hex[:8]}"
        await budget_pb2_grpc.BudgetServiceStub(channel).SetBudget(
            budget_pb2.SetBudgetRequest(
                scope=budget_pb2.Scope(kind=budget_pb2.SCOPE_KIND_PROJECT, project=project),
                limit_nanos=10**15,
                window=budget_pb2.BUDGET_WINDOW_MONTH,
                alert_thresholds_pct=[50, 80, 100],
            )
        )
    client = BudgetClient(target, leases=LeasePolicy(slice_nanos=LEASE_SLICE_NANOS) if leases else None)
    latencies: list[float] = []
    denied = errors = 0
    deadline = time.perf_counter() + seconds
    usage = TokenUsage(10, 5)

    async def worker(n: int) -> None:
        nonlocal denied, errors
        caller = Caller("default", project, f"dev{n % 8}", f"key{n}")
        while time.perf_counter() < deadline:
            call = ChatCall(ROUTE, (), 16, None, uuid.uuid4().hex, "", "")
            start = time.perf_counter()
            try:
                reservation = await client.reserve(call.request_id, caller, WORST_NANOS, 5.0)
                if not reservation.granted:
                    denied += 1
                    continue
                await client.commit(call, "openai", usage, ACTUAL_NANOS)
            except Exception:  # noqa: BLE001 - counted, the run goes on
                errors += 1
                continue
            latencies.append((time.perf_counter() - start) * 1000)

    await asyncio.gather(*(worker(n) for n in range(workers)))
    await client.aclose()
    return latencies, denied, errors


def summarize(mode: str, latencies: list[float], denied: int, errors: int, elapsed: float) -> dict[str, object]:
    return {
        "mode": mode,
        "seconds": round(elapsed, 2),
        "pairs": len(latencies),
        "denied": denied,
        "errors": errors,
        "pairs_per_s": round(len(latencies) / elapsed, 1) if elapsed else 0.0,
        "p50_ms": round(statistics.median(latencies), 3) if latencies else None,
        "p90_ms": round(pct(latencies, 90), 3) if latencies else None,
        "p99_ms": round(pct(latencies, 99), 3) if latencies else None,
    }


def run(args: argparse.Namespace) -> dict[str, object]:
    modes = {"no leases": False, "leases": True}
    samples: dict[str, list[float]] = {m: [] for m in modes}
    counts = {m: [0, 0, 0.0] for m in modes}  # denied, errors, seconds
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
            for leases in modes.values():
                asyncio.run(drive(target, args.workers, 1.0, leases))  # warm-up
            for round_no in range(args.rounds):
                for mode, leases in modes.items():
                    print(
                        f"bench: round {round_no + 1}/{args.rounds}, {mode}: {args.workers} workers for"
                        f" {args.seconds:g}s",
                        file=sys.stderr,
                        flush=True,
                    )
                    started = time.perf_counter()
                    latencies, denied, errors = asyncio.run(drive(target, args.workers, args.seconds, leases))
                    samples[mode] += latencies
                    counts[mode][0] += denied
                    counts[mode][1] += errors
                    counts[mode][2] += time.perf_counter() - started
        finally:
            proc.terminate()
            proc.wait(30)
    rows = [summarize(m, samples[m], int(counts[m][0]), int(counts[m][1]), counts[m][2]) for m in modes]
    return {
        "ledger": "postgresql" if args.database_url else "sqlite",
        "workers": args.workers,
        "rounds": args.rounds,
        "round_seconds": args.seconds,
        "rows": rows,
        "machine": f"{platform.machine()} cores={os.cpu_count()}",
        "python": platform.python_version(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=32, help="concurrent reserve+commit loops")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one round of one mode")
    parser.add_argument("--rounds", type=int, default=2, help="rounds; each runs every mode once, alternating")
    parser.add_argument("--database-url", default="", help="PostgreSQL ledger URL; default: SQLite in a temp dir")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    summary = run(args)
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(
        f"\nBudget reserve+commit, {summary['ledger']} ledger, {args.workers} workers,"
        f" {args.rounds} alternating rounds of {args.seconds:g}s per mode"
    )
    print(f"{'MODE':<10} {'PAIRS/S':>9} {'P50_MS':>8} {'P90_MS':>8} {'P99_MS':>8} {'DENIED':>7} {'ERRORS':>7}")
    for row in summary["rows"]:  # type: ignore[attr-defined]
        print(
            f"{row['mode']:<10} {row['pairs_per_s']:>9} {row['p50_ms']!s:>8} {row['p90_ms']!s:>8}"
            f" {row['p99_ms']!s:>8} {row['denied']:>7} {row['errors']:>7}"
        )


if __name__ == "__main__":
    main()
