"""Rate-limit decisions per second and decision latency, memory vs Redis backend.

One decision is what ShouldRateLimit does behind gRPC: resolve the rules, charge the
sliding-window counters (all-or-nothing) and judge. Each decision carries the six
descriptors the router sends (api key, project, provider+model; requests and tokens),
each with a limit, spread over 1,000 API keys and 50 projects. `--concurrency` workers run
closed-loop for `--seconds`; latency is per decision. Redis comes from --redis, else a
local redis-server is started (as the tests do).

    make bench-ratelimit
    python -m benchmarks.ratelimit_throughput --seconds 5 --concurrency 32 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from interlock.devservers import RedisServer
from interlock.services.ratelimit.adapters.stores import MemoryWindowStore, RedisWindowStore, WindowStore
from interlock.services.ratelimit.domain.limits import HitRequest, RuleBook, judge, parse_limit_config, plan_charges

RULES = RuleBook(
    parse_limit_config(
        [
            {
                "domain": "interlock",
                "descriptors": [
                    {"key": "api_key", "rate_limit": {"unit": "minute", "requests_per_unit": 1_000_000}},
                    {"key": "project", "rate_limit": {"unit": "minute", "requests_per_unit": 1_000_000}},
                    {
                        "key": "provider",
                        "descriptors": [{"key": "model", "rate_limit": {"unit": "minute", "requests_per_unit": 10**9}}],
                    },
                    {
                        "key": "usage",
                        "value": "tokens",
                        "descriptors": [
                            {"key": "api_key", "rate_limit": {"unit": "minute", "requests_per_unit": 10**9}},
                            {"key": "project", "rate_limit": {"unit": "day", "requests_per_unit": 4 * 10**9}},
                        ],
                    },
                ],
            }
        ]
    )
)


def request(rng: random.Random) -> list[HitRequest]:
    key, project = f"key-{rng.randrange(1000)}", f"default/p{rng.randrange(50)}"
    return [
        HitRequest((("api_key", key),), 1),
        HitRequest((("project", project),), 1),
        HitRequest((("provider", "openai"), ("model", "gpt-4o-mini")), 1),
        HitRequest((("usage", "tokens"), ("api_key", key)), 900),
        HitRequest((("usage", "tokens"), ("project", project)), 900),
    ]


async def run(store: WindowStore, seconds: float, concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker(seed: int) -> None:
        rng = random.Random(seed)
        while time.perf_counter() < deadline:
            hits = request(rng)
            start = time.perf_counter()
            charges = plan_charges(RULES, "interlock", hits)
            decision = await store.charge(charges)
            judge(len(hits), charges, decision.outcomes, decision.admitted)
            latencies.append((time.perf_counter() - start) * 1000)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100)
    return {
        "decisions": len(latencies),
        "decisions_per_s": round(len(latencies) / elapsed),
        "p50_ms": round(q[49], 3),
        "p99_ms": round(q[98], 3),
    }


async def main_async(args: argparse.Namespace) -> int:
    results: dict[str, dict[str, float]] = {}
    results["memory"] = await run(MemoryWindowStore(), args.seconds, args.concurrency)
    server = None
    url = args.redis
    if not url:
        server = RedisServer(Path(tempfile.mkdtemp(prefix="interlock-bench-")))
        server.start()
        url = server.url
    store = RedisWindowStore(url, key_prefix=f"bench:{uuid.uuid4().hex}:")
    try:
        results["redis"] = await run(store, args.seconds, args.concurrency)
    finally:
        await store.aclose()
        if server is not None:
            server.stop()
    if args.json:
        print(json.dumps({"python": platform.python_version(), "concurrency": args.concurrency, **results}, indent=2))
    else:
        print(f"rate-limit decisions (5 descriptors), {args.concurrency} concurrent, {args.seconds:g} s per backend")
        print(f"{'BACKEND':<8} {'DECISIONS/S':>12} {'P50_MS':>8} {'P99_MS':>8}")
        for name, r in results.items():
            print(f"{name:<8} {r['decisions_per_s']:>12} {r['p50_ms']:>8} {r['p99_ms']:>8}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--redis", default="", help="redis://host:port/db (default: start a local redis-server)")
    parser.add_argument("--json", action="store_true")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
