"""Router added latency: the fake provider called directly vs through the whole mesh.

Starts the embedded mesh (router, rate-limiter, budget, trace-ingest, fake provider) on
free ports, then drives each path open-loop at the same fixed request rate (requests are
sent on schedule whether or not earlier ones finished, so a slow server cannot slow the
load down and hide its own latency). Both paths run in this one process, interleaved in
rounds, so machine noise hits them alike. Prints p50/p90/p99 of each and the difference.

    make bench                                   # defaults: 50 req/s, 3 rounds of 8 s
    python -m benchmarks.router_overhead --rate 100 --seconds 10 --rounds 3 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import httpx

from interlock.router.v1 import router_pb2, router_pb2_grpc
from interlock.testing import create_key, start_mesh

PROMPT = "Summarise the benefits of connection pooling in two sentences."


async def open_loop(call: Callable[[], Awaitable[None]], rate: float, seconds: float) -> tuple[list[float], int]:
    """Latencies (ms) of calls started every 1/rate s for `seconds`, and the error count."""
    latencies: list[float] = []
    errors = 0

    async def one() -> None:
        nonlocal errors
        start = time.perf_counter()
        try:
            await call()
        except Exception:  # noqa: BLE001 - counted, reported
            errors += 1
            return
        latencies.append((time.perf_counter() - start) * 1000)

    tasks = []
    t0 = time.perf_counter()
    n = int(rate * seconds)
    for i in range(n):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    return latencies, errors


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


async def run(args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="interlock-bench-") as tmp:
        print("bench: starting the embedded mesh ...", file=sys.stderr, flush=True)
        mesh = start_mesh(Path(tmp))
        try:
            key = create_key(mesh, "bench", "bench")
            provider_url = f"http://{mesh.cfg.host}:{mesh.cfg.fake_provider_port}/v1/chat/completions"
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 32}
            http = httpx.AsyncClient(headers={"authorization": "Bearer bench"}, timeout=30)
            channel = grpc.aio.insecure_channel(mesh.cfg.target("router"))
            stub = router_pb2_grpc.RouterServiceStub(channel)
            request = router_pb2.ChatRequest(
                params=router_pb2.ChatParams(
                    model="gpt-4o-mini", messages=[router_pb2.Message(role="user", content=PROMPT)], max_tokens=32
                )
            )
            metadata = (("authorization", f"Bearer {key}"),)

            async def direct() -> None:
                response = await http.post(provider_url, json=body)
                response.raise_for_status()

            async def routed() -> None:
                await stub.Chat(request, metadata=metadata, timeout=30)

            for warm in (direct, routed):  # connections, caches, JIT-free warm-up
                await open_loop(warm, args.rate, 2)
            results: dict[str, list[float]] = {"direct": [], "router": []}
            errors = {"direct": 0, "router": 0}
            for r in range(args.rounds):
                for name, call in (("direct", direct), ("router", routed)):
                    print(
                        f"bench: round {r + 1}/{args.rounds}: {name} at {args.rate:g} req/s for {args.seconds:g}s",
                        file=sys.stderr,
                        flush=True,
                    )
                    lat, err = await open_loop(call, args.rate, args.seconds)
                    results[name] += lat
                    errors[name] += err
            await http.aclose()
            await channel.close()
        finally:
            mesh.stop()
    summary: dict[str, object] = {
        "rate_rps": args.rate,
        "seconds_per_round": args.seconds,
        "rounds": args.rounds,
        "machine": f"{platform.machine()} {platform.processor() or ''} cores={__import__('os').cpu_count()}".strip(),
        "python": platform.python_version(),
    }
    for name, lat in results.items():
        summary[name] = {
            "requests": len(lat),
            "errors": errors[name],
            "p50_ms": round(statistics.median(lat), 3),
            "p90_ms": round(pct(lat, 90), 3),
            "p99_ms": round(pct(lat, 99), 3),
        }
    direct_row, router_row = summary["direct"], summary["router"]
    assert isinstance(direct_row, dict) and isinstance(router_row, dict)
    summary["added_ms"] = {k: round(router_row[k] - direct_row[k], 3) for k in ("p50_ms", "p90_ms", "p99_ms")}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second on each path")
    parser.add_argument("--seconds", type=float, default=8.0, help="length of one round per path")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per path")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()
    summary = asyncio.run(run(args))
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"\nRouter added latency at {args.rate:g} req/s ({args.rounds} x {args.seconds:g}s per path)")
    print(f"{'path':<8} {'requests':>8} {'errors':>6} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}")
    for name in ("direct", "router"):
        row = summary[name]
        assert isinstance(row, dict)
        print(
            f"{name:<8} {row['requests']:>8} {row['errors']:>6} {row['p50_ms']:>8.2f} {row['p90_ms']:>8.2f} "
            f"{row['p99_ms']:>8.2f}"
        )
    added = summary["added_ms"]
    assert isinstance(added, dict)
    print(f"{'added':<8} {'':>8} {'':>6} {added['p50_ms']:>8.2f} {added['p90_ms']:>8.2f} {added['p99_ms']:>8.2f}")


if __name__ == "__main__":
    main()
