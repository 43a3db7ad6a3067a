"""A/B of mesh settings at one rate: latency and CPU per call by process (`make bench-probe`).

Starts nginx (the same fixed upstream as `make bench`) and one benchmark mesh per variant,
each with the environment of `bench/gateways.py` plus that variant's settings, then drives
every variant's router open-loop at `--rate` on one path (`--path`: the HTTP facade with
vegeta by default, or gRPC with ghz, unary or streamed),
`--rounds` times for `--seconds`, in an order reversed every round so machine drift hits
all variants alike. It reports, per variant, the median over rounds of p50/p90/p99 latency
of CPU milliseconds per answered call and peak RSS of each mesh process, and the errors.

    python -m bench.probe --rate 100                                  # the bench mesh as it is
    python -m bench.probe --rate 1000 --path interlock-grpc           # gRPC Chat through ghz
    python -m bench.probe --rate 100 --variant INTERLOCK_ROUTER_COMMIT_AFTER_ANSWER=false \\
        --variant INTERLOCK_ROUTER_COMMIT_AFTER_ANSWER=true --rounds 4 --json

A variant is a comma-separated list of NAME=VALUE settings ("" for the mesh as it is); the
item `python=PATH` runs that variant's services on another interpreter (a venv's python with
Interlock installed, e.g. `--variant python=.venv/bin/python --variant ""`), and `code=REV`
runs them on the Interlock code of git revision REV (its `libs/` and `services/`, with
protobuf stubs generated from its `protos/`), so a change is measured against the commit
before it: `--variant code=HEAD~1 --variant ""`. This
is the tool behind the per-change figures in docs/BENCHMARKS.md; `make bench` remains the
reference comparison against LiteLLM.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .compare import ALL_PATHS, endpoints
from .gateways import InterlockGateway, NginxUpstream
from .load import RunResult, run_once
from .stats import percentile
from .tools import ROOT, commit, find_tools, stop_on_sigterm


@dataclass
class VariantResult:
    variant: str
    rounds: list[dict[str, float]] = field(default_factory=list)
    """Per round: p50/p90/p99 ms, errors, `cpu_ms_per_call.<process>`, `peak_rss_mb.<process>`."""

    def median(self, key: str) -> float:
        values = [r[key] for r in self.rounds if key in r]
        return statistics.median(values) if values else float("nan")

    def summary(self) -> dict[str, float]:
        keys = sorted({k for r in self.rounds for k in r})
        return {k: round(self.median(k), 3) for k in keys}


PATHS = ("interlock-http", *(p for p in ALL_PATHS if p.startswith("interlock") and p != "interlock-http"))
"""The router's paths, as `make bench` names and builds them; the HTTP facade first (the default)."""

PYTHON_ITEM = "python"
"""The variant item naming the services' interpreter rather than a setting."""

CODE_ITEM = "code"
"""The variant item naming a git revision whose Interlock code the services run."""


def code_tree(rev: str, work: Path, python: str = "") -> Path:
    """The Interlock packages of git revision `rev`, for `PYTHONPATH` (which Python searches
    before the editable install's finder): a directory whose `interlock` package is the
    revision's `libs/interlock` with its `services/` as `interlock.services`, and protobuf
    stubs generated from its `protos/` by `python` (default: this interpreter). Raises
    ValueError for a revision git does not know."""
    found = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if found.returncode != 0:
        raise ValueError(f"no commit {rev!r} in {ROOT}")
    sha = found.stdout.strip()
    tree = work / f"code-{sha[:12]}"
    if (tree / "path").is_dir():  # another variant of the same revision made it already
        return tree / "path"
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", sha, "libs", "services", "protos", "scripts/gen_protos.py"],
        capture_output=True,
        check=True,
    ).stdout
    tree.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    subprocess.run(
        [python or sys.executable, str(tree / "scripts" / "gen_protos.py")], check=True, stdout=subprocess.DEVNULL
    )
    package = tree / "path" / "interlock"
    package.mkdir(parents=True)
    for entry in (tree / "libs" / "interlock").iterdir():
        (package / entry.name).symlink_to(entry)
    (package / "services").symlink_to(tree / "services")
    return package.parent


def parse_variant(text: str) -> dict[str, str]:
    """`A=1,B=2` as a dict; "" for no settings. Raises ValueError naming a malformed item."""
    settings: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"variant item {item!r} is not NAME=VALUE")
        settings[name] = value
    return settings


def round_figures(
    result: RunResult, cpu_s: dict[str, float], peak_rss_mb: dict[str, float] | None = None
) -> dict[str, float]:
    latencies = result.latencies_ms
    answered = max(1, result.ok)
    figures = {
        "p50_ms": percentile(latencies, 50),
        "p90_ms": percentile(latencies, 90),
        "p99_ms": percentile(latencies, 99),
        "errors": float(result.errors),
    }
    for name, seconds in cpu_s.items():
        figures[f"cpu_ms_per_call.{name}"] = 1000 * seconds / answered
    figures["cpu_ms_per_call.total"] = 1000 * sum(cpu_s.values()) / answered
    for name, mb in (peak_rss_mb or {}).items():
        figures[f"peak_rss_mb.{name}"] = mb
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second (100)")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of one round (15)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per variant (3)")
    parser.add_argument(
        "--variant", action="append", default=[], help="NAME=VALUE[,NAME=VALUE...]; repeat for each variant"
    )
    parser.add_argument(
        "--path", choices=PATHS, default=PATHS[0], help="which of the router's paths to drive (interlock-http)"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    stop_on_sigterm()
    try:
        variants = [(text, parse_variant(text)) for text in (args.variant or [""])]
    except ValueError as exc:
        parser.error(str(exc))
    for _, env in variants:
        python = env.get(PYTHON_ITEM, "")
        if python and not Path(python).exists():
            parser.error(f"no interpreter at {python}")
    tools = find_tools(need_litellm=False)
    work = Path(tempfile.mkdtemp(prefix="interlock-probe-"))
    for text, env in variants:
        if CODE_ITEM in env:
            print(f"probe: checking out {env[CODE_ITEM]} for {text}", file=sys.stderr, flush=True)
            try:
                env["PYTHONPATH"] = str(code_tree(env.pop(CODE_ITEM), work, env.get(PYTHON_ITEM, "")))
            except ValueError as exc:
                parser.error(str(exc))
    upstream = NginxUpstream(work / "nginx", tools.nginx).start()
    gateways: list[tuple[str, InterlockGateway]] = []
    results = {text: VariantResult(text or "(as configured)") for text, _ in variants}
    try:
        for text, env in variants:
            print(f"probe: starting a mesh for {text or '(as configured)'}", file=sys.stderr, flush=True)
            settings = {k: v for k, v in env.items() if k != PYTHON_ITEM}
            gateways.append((text, InterlockGateway(upstream.url, settings, env.get(PYTHON_ITEM, "")).start()))
        for round_no in range(args.rounds):
            order = gateways if round_no % 2 == 0 else gateways[::-1]
            for text, gateway in order:
                endpoint = next(e for e in endpoints(upstream, gateway, None) if e.name == args.path)
                if round_no == 0:
                    run_once(tools, endpoint, 20, 3, work)  # warm connections and caches
                group = gateway.processes()
                group.reset_peak()
                before = {name: group.cpu_seconds(name) for name in group.roots}
                result = run_once(tools, endpoint, args.rate, args.seconds, work)
                cpu = {name: group.cpu_seconds(name) - before[name] for name in group.roots}
                rss = {name: group.peak_rss_mb(name) for name in group.roots}
                results[text].rounds.append(round_figures(result, cpu, rss))
                print(
                    f"probe: round {round_no + 1}/{args.rounds} {text or '(as configured)'}: "
                    f"p50 {results[text].rounds[-1]['p50_ms']:.2f} ms",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        for _, gateway in gateways:
            gateway.stop()
        upstream.stop()
    report = {
        "command": "python -m bench.probe " + " ".join(sys.argv[1:] if argv is None else argv),
        "interlock_commit": commit(),
        "rate": args.rate,
        "path": args.path,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "variants": [{**asdict(r), "median": r.summary()} for r in results.values()],
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for r in results.values():
        med = r.summary()
        per_process = ", ".join(
            f"{k.split('.', 1)[1]} {v:.2f}" for k, v in med.items() if k.startswith("cpu_ms_per_call.")
        )
        print(
            f"{r.variant}: p50 {med['p50_ms']:.2f} p90 {med['p90_ms']:.2f} p99 {med['p99_ms']:.2f} ms, "
            f"errors {med['errors']:.0f}; CPU ms per call: {per_process}; "
            f"router peak RSS {med.get('peak_rss_mb.router', float('nan')):.0f} MB"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
