"""The same flow in embedded mode: SQLite ledger, local spool instead of Kafka, chdb in-process.

No external server at all; usage and spans are read back through trace-ingest's own API,
because the embedded ClickHouse engine lives inside the trace-ingest process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import grpc
import pytest

import interlock
from interlock.mesh import Mesh
from interlock.router.v1 import router_pb2
from interlock.testing import auth, chat_params, create_key, router_stub, start_mesh, wait_for
from interlock.traceingest.v1 import traceingest_pb2, traceingest_pb2_grpc

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    m = start_mesh(tmp_path_factory.mktemp("embedded"))
    try:
        yield m
    finally:
        m.stop()


def cli(mesh: Mesh, *args: str) -> subprocess.CompletedProcess[str]:
    targets = [f"--{name}-target={mesh.cfg.target(name)}" for name in ("router", "ratelimit", "budget", "traceingest")]
    command = args[0]
    relevant = {
        "status": targets,
        "costs": [t for t in targets if "traceingest" in t],
        "keys": [t for t in targets if "budget" in t],
    }[command]
    return subprocess.run(
        [sys.executable, "-m", "interlock.cli", *args, *relevant], capture_output=True, text=True, timeout=60
    )


def test_status_exits_zero_when_all_four_serve(mesh: Mesh) -> None:
    result = cli(mesh, "status", "--json")
    assert result.returncode == 0, result.stderr
    assert {v["status"] for v in json.loads(result.stdout).values()} == {"SERVING"}


def test_keys_create_prints_the_key_alone_and_as_json(mesh: Mesh) -> None:
    plain = cli(mesh, "keys", "create", "--project", "p1", "--developer", "d1")
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.count("\n") == 1 and plain.stdout.startswith("il_")
    as_json = json.loads(cli(mesh, "keys", "create", "--project", "p1", "--developer", "d1", "--json").stdout)
    assert as_json["api_key"].startswith("il_") and as_json["api_key"] != plain.stdout.strip()


def test_request_is_accounted_and_traced_without_any_server(mesh: Mesh) -> None:
    key = create_key(mesh, "embedded", "erin")
    channel, stub = router_stub(mesh)
    params = chat_params()
    with channel:
        response = stub.Chat(router_pb2.ChatRequest(params=params), metadata=auth(key), timeout=30)
    with grpc.insecure_channel(mesh.cfg.target("traceingest")) as ti_channel:
        ti = traceingest_pb2_grpc.TraceIngestServiceStub(ti_channel)

        def run_row() -> traceingest_pb2.CostRow | None:
            rows = ti.QueryCosts(traceingest_pb2.QueryCostsRequest(group_by=["run_id", "model"]), timeout=10).rows
            return next((r for r in rows if r.keys[0] == params.run_id), None)

        row = wait_for(run_row, "the usage row in embedded ClickHouse")
        assert row.requests == 1
        assert (row.input_tokens, row.output_tokens, row.cost_nanos) == (
            response.usage.input_tokens,
            response.usage.output_tokens,
            response.cost_nanos,
        )
        expected = {
            ("router", "SERVER"),
            ("ratelimit", "SERVER"),
            ("budget", "SERVER"),
            ("budget", "PRODUCER"),
            ("trace-ingest", "CONSUMER"),
        }

        def full_trace() -> list[traceingest_pb2.Span] | None:
            spans = list(ti.GetTrace(traceingest_pb2.GetTraceRequest(trace_id=response.trace_id), timeout=10).spans)
            kinds = {(s.service_name, s.kind.removeprefix("SpanKind.")) for s in spans}
            has_provider = any(s.service_name == "router" and s.name.startswith("POST") for s in spans)
            has_insert = any("clickhouse" in s.name.lower() for s in spans)
            return spans if expected <= kinds and has_provider and has_insert else None

        wait_for(full_trace, "the embedded trace with every hop", timeout_s=60)


def test_costs_cli_reads_grouped_usage(mesh: Mesh) -> None:
    key = create_key(mesh, "cli-costs", "frank")
    with interlock.Client(target=mesh.cfg.target("router"), api_key=key) as client:
        results = [
            client.chat(model=m, messages=[{"role": "user", "content": "hi"}], max_tokens=16)
            for m in ("gpt-4o-mini", "gpt-4o", "gpt-4o")
        ]

    def costs() -> list[dict[str, Any]] | None:
        out = cli(mesh, "costs", "--by", "project,developer,model", "--since", "1d", "--json")
        assert out.returncode == 0, out.stderr
        rows = [r for r in json.loads(out.stdout) if r["project"] == "cli-costs"]
        return rows if sum(int(r["requests"]) for r in rows) == 3 else None

    rows = wait_for(costs, "three requests in `interlock costs`")
    by_model = {r["model"]: r for r in rows}
    assert by_model["gpt-4o"]["requests"] == 2
    expected = sum(r.cost_usd for r in results if r.model == "gpt-4o")
    assert Decimal(by_model["gpt-4o"]["cost_usd"]) == expected
    bad = cli(mesh, "costs", "--by", "colour")
    assert bad.returncode == 2 and "--by" in bad.stderr


def test_every_service_serves_health_and_reflection(mesh: Mesh) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    expected = {
        "router": "interlock.router.v1.RouterService",
        "ratelimit": "interlock.ratelimit.v1.RateLimitService",
        "budget": "interlock.budget.v1.BudgetService",
        "traceingest": "interlock.traceingest.v1.TraceIngestService",
    }
    for name, service in expected.items():
        with grpc.insecure_channel(mesh.cfg.target(name)) as channel:
            served = set(ProtoReflectionDescriptorDatabase(channel).get_services())
            assert {service, "grpc.health.v1.Health"} <= served, name
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=5
            )
            assert status.status == health_pb2.HealthCheckResponse.SERVING


def test_models_cli_lists_routes_with_genai_prices(mesh: Mesh) -> None:
    from genai_prices import Usage, calc_price

    key = create_key(mesh, "models", "mia")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "interlock.cli",
            "models",
            "--json",
            "--api-key",
            key,
            f"--router-target={mesh.cfg.target('router')}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    listing = json.loads(out.stdout)
    by_name = {m["model"]: m for m in listing["models"]}
    mini = by_name["gpt-4o-mini"]
    price = calc_price(
        Usage(input_tokens=1_000_000, output_tokens=1_000_000), model_ref="gpt-4o-mini", provider_id="openai"
    )
    assert Decimal(mini["input_usd_per_mtok"]) == price.input_price
    assert Decimal(mini["output_usd_per_mtok"]) == price.output_price
    assert mini["provider"] == "openai" and mini["context_window"] > 0
    denied = subprocess.run(
        [
            sys.executable,
            "-m",
            "interlock.cli",
            "models",
            "--api-key",
            "wrong",
            f"--router-target={mesh.cfg.target('router')}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert denied.returncode == 1 and "unauthenticated" in denied.stderr
