"""Per-call overhead of ChainExecutor on the healthy path, in process.

The same trivial attempt (a coroutine that returns at once, so only the executor's own
work is measured) is awaited directly and through `ChainExecutor.call`, for a chain of
one deployment and for a 90/10 canary tier; each call is timed with perf_counter_ns.
Paths are interleaved in rounds so machine noise hits them alike. Prints p50/p99 in
microseconds of each path and the difference to the direct call.

    python -m benchmarks.fallback_overhead                  # 200,000 calls per path
    python -m benchmarks.fallback_overhead --calls 50000 --rounds 5 --json
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import platform
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

from interlock.services.router.domain.chain import ChainExecutor
from interlock.services.router.domain.routing import Deployment, ModelRoute, parse_routing_config

PRICE = {"input_per_mtok": 1, "output_per_mtok": 2}


def routes() -> dict[str, ModelRoute]:
    doc = {
        "providers": [{"name": p, "kind": "openai", "base_url": f"http://{p}/v1"} for p in ("main", "canary")],
        "models": [
            {"name": "single", "provider": "main", "upstream_model": "m", "price": PRICE},
            {
                "name": "canary",
                "deployments": [
                    {"provider": "main", "upstream_model": "m", "priority": 0, "weight": 90, "price": PRICE},
                    {"provider": "canary", "upstream_model": "m", "priority": 0, "weight": 10, "price": PRICE},
                ],
            },
        ],
    }
    return dict(parse_routing_config(doc, "bench").models)


async def attempt(d: Deployment, timeout_s: float) -> str:
    return "ok"


async def timed(call: Callable[[], Awaitable[object]], n: int) -> list[float]:
    """Microseconds of each of n sequential calls."""
    out = [0.0] * n
    clock = time.perf_counter_ns
    for i in range(n):
        start = clock()
        await call()
        out[i] = (clock() - start) / 1000
    return out


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def run(calls: int, rounds: int) -> dict[str, object]:
    by_name = routes()
    executor = ChainExecutor(clock=time.monotonic, rng=random.Random(1))
    single, canary = by_name["single"], by_name["canary"]
    direct_deployment = single.deployments[0]
    paths: dict[str, Callable[[], Awaitable[object]]] = {
        "direct": lambda: attempt(direct_deployment, 30.0),
        "chain-1": lambda: executor.call(single, attempt, 30.0),
        "tier-90/10": lambda: executor.call(canary, attempt, 30.0),
    }
    samples: dict[str, list[float]] = {name: [] for name in paths}
    per_round = max(1, calls // rounds)
    for call in paths.values():
        await timed(call, min(per_round, 5000))  # warm up
    gc.collect()
    for _ in range(rounds):
        for name, call in paths.items():
            samples[name].extend(await timed(call, per_round))
    summary: dict[str, object] = {
        "calls_per_path": per_round * rounds,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    base = samples["direct"]
    for name, values in samples.items():
        summary[name] = {
            "p50_us": pct(values, 50),
            "p99_us": pct(values, 99),
            "mean_us": statistics.fmean(values),
            "added_p50_us": pct(values, 50) - pct(base, 50),
            "added_p99_us": pct(values, 99) - pct(base, 99),
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200_000, help="calls per path (default 200,000)")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds (default 4)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    summary = asyncio.run(run(args.calls, args.rounds))
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"ChainExecutor healthy-path overhead, {summary['calls_per_path']:,} calls per path", file=sys.stderr)
    print(f"{'path':<11} {'p50 us':>8} {'p99 us':>8} {'mean us':>8} {'+p50 us':>8} {'+p99 us':>8}")
    for name in ("direct", "chain-1", "tier-90/10"):
        row = summary[name]
        assert isinstance(row, dict)
        print(
            f"{name:<11} {row['p50_us']:>8.2f} {row['p99_us']:>8.2f} {row['mean_us']:>8.2f}"
            f" {row['added_p50_us']:>8.2f} {row['added_p99_us']:>8.2f}"
        )


if __name__ == "__main__":
    main()
