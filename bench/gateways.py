"""The processes a bench run starts: the nginx upstream, the Interlock mesh, LiteLLM's proxy.

Every one listens on free loopback ports and points at the same upstream, whose two base
paths (`/unary/v1`, `/stream/v1`, see bench/nginx.conf) serve a fixed chat completion
and the same answer as an SSE stream. Both gateways expose the models `bench-unary` and
`bench-stream`, one per base path.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import httpx

from interlock.devservers import ManagedProcess, free_port
from interlock.devservers._ports import LOOPBACK, port_open
from interlock.mesh import Mesh, MeshConfig
from interlock.testing import create_key

from .procstat import ProcessGroup

HERE = Path(__file__).resolve().parent
MODELS = ("bench-unary", "bench-stream")
LITELLM_MASTER_KEY = "sk-interlock-bench"
PROJECT = "bench"
BUDGET_USD = "1000000"
"""Big enough that the budget check runs on every call and never refuses one."""
GATEWAY_CPU = str(max(os.sched_getaffinity(0)))
"""The CPU each gateway's serving process is bound to (the last this process may use):
Interlock's router (`INTERLOCK_ROUTER_CPUS`) and LiteLLM's proxy alike. The load
generators, nginx and Interlock's other services go where the kernel puts them."""


class NginxUpstream(ManagedProcess):
    """nginx serving bench/nginx.conf's fixed bodies on a free port."""

    name = "nginx"

    def __init__(self, data_dir: Path, executable: Path, port: int | None = None) -> None:
        super().__init__(data_dir, startup_timeout=20.0)
        self.executable = executable
        self.port = port or free_port()

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.port,)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def _prepare(self) -> None:
        text = (HERE / "nginx.conf").read_text()
        text = text.replace("@PREFIX@", str(self.data_dir)).replace("@PORT@", str(self.port))
        (self.data_dir / "nginx.conf").write_text(text)

    def _command(self) -> Sequence[str]:
        return [str(self.executable), "-p", str(self.data_dir), "-c", str(self.data_dir / "nginx.conf")]

    def _ready(self) -> bool:
        return port_open(self.port)


class LiteLLMProxy(ManagedProcess):
    """LiteLLM's proxy from its own venv: one worker, no database, a fixed master key."""

    name = "litellm"

    def __init__(
        self, data_dir: Path, executable: Path, upstream_url: str, workers: int = 1, cpus: str = GATEWAY_CPU
    ) -> None:
        """`cpus`: the CPU list (as `taskset -c` takes it) the proxy is bound to; empty: unbound."""
        super().__init__(data_dir, startup_timeout=180.0)
        self.executable = executable
        self.upstream_url = upstream_url
        self.workers = workers
        self.cpus = cpus
        self.port = free_port()

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.port,)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def _prepare(self) -> None:
        text = (HERE / "litellm.yaml").read_text()
        text = text.replace("@UPSTREAM@", self.upstream_url).replace("@MASTER_KEY@", LITELLM_MASTER_KEY)
        (self.data_dir / "litellm.yaml").write_text(text)
        # Offline and quiet: the bundled price map instead of a download, no telemetry.
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        os.environ.setdefault("LITELLM_LOG", "ERROR")

    def _command(self) -> Sequence[str]:
        # Bound as the router is (GATEWAY_CPU), by util-linux's taskset, which execs the proxy.
        bind = ["taskset", "-c", self.cpus] if self.cpus else []
        return [
            *bind,
            str(self.executable),
            "--config",
            str(self.data_dir / "litellm.yaml"),
            "--host",
            LOOPBACK,
            "--port",
            str(self.port),
            "--num_workers",
            str(self.workers),
            "--telemetry",
            "False",
        ]

    def _ready(self) -> bool:
        try:
            response = httpx.get(
                f"{self.url}/v1/models", headers={"authorization": f"Bearer {LITELLM_MASTER_KEY}"}, timeout=1.0
            )
        except httpx.HTTPError:
            return False
        return response.status_code == 200


def routing_yaml(upstream_url: str) -> str:
    """Interlock's routing config: the two bench models on the nginx upstream (keyless)."""
    lines = ["schema_version: 2", "providers:"]
    for model in MODELS:
        kind = model.removeprefix("bench-")
        lines.append(f"  - {{name: {model}, kind: openai, base_url: '{upstream_url}/{kind}/v1'}}")
    lines.append("models:")
    for model in MODELS:
        lines.append(f"  - {{name: {model}, provider: {model}, upstream_model: gpt-4o-mini}}")
    return "\n".join(lines) + "\n"


LIMITS_YAML = """\
# Every descriptor the router sends has a rule, so each call is really admitted, yet no
# rule is ever reached at the bench's rates.
domain: interlock
descriptors:
  - key: api_key
    rate_limit: {unit: minute, requests_per_unit: 100000000}
  - key: project
    rate_limit:
      - {unit: minute, requests_per_unit: 100000000}
      - {unit: day, requests_per_unit: 1000000000}
  - key: provider
    descriptors:
      - key: model
        rate_limit: {unit: minute, requests_per_unit: 100000000}
  - key: usage
    value: tokens
    descriptors:
      - key: api_key
        rate_limit: {unit: minute, requests_per_unit: 1000000000}
      - key: project
        rate_limit: {unit: minute, requests_per_unit: 1000000000}
"""


BENCH_ENV = {
    # Calls reserve against a budget lease in memory; commits travel in batches, sent after
    # the caller has its answer (the lease holds the worst case until the commit lands).
    "INTERLOCK_ROUTER_BUDGET_LEASE_USD": "0.05",
    "INTERLOCK_ROUTER_COMMIT_AFTER_ANSWER": "true",
    # Calls are admitted from rate-limit leases (blocks of hits granted for 1 s, asked for in
    # the background); limits stay exact, the last half of each window is decided per call.
    "INTERLOCK_ROUTER_RATELIMIT_LEASE_MS": "1000",
    # One host for everything: the services whose work follows the answers (commits, usage
    # and span ingest) take a core only when the router and the rest want none (the idle
    # CPU policy), and at niceness 10 whenever they are starved and leave it.
    "INTERLOCK_BUDGET_NICE": "10",
    "INTERLOCK_TRACEINGEST_NICE": "10",
    "INTERLOCK_BUDGET_CPU_POLICY": "idle",
    "INTERLOCK_TRACEINGEST_CPU_POLICY": "idle",
    # The router's threads on one CPU: gRPC core's poller and the event loop hand each gRPC
    # call back and forth without waking the other CPU (interlock._server.set_cpu_affinity).
    "INTERLOCK_ROUTER_CPUS": GATEWAY_CPU,
    # gRPC calls go to the router's event-loop transport (a second port, chosen free by
    # InterlockGateway): no hand-offs between gRPC core's poller thread and the event loop.
    "INTERLOCK_ROUTER_LOOP_GRPC_PORT": "0",
    # 1% of traces, as a deployment at hundreds of calls a second would sample; usage events
    # (the accounting path) are written for every call regardless.
    "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
    "OTEL_TRACES_SAMPLER_ARG": "0.01",
}
"""Environment of the benchmarked mesh's services (docs/BENCHMARKS.md states it)."""


LOOP_GRPC_PORT = "INTERLOCK_ROUTER_LOOP_GRPC_PORT"


class InterlockGateway:
    """The embedded mesh with auth, rate-limit and budget checks on, routed to the upstream."""

    def __init__(self, upstream_url: str, env: Mapping[str, str] | None = None, python: str = "") -> None:
        """`env`: settings over BENCH_ENV's (`bench.probe` compares variants this way);
        `python`: the interpreter the services run on (default: this process's)."""
        self._tmp = tempfile.TemporaryDirectory(prefix="interlock-bench-mesh-")
        data = Path(self._tmp.name)
        (data / "routing.yaml").write_text(routing_yaml(upstream_url))
        (data / "limits.yaml").write_text(LIMITS_YAML)
        extra_env = {**BENCH_ENV, **(env or {})}
        # The router's event-loop gRPC port, when on, is the one ghz calls (on a free port).
        self.loop_grpc_port = 0
        if int(extra_env.get(LOOP_GRPC_PORT, "-1")) >= 0:
            self.loop_grpc_port = free_port()
            extra_env[LOOP_GRPC_PORT] = str(self.loop_grpc_port)
        self.cfg = MeshConfig(
            data_dir=data,
            router_port=free_port(),
            router_http_port=free_port(),
            ratelimit_port=free_port(),
            budget_port=free_port(),
            traceingest_port=free_port(),
            routing_path=str(data / "routing.yaml"),
            limits_path=str(data / "limits.yaml"),
            fake_provider=False,
            extra_env=extra_env,
            python=python,
        )
        self.mesh = Mesh(self.cfg)
        self.api_key = ""

    @property
    def grpc_target(self) -> str:
        if self.loop_grpc_port:
            return f"{self.cfg.host}:{self.loop_grpc_port}"
        return self.cfg.target("router")

    @property
    def http_url(self) -> str:
        return f"http://{self.cfg.host}:{self.cfg.router_http_port}"

    def start(self) -> InterlockGateway:
        self.mesh.start(timeout_s=120)
        self.api_key = create_key(self.mesh, PROJECT, "bench")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "interlock.cli",
                "budget",
                "set",
                "--project",
                PROJECT,
                "--limit-usd",
                BUDGET_USD,
                "--budget-target",
                self.cfg.target("budget"),
                "--json",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        return self

    def processes(self) -> ProcessGroup:
        return ProcessGroup({name: proc.pid for name, proc in self.mesh.processes.items()})

    def stop(self) -> None:
        self.mesh.stop()
        self._tmp.cleanup()

    def __enter__(self) -> InterlockGateway:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
