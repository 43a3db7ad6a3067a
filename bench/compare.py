"""Interlock against direct calls and LiteLLM's proxy at fixed request rates (`make bench`).

Starts, on free loopback ports: nginx serving fixed OpenAI-format answers (unary and
SSE), the Interlock mesh (API-key auth, rate-limit admission and budget reservation on)
and LiteLLM's proxy (no database, master key on), both gateways routed to that nginx.
At each rate, every path runs open-loop for `--seconds` (longer at low rates, so a round
has at least `--min-calls` calls), `--rounds` times, in an order rotated every round so
machine drift hits all paths alike:

    direct, direct-stream                           vegeta -> nginx
    interlock-grpc, interlock-grpc-stream           ghz    -> router (Chat, ChatStream)
    interlock-http, interlock-http-stream           vegeta -> router's OpenAI facade
    litellm-http, litellm-http-stream               vegeta -> LiteLLM proxy

Added latency is a path's percentile minus the direct path's percentile at the same
rate step. A path that is overloaded at one rate (over 5% errors, under 80% of the rate
achieved, or p99 over 1 s) is not driven at higher rates.

    python -m bench.compare --quick           # smoke: 2 rates, 3 s rounds, docs untouched
    python -m bench.compare                   # full: writes docs/BENCHMARKS.md's section + plot
    python -m bench.compare --rates 100,1000 --seconds 5 --rounds 1 --paths direct,interlock-grpc
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .gateways import (
    BENCH_ENV,
    GATEWAY_CPU,
    LITELLM_MASTER_KEY,
    LOOP_GRPC_PORT,
    InterlockGateway,
    LiteLLMProxy,
    NginxUpstream,
)
from .load import Endpoint, run_ghz, run_once, run_vegeta
from .procstat import ProcessGroup
from .report import DEFAULT_RATES_TEXT, render_table, target_verdicts, write_docs, write_plot
from .stats import PathAtRate, Round, add_baseline, highest_sustained, merge, percentile
from .tools import ROOT, Tools, find_tools, machine, stop_on_sigterm, versions

ALL_PATHS = (
    "direct",
    "direct-stream",
    "interlock-grpc",
    "interlock-grpc-stream",
    "interlock-http",
    "interlock-http-stream",
    "litellm-http",
    "litellm-http-stream",
)
DEFAULT_RATES = DEFAULT_RATES_TEXT


def log(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def endpoints(
    upstream: NginxUpstream, interlock: InterlockGateway | None, litellm: LiteLLMProxy | None
) -> list[Endpoint]:
    found: list[Endpoint] = []
    for stream in (False, True):
        suffix = "-stream" if stream else ""
        kind = "stream" if stream else "unary"
        model = f"bench-{kind}"
        direct = f"direct{suffix}"
        found.append(
            Endpoint(
                direct,
                "upstream",
                stream,
                "",
                url=f"{upstream.url}/{kind}/v1/chat/completions",
                headers={"Authorization": "Bearer bench-upstream-key"},
                model="gpt-4o-mini",
            )
        )
        if interlock is not None:
            auth = {"authorization": f"Bearer {interlock.api_key}"}
            found.append(
                Endpoint(
                    f"interlock-grpc{suffix}",
                    "interlock",
                    stream,
                    direct,
                    grpc_target=interlock.grpc_target,
                    headers=auth,
                    model=model,
                )
            )
            found.append(
                Endpoint(
                    f"interlock-http{suffix}",
                    "interlock",
                    stream,
                    direct,
                    url=f"{interlock.http_url}/v1/chat/completions",
                    headers=auth,
                    model=model,
                )
            )
        if litellm is not None:
            found.append(
                Endpoint(
                    f"litellm-http{suffix}",
                    "litellm",
                    stream,
                    direct,
                    url=f"{litellm.url}/v1/chat/completions",
                    headers={"Authorization": f"Bearer {LITELLM_MASTER_KEY}"},
                    model=model,
                )
            )
    return sorted(found, key=lambda e: ALL_PATHS.index(e.name))


def check(tools: Tools, endpoint: Endpoint, work: Path) -> None:
    """Warm the path up (connections, caches) and check it answers what the upstream sent."""
    if endpoint.tool == "ghz":
        result = run_ghz(tools, endpoint, 20, 2, work)
        bodies: list[bytes] = []
    else:
        result, bodies = run_vegeta(tools, endpoint, 20, 2, work, keep_bodies=True)
    bad = [b for b in bodies if b"handshake" not in b or (endpoint.stream and b"[DONE]" not in b)]
    if result.errors or bad or not result.ok:
        sample = bad[0][:300].decode(errors="replace") if bad else ""
        raise RuntimeError(f"{endpoint.name} does not answer correctly: {result.error_kinds} {sample}")


def cpu_rate(groups: list[ProcessGroup], interval_s: float = 0.5) -> float:
    """Cores the groups' processes use right now."""
    before = sum(g.cpu_seconds() for g in groups)
    time.sleep(interval_s)
    return (sum(g.cpu_seconds() for g in groups) - before) / interval_s


def settle(groups: list[ProcessGroup], idle_cores: float, max_s: float) -> None:
    """Wait until the gateways have worked off the previous round (back near their idle CPU)."""
    deadline = time.monotonic() + max_s
    while time.monotonic() < deadline and cpu_rate(groups) > idle_cores + 0.1:
        pass


def measure(
    tools: Tools, endpoint: Endpoint, group: ProcessGroup, rate: float, seconds: float, index: int, work: Path
) -> Round:
    has_router = "router" in group.roots
    group.reset_peak()
    cpu0 = group.cpu_seconds()
    router0 = group.cpu_seconds("router") if has_router else 0.0
    services0 = {name: group.cpu_seconds(name) for name in group.roots}
    t0 = time.monotonic()
    result = run_once(tools, endpoint, rate, seconds, work)
    wall = time.monotonic() - t0
    return Round(
        path=endpoint.name,
        rate=rate,
        index=index,
        seconds=wall,
        ok=result.ok,
        errors=result.errors,
        error_kinds=result.error_kinds,
        window_s=max(result.last_done_s - result.first_send_s, seconds),
        latencies_ms=result.latencies_ms,
        cpu_s=group.cpu_seconds() - cpu0,
        router_cpu_s=(group.cpu_seconds("router") - router0) if has_router else 0.0,
        service_cpu_s={name: group.cpu_seconds(name) - before for name, before in services0.items()},
        peak_rss_mb=group.peak_rss_mb(),
        router_peak_rss_mb=group.peak_rss_mb("router") if has_router else 0.0,
    )


def print_row(row: PathAtRate) -> None:
    added = (
        ""
        if row.added_p99_ms is None
        else f" added p50/p90/p99 {row.added_p50_ms:.2f}/{row.added_p90_ms:.2f}/{row.added_p99_ms:.2f}"
    )
    log(
        f"  {row.path:<22} {row.achieved_rps:7.1f}/s err {100 * row.error_rate:5.1f}% "
        f"p50/p90/p99 {row.p50_ms:.2f}/{row.p90_ms:.2f}/{row.p99_ms:.2f} ms{added} "
        f"cpu {row.cpu_pct:.0f}% rss {row.peak_rss_mb:.0f} MB"
    )


MIN_CALLS = 300
"""Calls a round has at least: a p99 over two rounds of 10 s at 10/s is the second-slowest
of 200 calls, which one slow call moves; at 300 a round it is the sixth of 600."""


def round_seconds(rate: float, seconds: float, min_calls: int) -> float:
    """How long one round at `rate` lasts: `seconds`, or long enough for `min_calls` calls."""
    return max(seconds, min_calls / rate)


def run(args: argparse.Namespace) -> dict[str, Any]:
    paths = [p for p in args.paths.split(",") if p] if args.paths else list(ALL_PATHS)
    unknown = sorted(set(paths) - set(ALL_PATHS))
    if unknown:
        raise SystemExit(f"unknown paths {unknown}; choose from {', '.join(ALL_PATHS)}")
    want_interlock = any(p.startswith("interlock") for p in paths)
    want_litellm = any(p.startswith("litellm") for p in paths)
    tools = find_tools(need_litellm=want_litellm)
    rates = [float(r) for r in args.rates.split(",")]
    started = datetime.now(UTC)
    meta = {"versions": versions(tools), "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="interlock-bench-") as tmp:
        work = Path(tmp)
        log(f"starting nginx, {'Interlock, ' if want_interlock else ''}{'LiteLLM' if want_litellm else ''}")
        upstream = NginxUpstream(work / "nginx", tools.nginx).start()
        interlock: InterlockGateway | None = None
        litellm: LiteLLMProxy | None = None
        try:
            if want_interlock:
                interlock = InterlockGateway(upstream.url).start()
            if want_litellm:
                litellm = LiteLLMProxy(work / "litellm", tools.litellm, upstream.url).start()
            assert upstream.pid is not None
            groups: dict[str, ProcessGroup] = {"upstream": ProcessGroup({"nginx": upstream.pid})}
            if interlock is not None:
                groups["interlock"] = interlock.processes()
            if litellm is not None:
                assert litellm.pid is not None
                groups["litellm"] = ProcessGroup({"litellm": litellm.pid})
            active = [e for e in endpoints(upstream, interlock, litellm) if e.name in paths or not e.baseline]
            for endpoint in active:
                log(f"warm-up and answer check: {endpoint.name}")
                check(tools, endpoint, work / "load")
            idle = cpu_rate(list(groups.values()), 2.0)
            log(f"idle CPU of all gateways: {idle:.2f} cores")
            rows: list[PathAtRate] = []
            overloaded: dict[str, float] = {}
            load_avg: dict[str, float] = {}
            step = 0
            for rate in rates:
                rounds: dict[str, list[Round]] = {}
                seconds = round_seconds(rate, args.seconds, args.min_calls)
                todo = [e for e in active if e.name not in overloaded]
                for r in range(args.rounds):
                    shift = step % len(todo)
                    step += 1
                    for endpoint in todo[shift:] + todo[:shift]:
                        settle(list(groups.values()), idle, args.settle_max_s)
                        group = groups[endpoint.gateway]
                        done = measure(tools, endpoint, group, rate, seconds, r, work / "load")
                        rounds.setdefault(endpoint.name, []).append(done)
                        log(
                            f"{rate:g}/s round {r + 1}/{args.rounds}: {endpoint.name} "
                            f"p99 {percentile(done.latencies_ms, 99):.2f} ms"
                        )
                merged = {name: merge(rs) for name, rs in rounds.items()}
                for row in merged.values():
                    base = next(e.baseline for e in active if e.name == row.path)
                    if base:
                        add_baseline(row, merged[base])
                load_avg[f"{rate:g}"] = round(os.getloadavg()[0], 2)
                log(f"{rate:g}/s summary (load average {load_avg[f'{rate:g}']}):")
                for endpoint in active:
                    if endpoint.name in merged:
                        row = merged[endpoint.name]
                        print_row(row)
                        rows.append(row)
                        if endpoint.baseline and row.overloaded:
                            overloaded[endpoint.name] = rate
        finally:
            if litellm is not None:
                litellm.stop()
            if interlock is not None:
                interlock.stop()
            upstream.stop()
    measured = [p for p in ALL_PATHS if any(r.path == p for r in rows)]
    sustained = {p: highest_sustained(rows, p) for p in measured if not p.startswith("direct")}
    return {
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": args.command_line,
        "rates": rates,
        "seconds": args.seconds,
        "min_calls": args.min_calls,
        "rounds": args.rounds,
        "gateway_cpu": GATEWAY_CPU,
        "grpc_transport": "loop" if int(BENCH_ENV.get(LOOP_GRPC_PORT, "-1")) >= 0 else "grpc.aio",
        **meta,
        "idle_cores": round(idle, 3),
        "overloaded_at": overloaded,
        "load_avg_1m": load_avg,
        "sustained": sustained,
        "rows": [asdict(r) for r in rows],
        "targets": target_verdicts(rows, sustained, overloaded),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--rates", default=DEFAULT_RATES, help=f"requests per second, comma-separated ({DEFAULT_RATES})"
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="length of one round of one path (10)")
    parser.add_argument(
        "--min-calls",
        type=int,
        default=MIN_CALLS,
        help=f"a round lasts at least as long as this many calls take ({MIN_CALLS})",
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds per path and rate, order rotated (2)")
    parser.add_argument("--paths", default="", help=f"subset of {','.join(ALL_PATHS)} (all)")
    parser.add_argument("--quick", action="store_true", help="smoke run: rates 50,200, 3 s, 1 round, docs untouched")
    parser.add_argument("--settle-max-s", type=float, default=20.0, help="longest wait for gateways to go idle (20)")
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "bench", help="where results JSON goes")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "BENCHMARKS.md", help="doc to update")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "bench" / "latency_vs_rate.png")
    parser.add_argument("--no-docs", action="store_true", help="leave the doc and the plot alone")
    parser.add_argument("--from-json", type=Path, help="no run: redo table, doc section and plot from a results file")
    args = parser.parse_args(argv)
    stop_on_sigterm()
    if args.from_json:
        results = json.loads(args.from_json.read_text())
        rows = [PathAtRate(**r) for r in results["rows"]]
        results["targets"] = target_verdicts(rows, results["sustained"], results.get("overloaded_at"))
        print(render_table(rows, results))
        if not args.no_docs:
            write_plot(rows, results, args.plot)
            write_docs(results, rows, args.docs, args.plot)
            log(f"wrote {args.docs} and {args.plot}")
        return
    args.command_line = " ".join(["python -m bench.compare", *(sys.argv[1:] if argv is None else argv)])
    if args.quick:
        args.rates, args.seconds, args.rounds, args.min_calls = "50,200", 3.0, 1, 0
        args.no_docs = True
    results = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"compare-{results['started'].replace(':', '')}.json"
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    rows = [PathAtRate(**r) for r in results["rows"]]
    print(render_table(rows, results))
    log(f"results: {out}")
    if not args.no_docs:
        write_plot(rows, results, args.plot)
        write_docs(results, rows, args.docs, args.plot)
        log(f"wrote {args.docs} and {args.plot}")


if __name__ == "__main__":
    main()
