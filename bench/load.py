"""Open-loop load at a fixed rate: vegeta for HTTP paths, ghz for gRPC paths, and their raw results.

Both generators send on a fixed schedule whatever the server does (vegeta adds workers
as needed; ghz runs with `--async`), so a slow gateway cannot slow the load down and
hide its own latency. Each run keeps one record per request (send time, latency,
status), from which rounds are summarised in bench/report.py.
"""

from __future__ import annotations

import base64
import csv
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from .tools import ROOT, Tools

PROMPT = "Summarise the benefits of connection pooling in two sentences."
MAX_TOKENS = 32
TIMEOUT_S = 10
"""Per-request timeout of both generators: a request slower than this counts as an error."""
GENERATOR_CPUS = 1
"""Cores each generator's Go runtime may use (GOMAXPROCS, their `cpus` flag). The generator
shares the machine's two cores with the gateway it measures; on one it still sends 1,000
calls/s on schedule and takes less CPU from the gateway (ghz at 1,000/s: 0.25 against 0.30
ms of CPU a call with both cores, docs/BENCHMARKS.md)."""


@dataclass(frozen=True)
class Endpoint:
    """One way of sending the same chat request."""

    name: str
    """Path name in reports, e.g. `interlock-grpc-stream`."""
    gateway: str
    """`upstream` (direct), `interlock` or `litellm`: whose processes this path loads."""
    stream: bool
    baseline: str
    """The direct path whose latency is subtracted to get added latency; empty for direct paths."""
    url: str = ""
    """HTTP URL (vegeta) ..."""
    grpc_target: str = ""
    """... or gRPC host:port (ghz)."""
    headers: dict[str, str] = field(default_factory=dict)
    model: str = ""

    @property
    def tool(self) -> str:
        return "ghz" if self.grpc_target else "vegeta"


@dataclass
class RunResult:
    """Raw outcome of one run of one endpoint at one rate."""

    latencies_ms: list[float]
    """Of successful requests."""
    ok: int
    errors: int
    error_kinds: dict[str, int]
    first_send_s: float
    last_done_s: float
    """Unix seconds: the window in which the run's requests were sent and answered."""

    @property
    def requests(self) -> int:
        return self.ok + self.errors


def http_body(model: str, stream: bool) -> dict[str, object]:
    body: dict[str, object] = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": MAX_TOKENS,
    }
    if stream:
        body["stream"] = True
    return body


def _tool(args: list[str]) -> str:
    """Run a load tool; its stdout, or an error carrying its stderr."""
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{Path(args[0]).name} {args[1]} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done.stdout


def _summarise(rows: list[tuple[float, float, bool, str]]) -> RunResult:
    """rows: (send unix s, latency ms, ok, error kind)."""
    latencies = [lat for _, lat, ok, _ in rows if ok]
    kinds: dict[str, int] = {}
    for _, _, ok, kind in rows:
        if not ok:
            kinds[kind] = kinds.get(kind, 0) + 1
    first = min((t for t, *_ in rows), default=0.0)
    last = max((t + lat / 1000 for t, lat, *_ in rows), default=0.0)
    return RunResult(latencies, len(latencies), len(rows) - len(latencies), kinds, first, last)


def _error_kind(text: str) -> str:
    # Error texts carry addresses and ports; keep the part that names the failure.
    text = re.sub(r"\d+\.\d+\.\d+\.\d+:\d+", "ADDR", text)
    return text[-80:] if len(text) > 80 else text


def run_vegeta(
    tools: Tools, endpoint: Endpoint, rate: float, seconds: float, work: Path, keep_bodies: bool = False
) -> tuple[RunResult, list[bytes]]:
    """Attack one HTTP endpoint; with keep_bodies, also return the response bodies (for checks)."""
    work.mkdir(parents=True, exist_ok=True)
    target = {
        "method": "POST",
        "url": endpoint.url,
        "body": base64.b64encode(json.dumps(http_body(endpoint.model, endpoint.stream)).encode()).decode(),
        "header": {"Content-Type": ["application/json"], **{k: [v] for k, v in endpoint.headers.items()}},
    }
    targets = work / f"{endpoint.name}.targets.json"
    targets.write_text(json.dumps(target) + "\n")
    out = work / f"{endpoint.name}.bin"
    _tool(
        [
            str(tools.vegeta),
            f"-cpus={GENERATOR_CPUS}",
            "attack",
            "-format=json",
            f"-targets={targets}",
            f"-rate={rate:g}/1s",
            f"-duration={seconds:g}s",
            f"-timeout={TIMEOUT_S}s",
            "-keepalive=true",
            # Bodies are read to the end either way; only keep them when they are checked.
            f"-max-body={-1 if keep_bodies else 0}",
            f"-output={out}",
        ]
    )
    encoded = _tool([str(tools.vegeta), "encode", "-to=csv", str(out)])
    out.unlink()
    rows: list[tuple[float, float, bool, str]] = []
    bodies: list[bytes] = []
    # timestamp ns, code, latency ns, bytes out, bytes in, error, body (base64), attack, seq, ...
    for rec in csv.reader(encoded.splitlines()):
        code, error = int(rec[1]), rec[5]
        ok = 200 <= code < 300 and not error
        rows.append((int(rec[0]) / 1e9, int(rec[2]) / 1e6, ok, _error_kind(error) if error else f"HTTP {code}"))
        if keep_bodies:
            bodies.append(base64.b64decode(rec[6]) if rec[6] else b"")
    return _summarise(rows), bodies


def router_protoset(work: Path) -> Path:
    """The router's compiled descriptors: ghz's own .proto parser predates proto3 `optional`."""
    out = work / "router.protoset"
    if not out.exists():
        _tool(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                f"--proto_path={ROOT / 'protos'}",
                "--include_imports",
                f"--descriptor_set_out={out}",
                str(ROOT / "protos" / "interlock" / "router" / "v1" / "router.proto"),
            ]
        )
    return out


_FRACTION = re.compile(r"(\.\d{6})\d+")


def _parse_time(text: str) -> float:
    # ghz prints nanoseconds; datetime takes microseconds.
    return datetime.fromisoformat(_FRACTION.sub(r"\1", text.replace("Z", "+00:00"))).timestamp()


def run_ghz(tools: Tools, endpoint: Endpoint, rate: float, seconds: float, work: Path) -> RunResult:
    """Drive one gRPC method of the router (Chat or ChatStream) at a fixed rate."""
    work.mkdir(parents=True, exist_ok=True)
    out = work / f"{endpoint.name}.ghz.json"
    method = "ChatStream" if endpoint.stream else "Chat"
    params = {
        "model": endpoint.model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": MAX_TOKENS,
    }
    _tool(
        [
            str(tools.ghz),
            "--insecure",
            "--protoset",
            str(router_protoset(work)),
            "--call",
            f"interlock.router.v1.RouterService.{method}",
            "--data",
            json.dumps({"params": params}),
            "--metadata",
            json.dumps(endpoint.headers),
            # Open loop: with --async each tick sends at once, never waiting for earlier calls.
            "--async",
            "--rps",
            str(max(1, round(rate))),
            "--concurrency",
            "16",
            "--connections",
            "1",
            "--cpus",
            str(GENERATOR_CPUS),
            "--duration",
            f"{seconds:g}s",
            "--duration-stop",
            "wait",
            "--timeout",
            f"{TIMEOUT_S}s",
            "--format",
            "json",
            "--output",
            str(out),
            endpoint.grpc_target,
        ]
    )
    report = json.loads(out.read_text())
    out.unlink()
    rows: list[tuple[float, float, bool, str]] = []
    for detail in report.get("details") or ():
        status = str(detail.get("status") or "")
        error = str(detail.get("error") or "")
        ok = status == "OK" and not error
        rows.append(
            (_parse_time(str(detail["timestamp"])), float(detail["latency"]) / 1e6, ok, _error_kind(error or status))
        )
    return _summarise(rows)


def run_once(tools: Tools, endpoint: Endpoint, rate: float, seconds: float, work: Path) -> RunResult:
    """One open-loop run of `endpoint` with its generator (ghz for gRPC, vegeta for HTTP)."""
    if endpoint.tool == "ghz":
        return run_ghz(tools, endpoint, rate, seconds, work)
    return run_vegeta(tools, endpoint, rate, seconds, work)[0]
