"""Jaeger v2 all-in-one with in-memory storage, built from its Go module.

The binary is `cmd/jaeger` of the Go module github.com/jaegertracing/jaeger, built with
the machine's `go` into the cache: GOPATH, the module cache, the build cache and the
binary all live under $INTERLOCK_CACHE, so only the first build on a machine touches
the Go module proxy and takes minutes; later calls return the cached binary at once.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from interlock.devservers._ports import LOOPBACK, free_port, port_open
from interlock.devservers._process import DevServerError, ManagedProcess, progress
from interlock.devservers.kafka import default_cache_dir

JAEGER_VERSION = os.environ.get("INTERLOCK_JAEGER_VERSION", "1.76.0")
JAEGER_MODULE = "github.com/jaegertracing/jaeger"
_JAEGER_PACKAGE = f"{JAEGER_MODULE}/cmd/jaeger"
# Where `go` lives when it is not on PATH (the official tarball's place).
_GO_FALLBACK = Path("/usr/local/go/bin/go")
# Print a build progress line every this many compiled packages (about 2,300 in all).
_PROGRESS_EVERY = 100

# Only what Interlock uses: OTLP/gRPC in, memory storage, the query API and UI out.
# The collector's own metrics (a Prometheus port) and Jaeger's self-tracing are off, so
# the process opens no port beyond the three given.
_CONFIG = """service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    resource:
      service.name: jaeger
    metrics:
      level: none
    logs:
      level: info

extensions:
  jaeger_storage:
    backends:
      interlock_memory:
        memory:
          max_traces: {max_traces}
  jaeger_query:
    storage:
      traces: interlock_memory
    enable_tracing: false
    http:
      endpoint: "{host}:{query_port}"
    grpc:
      endpoint: "{host}:{query_grpc_port}"

receivers:
  otlp:
    protocols:
      grpc:
        endpoint: "{host}:{otlp_port}"

processors:
  batch:
    timeout: 100ms

exporters:
  jaeger_storage_exporter:
    trace_storage: interlock_memory
"""


def _go_executable() -> str:
    found = shutil.which("go")
    if found is not None:
        return found
    if _GO_FALLBACK.is_file():
        return str(_GO_FALLBACK)
    raise DevServerError(
        "jaeger: `go` not found; install Go 1.24 or newer (https://go.dev/dl) to build Jaeger from its module"
    )


def go_environment(cache_dir: Path) -> dict[str, str]:
    """The environment `go` runs in: GOPATH, module cache and build cache under `cache_dir/jaeger`."""
    root = cache_dir / "jaeger"
    env = dict(os.environ)
    env.update(
        {
            "GOPATH": str(root / "gopath"),
            "GOMODCACHE": str(root / "gopath" / "pkg" / "mod"),
            "GOCACHE": str(root / "gocache"),
            # -modcacherw: the module cache can be deleted without chmod first.
            "GOFLAGS": "-modcacherw -buildvcs=false",
        }
    )
    # A Jaeger release that needs a newer Go than the machine's: the caller exports
    # GOTOOLCHAIN (e.g. go1.27.3) and `go` fetches that toolchain through the module proxy.
    return env


def jaeger_binary_path(cache_dir: Path | None = None, version: str = JAEGER_VERSION) -> Path:
    """Where the built binary of `version` lives (it may not exist yet)."""
    return (cache_dir or default_cache_dir()) / "jaeger" / "bin" / f"jaeger-{version}"


def ensure_jaeger_binary(cache_dir: Path | None = None, version: str = JAEGER_VERSION) -> Path:
    """Return the Jaeger binary, building it from the Go module on first use only."""
    cache = cache_dir or default_cache_dir()
    binary = jaeger_binary_path(cache, version)
    root = binary.parent.parent
    # The throwaway Go module whose go.mod names Jaeger as a tool; builds happen in it.
    module = root / "src"
    module.mkdir(parents=True, exist_ok=True)
    binary.parent.mkdir(parents=True, exist_ok=True)
    # A lock so parallel test workers (or a test run and `interlock up`) build once.
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.is_file() and os.access(binary, os.X_OK):
            return binary
        go = _go_executable()
        env = go_environment(cache)
        started = time.monotonic()
        progress(f"building Jaeger v{version} from {JAEGER_MODULE} with {go} into {root} (long on first run) ...")
        if not (module / "go.mod").is_file():
            _run_go([go, "mod", "init", "interlock.local/jaeger-build"], module, env, "go mod init")
        progress(f"resolving {_JAEGER_PACKAGE}@v{version} and its dependencies through the Go module proxy ...")
        _run_go([go, "get", "-tool", f"{_JAEGER_PACKAGE}@v{version}"], module, env, "go get")
        progress("compiling (go build -v; progress every 100 packages) ...")
        tmp = binary.with_name(f"{binary.name}.tmp")
        _run_go([go, "build", "-v", "-o", str(tmp), _JAEGER_PACKAGE], module, env, "go build", count_lines=True)
        # Renamed last: an existing binary is always a complete one.
        tmp.replace(binary)
        progress(f"built {binary} in {time.monotonic() - started:.0f}s")
        return binary


def _run_go(cmd: list[str], cwd: Path, env: dict[str, str], what: str, *, count_lines: bool = False) -> None:
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    tail: list[str] = []
    done = 0
    started = time.monotonic()
    for line in proc.stdout:
        tail = [*tail[-60:], line.rstrip()]
        if count_lines:
            done += 1
            if done % _PROGRESS_EVERY == 0:
                progress(f"  {done} packages compiled ({time.monotonic() - started:.0f}s)")
        elif line.startswith("go: downloading") or line.startswith("go: added"):
            done += 1
            if done % _PROGRESS_EVERY == 0:
                progress(f"  {done} modules resolved ({time.monotonic() - started:.0f}s)")
    code = proc.wait()
    if code != 0:
        hint = ""
        if any("requires go >=" in line or "toolchain" in line for line in tail):
            hint = "\n(this Jaeger needs a newer Go: export GOTOOLCHAIN=go1.27.3 and run again)"
        raise DevServerError(f"jaeger: {what} failed ({code}):\n" + "\n".join(tail[-40:]) + hint)


def jaeger_config(
    otlp_port: int, query_port: int, query_grpc_port: int, *, max_traces: int = 100_000, host: str = LOOPBACK
) -> str:
    """The YAML config Jaeger v2 runs with: OTLP/gRPC receiver, memory store, query API."""
    return _CONFIG.format(
        host=host,
        otlp_port=otlp_port,
        query_port=query_port,
        query_grpc_port=query_grpc_port,
        max_traces=max_traces,
    )


def jaeger_answers(query_url: str) -> bool:
    """True when Jaeger's query API answers (GET /api/services)."""
    try:
        return httpx.get(f"{query_url}/api/services", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


class JaegerServer(ManagedProcess):
    """Jaeger v2 all-in-one on 127.0.0.1: OTLP/gRPC in, traces in memory, query API and UI.

    Traces live only as long as the process (up to `max_traces`, oldest evicted first).
    """

    name = "jaeger"

    def __init__(
        self,
        data_dir: Path,
        otlp_port: int | None = None,
        query_port: int | None = None,
        *,
        query_grpc_port: int | None = None,
        max_traces: int = 100_000,
        cache_dir: Path | None = None,
        version: str = JAEGER_VERSION,
        executable: Path | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        super().__init__(data_dir, startup_timeout)
        self.otlp_port = otlp_port or free_port()
        self.query_port = query_port or free_port()
        self.query_grpc_port = query_grpc_port or free_port()
        self.max_traces = max_traces
        self.cache_dir = cache_dir
        self.version = version
        self.executable = executable
        self._binary: Path | None = None

    @property
    def otlp_endpoint(self) -> str:
        """OTLP/gRPC receiver, `127.0.0.1:port` (plaintext)."""
        return f"{LOOPBACK}:{self.otlp_port}"

    @property
    def query_url(self) -> str:
        """Base URL of the query HTTP API (`/api/traces/{id}`) and of the UI."""
        return f"http://{LOOPBACK}:{self.query_port}"

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.otlp_port, self.query_port, self.query_grpc_port)

    def _prepare(self) -> None:
        self._binary = self.executable or ensure_jaeger_binary(self.cache_dir, self.version)
        config = jaeger_config(self.otlp_port, self.query_port, self.query_grpc_port, max_traces=self.max_traces)
        (self.data_dir / "jaeger.yaml").write_text(config, encoding="utf-8")

    def _command(self) -> Sequence[str]:
        assert self._binary is not None
        return [str(self._binary), "--config", str(self.data_dir / "jaeger.yaml")]

    def _ready(self) -> bool:
        # Extensions (the query API) start before receivers: ready once both answer.
        return jaeger_answers(self.query_url) and port_open(self.otlp_port)
