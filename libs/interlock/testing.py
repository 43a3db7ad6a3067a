"""Test helpers for code built on Interlock: a whole mesh on free ports, keys, polling.

Interlock's own end-to-end tests use these; so can an application's tests.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import grpc
import httpx

from interlock.budget.v1 import budget_pb2, budget_pb2_grpc
from interlock.devservers import free_port
from interlock.mesh import Mesh, MeshConfig
from interlock.router.v1 import router_pb2, router_pb2_grpc

T = TypeVar("T")


def start_mesh(
    data_dir: Path,
    kafka: str = "",
    clickhouse: str = "",
    redis: str = "",
    routing_path: str = "",
    fake_provider_port: int = 0,
    jaeger: str = "",
    extra_env: Mapping[str, str] | None = None,
    limits_path: str = "",
) -> Mesh:
    """The mesh as processes on free ports; `jaeger` is an OTLP/gRPC endpoint trace-ingest forwards
    to; `extra_env` adds settings (`INTERLOCK_ROUTER_...`) to every service's environment;
    `limits_path` is the rate-limiter's limits file (none: no limits)."""
    cfg = MeshConfig(
        data_dir=data_dir,
        router_port=free_port(),
        router_http_port=free_port(),
        ratelimit_port=free_port(),
        budget_port=free_port(),
        traceingest_port=free_port(),
        fake_provider_port=fake_provider_port or free_port(),
        kafka_bootstrap=kafka,
        clickhouse_url=clickhouse,
        redis_url=redis,
        jaeger_otlp_endpoint=jaeger,
        routing_path=routing_path,
        limits_path=limits_path,
        trace_export_delay_ms=200,
        extra_env=dict(extra_env or {}),
    )
    mesh = Mesh(cfg)
    mesh.start(timeout_s=120)
    return mesh


def create_key(mesh: Mesh, project: str = "search", developer: str = "alice") -> str:
    with grpc.insecure_channel(mesh.cfg.target("budget")) as channel:
        response = budget_pb2_grpc.BudgetServiceStub(channel).CreateApiKey(
            budget_pb2.CreateApiKeyRequest(project=project, developer=developer), timeout=10
        )
    return str(response.api_key)


def chat_params(content: str = "hello from e2e", **kw: object) -> router_pb2.ChatParams:
    fields: dict[str, object] = {
        "model": "gpt-4o-mini",
        "messages": [router_pb2.Message(role="user", content=content)],
        "max_tokens": 16,
        "request_id": f"e2e-{uuid.uuid4().hex}",
        "run_id": f"run-{uuid.uuid4().hex[:12]}",
    }
    fields.update(kw)
    return router_pb2.ChatParams(**fields)  # type: ignore[arg-type]


def router_stub(mesh: Mesh) -> tuple[grpc.Channel, router_pb2_grpc.RouterServiceStub]:
    channel = grpc.insecure_channel(
        mesh.cfg.target("router"), options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    )
    return channel, router_pb2_grpc.RouterServiceStub(channel)


def auth(key: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {key}"),)


def jaeger_spans(query_url: str, trace_id: str) -> list[tuple[str, str, str]]:
    """(service, span name, span id) of each span Jaeger's query API holds for `trace_id`; [] when none."""
    response = httpx.get(f"{query_url}/api/traces/{trace_id}", timeout=5.0)
    if response.status_code == 404:
        return []
    response.raise_for_status()
    spans: list[tuple[str, str, str]] = []
    for found in response.json().get("data") or []:
        services = {pid: process.get("serviceName", "") for pid, process in (found.get("processes") or {}).items()}
        for span in found.get("spans") or []:
            spans.append((services.get(span.get("processID"), ""), str(span["operationName"]), str(span["spanID"])))
    return spans


def wait_for(probe: Callable[[], T | None], what: str, timeout_s: float = 90.0, every_s: float = 0.25) -> T:
    """Poll until probe returns a value (not None); fail naming `what` when it never does."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last is not None:
            return last
        time.sleep(every_s)
    raise AssertionError(f"timed out waiting for {what}")
