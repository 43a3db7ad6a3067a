"""Budgets are hard across router replicas, survive a kill -9 of the budget service, and a
stream that ends early is billed for what it produced.

The mesh runs as processes with the fake provider; a routing file prices one model at
output tokens only, so a call's worst case equals its actual cost when it uses all of
max_tokens, and a $1.00 budget must end between $1.00 minus one call and $1.00 exactly.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
import sys
import time
import uuid
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
import yaml

from interlock.budget.v1 import budget_pb2, budget_pb2_grpc
from interlock.devservers import free_port
from interlock.mesh import Mesh, MeshConfig, health_status, service_env
from interlock.pricing import NANOS_PER_USD
from interlock.router.v1 import router_pb2, router_pb2_grpc
from interlock.services.budget.adapters.sqlite_ledger import SqliteLedger
from interlock.testing import auth, chat_params, create_key, wait_for
from interlock.traceingest.v1 import traceingest_pb2, traceingest_pb2_grpc

pytestmark = pytest.mark.e2e

WORDS = 9
"""Prompt words; the fake echoes them after `Echo:`, so an answer is WORDS + 1 tokens."""
PRICE_PER_OUTPUT_TOKEN_NANOS = 300_000  # $300 per million output tokens, inputs free
CALL_NANOS = (WORDS + 1) * PRICE_PER_OUTPUT_TOKEN_NANOS
PROMPT = " ".join(["w"] * WORDS)


def write_routing(path: Path, fake_port: int) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "providers": [{"name": "openai", "kind": "openai", "base_url": f"http://127.0.0.1:{fake_port}/v1"}],
                "models": [
                    {
                        "name": "metered",
                        "provider": "openai",
                        "upstream_model": "gpt-4o-mini",
                        "price": {"input_per_mtok": 0, "output_per_mtok": PRICE_PER_OUTPUT_TOKEN_NANOS / 1000},
                    },
                    {
                        "name": "metered-slow",
                        "provider": "openai",
                        "upstream_model": "gpt-4o-mini@chunk_delay_ms=100",
                        "price": {"input_per_mtok": 0, "output_per_mtok": PRICE_PER_OUTPUT_TOKEN_NANOS / 1000},
                    },
                    {
                        "name": "metered-cut",
                        "provider": "openai",
                        "upstream_model": "gpt-4o-mini@truncate_after=3",
                        "price": {"input_per_mtok": 0, "output_per_mtok": PRICE_PER_OUTPUT_TOKEN_NANOS / 1000},
                    },
                ],
            }
        )
    )
    return path


def start_metered_mesh(tmp: Path, **env: str) -> Mesh:
    fake_port = free_port()
    cfg = MeshConfig(
        data_dir=tmp / "mesh",
        router_port=free_port(),
        router_http_port=free_port(),
        ratelimit_port=free_port(),
        budget_port=free_port(),
        traceingest_port=free_port(),
        fake_provider_port=fake_port,
        routing_path=str(write_routing(tmp / "routing.yaml", fake_port)),
        trace_export_delay_ms=200,
        extra_env=env,
    )
    mesh = Mesh(cfg)
    mesh.start(timeout_s=120)
    return mesh


def serving(target: str) -> bool | None:
    return True if health_status(target) == "SERVING" else None


class RouterReplicas:
    """Extra router processes with the mesh router's environment, on their own ports."""

    def __init__(self, mesh: Mesh, count: int) -> None:
        self.targets: list[str] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        for i in range(count):
            port = free_port()
            env = service_env(mesh.cfg, "router")
            env["INTERLOCK_ROUTER_PORT"] = str(port)
            env["INTERLOCK_ROUTER_HTTP_PORT"] = str(free_port())
            log = (mesh.log_dir / f"router-replica-{i}.log").open("ab")
            self._procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "interlock.services.router"], env=env, stdout=log, stderr=subprocess.STDOUT
                )
            )
            log.close()
            self.targets.append(f"{mesh.cfg.host}:{port}")
        for target in self.targets:
            wait_for(functools.partial(serving, target), f"router replica {target}")

    def stop(self) -> None:
        for proc in self._procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self._procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def restart_budget(mesh: Mesh) -> subprocess.Popen[bytes]:
    with (mesh.log_dir / "budget.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "interlock.services.budget"],
            env=service_env(mesh.cfg, "budget"),
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def set_budget(mesh: Mesh, project: str, usd: str) -> None:
    with grpc.insecure_channel(mesh.cfg.target("budget")) as channel:
        budget_pb2_grpc.BudgetServiceStub(channel).SetBudget(
            budget_pb2.SetBudgetRequest(
                scope=budget_pb2.Scope(kind=budget_pb2.SCOPE_KIND_PROJECT, project=project),
                limit_nanos=int(Decimal(usd) * NANOS_PER_USD),
            ),
            timeout=10,
        )


def get_spend(mesh: Mesh, project: str, developer: str = "") -> budget_pb2.GetSpendResponse:
    kind = budget_pb2.SCOPE_KIND_DEVELOPER if developer else budget_pb2.SCOPE_KIND_PROJECT
    with grpc.insecure_channel(mesh.cfg.target("budget")) as channel:
        response: budget_pb2.GetSpendResponse = budget_pb2_grpc.BudgetServiceStub(channel).GetSpend(
            budget_pb2.GetSpendRequest(scope=budget_pb2.Scope(kind=kind, project=project, developer=developer)),
            timeout=10,
        )
    return response


def clickhouse_total(mesh: Mesh, project: str) -> tuple[int, int]:
    with grpc.insecure_channel(mesh.cfg.target("traceingest")) as channel:
        rows = (
            traceingest_pb2_grpc.TraceIngestServiceStub(channel)
            .QueryCosts(traceingest_pb2.QueryCostsRequest(group_by=["project"], project=project), timeout=10)
            .rows
        )
    return (int(rows[0].requests), int(rows[0].cost_nanos)) if rows else (0, 0)


async def fire(targets: list[str], key: str, count: int, model: str = "metered") -> tuple[list[int], list[str]]:
    """`count` concurrent calls spread over the routers: (costs of answers, error codes)."""
    channels = [grpc.aio.insecure_channel(t) for t in targets]
    stubs = [router_pb2_grpc.RouterServiceStub(c) for c in channels]

    async def one(i: int) -> int | str:
        params = chat_params(PROMPT, model=model, max_tokens=WORDS + 1)
        try:
            response = await stubs[i % len(stubs)].Chat(
                router_pb2.ChatRequest(params=params), metadata=auth(key), timeout=120
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code().name
        return int(response.cost_nanos)

    results = await asyncio.gather(*(one(i) for i in range(count)))
    for channel in channels:
        await channel.close()
    return [r for r in results if isinstance(r, int)], [r for r in results if isinstance(r, str)]


LEASES = {"INTERLOCK_ROUTER_BUDGET_LEASE_USD": "0.05", "INTERLOCK_ROUTER_BUDGET_LEASE_IDLE_S": "1"}
"""Routers hold budget leases of $0.05 beyond the call that needs one (about 16 calls), given
back after 1 s without calls (the tests wait for every hold to go)."""


AFTER_ANSWER = {"INTERLOCK_ROUTER_COMMIT_AFTER_ANSWER": "true"}
"""Routers answer before the budget service has the commit (sent in the background)."""


@pytest.fixture(params=["sqlite", "postgres", "postgres+leases", "sqlite+leases+after-answer"])
def ledger_env(request: pytest.FixtureRequest) -> dict[str, str]:
    if request.param == "sqlite":
        return {}
    if request.param == "sqlite+leases+after-answer":
        return {**LEASES, **AFTER_ANSWER}
    env = {"INTERLOCK_BUDGET_DATABASE_URL": request.getfixturevalue("postgres_database")}
    return {**env, **LEASES} if request.param.endswith("+leases") else env


def test_thousand_concurrent_calls_over_three_routers_never_overspend(
    tmp_path: Path, ledger_env: dict[str, str]
) -> None:
    mesh = start_metered_mesh(tmp_path, **ledger_env)
    replicas = RouterReplicas(mesh, 2)
    try:
        key = create_key(mesh, "capped", "alice")
        set_budget(mesh, "capped", "1.00")
        costs, errors = asyncio.run(fire([mesh.cfg.target("router"), *replicas.targets], key, 1000))
        assert set(errors) <= {"RESOURCE_EXHAUSTED"}, errors[:5]
        assert set(costs) == {CALL_NANOS}
        # Leases go back once idle; without leases nothing is held once the calls returned.
        spend = wait_for(
            lambda: (lambda s: s if s.reserved_nanos == 0 else None)(get_spend(mesh, "capped")),
            "every reservation and lease to be settled or given back",
        )
        assert spend.committed_nanos == sum(costs)
        assert NANOS_PER_USD - CALL_NANOS < spend.committed_nanos <= NANOS_PER_USD
        assert len(costs) == NANOS_PER_USD // CALL_NANOS and len(errors) == 1000 - len(costs)
        # Every committed cent reaches ClickHouse once.
        wait_for(
            lambda: True if clickhouse_total(mesh, "capped") == (len(costs), sum(costs)) else None,
            "ClickHouse to hold every committed call once",
        )
    finally:
        replicas.stop()
        mesh.stop()


def test_denial_names_budget_limit_spend_and_reset_time(tmp_path: Path) -> None:
    mesh = start_metered_mesh(tmp_path)
    try:
        key = create_key(mesh, "tiny", "bob")
        with grpc.insecure_channel(mesh.cfg.target("budget")) as channel:
            budget_pb2_grpc.BudgetServiceStub(channel).SetBudget(
                budget_pb2.SetBudgetRequest(
                    scope=budget_pb2.Scope(kind=budget_pb2.SCOPE_KIND_DEVELOPER, project="tiny", developer="bob"),
                    limit_nanos=CALL_NANOS + CALL_NANOS // 2,
                    window=budget_pb2.BUDGET_WINDOW_DAY,
                    time_zone="Europe/Berlin",
                ),
                timeout=10,
            )
        import interlock

        with interlock.Client(target=mesh.cfg.target("router"), api_key=key) as client:
            client.chat(model="metered", messages=[{"role": "user", "content": PROMPT}], max_tokens=WORDS + 1)
            with pytest.raises(interlock.BudgetExceededError) as info:
                client.chat(model="metered", messages=[{"role": "user", "content": PROMPT}], max_tokens=WORDS + 1)
        meta = info.value.metadata
        assert meta["scope"] == "developer:default/tiny/bob"
        assert Decimal(meta["limit_usd"]) * NANOS_PER_USD == CALL_NANOS + CALL_NANOS // 2
        assert Decimal(meta["spent_usd"]) * NANOS_PER_USD == CALL_NANOS
        assert meta["window"] == "day" and meta["reset_at"].endswith(("T22:00:00Z", "T23:00:00Z"))
        assert meta["reset_at"] in info.value.message
    finally:
        mesh.stop()


@pytest.mark.parametrize(
    ("leases", "after_answer"),
    [(False, False), (True, False), (True, True)],
    ids=["reservations", "leases", "leases+after-answer"],
)
def test_kill_9_of_the_budget_service_loses_no_committed_spend(
    tmp_path: Path, leases: bool, after_answer: bool
) -> None:
    ttl_s = 3
    lease_env = {**LEASES, "INTERLOCK_ROUTER_BUDGET_LEASE_TTL_S": str(ttl_s)} if leases else {}
    if after_answer:
        lease_env.update(AFTER_ANSWER)
    mesh = start_metered_mesh(tmp_path, INTERLOCK_BUDGET_RESERVATION_TTL_S=str(ttl_s), **lease_env)
    try:
        key = create_key(mesh, "crash", "carol")
        set_budget(mesh, "crash", "100")
        budget = mesh.processes["budget"]

        async def load_then_kill() -> tuple[list[int], list[str]]:
            load = asyncio.create_task(fire([mesh.cfg.target("router")], key, 600))
            await asyncio.sleep(1.0)
            os.kill(budget.pid, signal.SIGKILL)
            await asyncio.sleep(0.2)
            # Same environment and port: the router's channel reconnects to the new process.
            mesh.processes["budget"] = await asyncio.to_thread(restart_budget, mesh)
            return await load

        costs, errors = asyncio.run(load_then_kill())
        assert budget.wait(5) == -signal.SIGKILL
        assert costs and errors, "the kill must land mid-load"
        assert set(errors) <= {"UNAVAILABLE", "INTERNAL", "RESOURCE_EXHAUSTED"}, set(errors)
        wait_for(lambda: serving(mesh.cfg.target("budget")), "budget restart")
        ledger = SqliteLedger(mesh.cfg.data_dir.resolve() / "budget" / "ledger.db")
        try:
            if after_answer:
                # Commits sent after the answer were retried until the restarted service had them.
                wait_for(
                    lambda: True if ledger.ledger_total()[0] >= len(costs) else None,
                    "every answered call's commit in the ledger",
                    timeout_s=60,
                )
            rows, total = ledger.ledger_total()
            # Every call answered to its caller was committed (before the answer left the
            # router, or after it when commits follow the answer).
            assert rows >= len(costs) and total >= sum(costs)
            # No reservation outlives its TTL: the restarted service frees what the dead one held.
            time.sleep(ttl_s + 2)
            assert ledger.held_reservations(time.time())[1] == 0
            assert ledger.held_leases(time.time())[1] == 0
        finally:
            ledger.close()
        spend = get_spend(mesh, "crash")
        assert spend.committed_nanos == total
        wait_for(
            lambda: True if clickhouse_total(mesh, "crash") == (rows, total) else None,
            "ClickHouse usage to equal the ledger",
        )
    finally:
        mesh.stop()


def test_streams_ending_early_commit_only_what_was_produced(tmp_path: Path) -> None:
    mesh = start_metered_mesh(tmp_path)
    try:
        key = create_key(mesh, "streams", "dora")
        long_prompt = " ".join(["w"] * 50)
        channel = grpc.insecure_channel(mesh.cfg.target("router"))
        stub = router_pb2_grpc.RouterServiceStub(channel)
        # The caller walks away after three deltas of a slow 51-token answer.
        params = chat_params(long_prompt, model="metered-slow", max_tokens=51, request_id=f"s-{uuid.uuid4().hex}")
        call = stub.ChatStream(router_pb2.ChatStreamRequest(params=params), metadata=auth(key), timeout=60)
        received = 0
        for item in call:
            if item.HasField("delta"):
                received += 1
            if received == 3:
                call.cancel()
                break

        def settled() -> int | None:
            spend = get_spend(mesh, "streams", "dora")
            return int(spend.committed_nanos) if spend.reserved_nanos == 0 and spend.committed_nanos else None

        committed = wait_for(settled, "the abandoned stream to settle")
        assert 3 * PRICE_PER_OUTPUT_TOKEN_NANOS <= committed < 51 * PRICE_PER_OUTPUT_TOKEN_NANOS // 2
        # A provider that cuts the stream after 3 tokens bills 3 tokens; the caller gets an error.
        params = chat_params(long_prompt, model="metered-cut", max_tokens=51)
        with pytest.raises(grpc.RpcError):
            for _ in stub.ChatStream(router_pb2.ChatStreamRequest(params=params), metadata=auth(key), timeout=60):
                pass
        after = wait_for(
            lambda: (lambda c: c if c > committed else None)(int(get_spend(mesh, "streams", "dora").committed_nanos)),
            "the cut stream to settle",
        )
        assert 3 * PRICE_PER_OUTPUT_TOKEN_NANOS <= after - committed <= 4 * PRICE_PER_OUTPUT_TOKEN_NANOS
        channel.close()
    finally:
        mesh.stop()
