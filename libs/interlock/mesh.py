"""Start and stop the four Interlock services (and the fake provider) as local processes.

Used by `interlock up` and by the end-to-end tests, so both run the mesh the same way.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from interlock._server import GRPC_EXPERIMENTS

SERVICES = ("traceingest", "ratelimit", "budget", "router")


@dataclass
class MeshConfig:
    """Where the mesh keeps its state and which engines it uses."""

    data_dir: Path = Path("var")
    """Ledger, spool, embedded ClickHouse data and logs live here."""
    host: str = "127.0.0.1"
    router_port: int = 50051
    router_http_port: int = 8080
    """The router's OpenAI/Anthropic-compatible HTTP facade."""
    ratelimit_port: int = 50052
    budget_port: int = 50053
    traceingest_port: int = 50054
    fake_provider_port: int = 8089
    kafka_bootstrap: str = ""
    """Kafka bootstrap servers; empty uses the local spool."""
    clickhouse_url: str = ""
    """ClickHouse HTTP URL; empty uses chdb inside trace-ingest."""
    redis_url: str = ""
    """Redis for rate-limit counters; empty keeps them in memory."""
    jaeger_otlp_endpoint: str = ""
    """Jaeger's OTLP/gRPC receiver (`host:port`) trace-ingest forwards spans to; empty: none."""
    routing_path: str = ""
    """Routing YAML; empty routes the default models to the fake provider."""
    limits_path: str = ""
    """Rate-limit YAML; empty means no limits."""
    fake_provider: bool = True
    """Start the built-in fake OpenAI-compatible provider."""
    trace_export_delay_ms: int = 500
    extra_env: Mapping[str, str] = field(default_factory=dict)
    python: str = ""
    """Interpreter the services run on (a venv's python with Interlock installed); empty:
    the one running this process."""

    def target(self, service: str) -> str:
        port = {
            "router": self.router_port,
            "ratelimit": self.ratelimit_port,
            "budget": self.budget_port,
            "traceingest": self.traceingest_port,
        }[service]
        return f"{self.host}:{port}"


class MeshError(RuntimeError):
    """A service did not start; the message carries the tail of its log."""


def service_env(cfg: MeshConfig, service: str) -> dict[str, str]:
    data = cfg.data_dir.resolve()
    otlp = cfg.target("traceingest")
    common = {"OTLP_ENDPOINT": otlp, "HOST": cfg.host}
    specific: dict[str, str]
    if service == "traceingest":
        specific = {
            "PORT": str(cfg.traceingest_port),
            "KAFKA_BOOTSTRAP": cfg.kafka_bootstrap,
            "CLICKHOUSE_URL": cfg.clickhouse_url,
            "CHDB_PATH": str(data / "chdb"),
            "SPOOL_PATH": str(data / "spool" / "usage.db"),
            "DLQ_SPOOL_PATH": str(data / "spool" / "usage.dlq.db"),
            # QueryCosts with an API key is answered for that key's project; budget checks keys.
            "BUDGET_TARGET": cfg.target("budget"),
            "JAEGER_OTLP_ENDPOINT": cfg.jaeger_otlp_endpoint,
        }
    elif service == "ratelimit":
        specific = {"PORT": str(cfg.ratelimit_port), "REDIS_URL": cfg.redis_url, "LIMITS_PATH": cfg.limits_path}
    elif service == "budget":
        specific = {
            "PORT": str(cfg.budget_port),
            "DB_PATH": str(data / "budget" / "ledger.db"),
            "KAFKA_BOOTSTRAP": cfg.kafka_bootstrap,
            "SPOOL_PATH": str(data / "spool" / "usage.db"),
            "ALERTS_SPOOL_PATH": str(data / "spool" / "alerts.db"),
        }
    else:
        specific = {
            "PORT": str(cfg.router_port),
            "HTTP_PORT": str(cfg.router_http_port),
            "RATELIMIT_TARGET": cfg.target("ratelimit"),
            "BUDGET_TARGET": cfg.target("budget"),
            "ROUTING_PATH": cfg.routing_path,
            "FAKE_PROVIDER_URL": f"http://{cfg.host}:{cfg.fake_provider_port}",
        }
    prefix = f"INTERLOCK_{service.upper()}_"
    env = dict(os.environ)
    env.update({prefix + k: v for k, v in {**common, **specific}.items()})
    env["OTEL_BSP_SCHEDULE_DELAY"] = str(cfg.trace_export_delay_ms)
    env.setdefault("GRPC_EXPERIMENTS", GRPC_EXPERIMENTS)
    env.update(cfg.extra_env)
    return env


def health_status(target: str, timeout_s: float = 1.0) -> str:
    """`SERVING`, `NOT_SERVING`, ... or `UNREACHABLE`."""
    with grpc.insecure_channel(target) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.RpcError:
            return "UNREACHABLE"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


class Mesh:
    """The processes of one mesh; `with Mesh(cfg) as mesh:` starts and stops them."""

    def __init__(self, cfg: MeshConfig, progress: bool = False) -> None:
        self.cfg = cfg
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._progress = progress
        self.log_dir = cfg.data_dir / "logs"

    def _say(self, text: str) -> None:
        if self._progress:
            print(text, file=sys.stderr, flush=True)

    def _spawn(self, name: str, module: str, args: list[str], env: dict[str, str]) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child from here on
        self.processes[name] = subprocess.Popen(
            [self.cfg.python or sys.executable, "-m", module, *args], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()

    def _tail(self, name: str, lines: int = 30) -> str:
        path = self.log_dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def _wait_serving(self, name: str, target: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            proc = self.processes[name]
            if proc.poll() is not None:
                raise MeshError(f"{name} exited with {proc.returncode}:\n{self._tail(name)}")
            if health_status(target, 0.5) == "SERVING":
                return
            time.sleep(0.1)
        raise MeshError(f"{name} not SERVING at {target} after {timeout_s:.0f}s:\n{self._tail(name)}")

    def _wait_http(self, name: str, url: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            proc = self.processes[name]
            if proc.poll() is not None:
                raise MeshError(f"{name} exited with {proc.returncode}:\n{self._tail(name)}")
            try:
                if httpx.get(url, headers={"authorization": "Bearer probe"}, timeout=0.5).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise MeshError(f"{name} not answering at {url} after {timeout_s:.0f}s:\n{self._tail(name)}")

    def start(self, timeout_s: float = 60.0) -> None:
        cfg = self.cfg
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            if cfg.fake_provider:
                self._say(f"starting fake provider on {cfg.host}:{cfg.fake_provider_port}")
                self._spawn(
                    "fakeprovider",
                    "interlock.services.fakeprovider",
                    ["--host", cfg.host, "--port", str(cfg.fake_provider_port)],
                    dict(os.environ),
                )
                self._wait_http("fakeprovider", f"http://{cfg.host}:{cfg.fake_provider_port}/v1/models", timeout_s)
            for name in SERVICES:
                self._say(f"starting {name} on {cfg.target(name)}")
                self._spawn(name, f"interlock.services.{name}", [], service_env(cfg, name))
                self._wait_serving(name, cfg.target(name), timeout_s)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM in reverse start order (router first), so in-flight calls drain downstream."""
        for name in reversed(list(self.processes)):
            proc = self.processes[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.processes.clear()

    def status(self) -> dict[str, str]:
        return {name: health_status(self.cfg.target(name)) for name in SERVICES}

    def __enter__(self) -> Mesh:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
