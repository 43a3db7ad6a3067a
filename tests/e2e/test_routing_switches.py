"""Routing that survives providers and changes: fallbacks through the mesh, and 50 config
switches plus a router restart under steady load without losing a request.

Runs on real Kafka and ClickHouse so every usage row can be read back with its config
version. The routing file is rewritten while requests flow; one version in the middle is
invalid and must be refused while the live one keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import clickhouse_connect
import grpc
import pytest
import yaml

from interlock.devservers import free_port
from interlock.mesh import Mesh, health_status, service_env
from interlock.router.v1 import router_pb2, router_pb2_grpc
from interlock.testing import create_key, start_mesh, wait_for

pytestmark = pytest.mark.e2e


def routing_doc(fake: str, upstream: str, broken_first: str = "") -> dict[str, Any]:
    """Model `chat`: a primary deployment, then a fallback on another provider account."""
    return {
        "providers": [
            {"name": "primary", "kind": "openai", "base_url": f"{fake}/v1"},
            {"name": "backup", "kind": "anthropic", "base_url": f"{fake}/anthropic"},
        ],
        "models": [
            {
                "name": "chat",
                "retry": {"max_attempts": 1, "backoff_base_s": 0.01, "backoff_max_s": 0.05},
                "deployments": [
                    {
                        "provider": "primary",
                        "upstream_model": upstream + broken_first,
                        "price": {"provider": "openai", "model": upstream},
                        "timeout_s": 1.0,  # the fake answers in milliseconds; a 3 s delay is a timeout
                    },
                    {"provider": "backup", "upstream_model": "claude-3-5-haiku-latest"},
                ],
            }
        ],
    }


@pytest.fixture(scope="module")
def ch(clickhouse_url: str) -> Iterator[Any]:
    host, port = clickhouse_url.removeprefix("http://").rsplit(":", 1)
    client = clickhouse_connect.get_client(host=host, port=int(port))
    try:
        yield client
    finally:
        client.close()


def _start(tmp: Path, kafka: str, clickhouse: str, doc: dict[str, Any]) -> tuple[Mesh, Path]:
    fake_port = free_port()
    routing = tmp / "routing.yaml"
    routing.write_text(yaml.safe_dump(routing_doc(f"http://127.0.0.1:{fake_port}", **doc)))
    os.environ["INTERLOCK_ROUTER_RELOAD_INTERVAL_S"] = "0.1"
    try:
        mesh = start_mesh(
            tmp / "mesh", kafka=kafka, clickhouse=clickhouse, routing_path=str(routing), fake_provider_port=fake_port
        )
    finally:
        del os.environ["INTERLOCK_ROUTER_RELOAD_INTERVAL_S"]
    return mesh, routing


@pytest.mark.parametrize("fault", ["status=503", "status=429;retry_after=30", "delay_ms=3000", "truncate_after=0"])
def test_caller_sees_success_while_a_fallback_is_healthy(
    tmp_path: Path, kafka_bootstrap: str, clickhouse_url: str, ch: Any, fault: str
) -> None:
    mesh, _ = _start(
        tmp_path, kafka_bootstrap, clickhouse_url, {"upstream": "gpt-4o-mini", "broken_first": "@" + fault}
    )
    try:
        key = create_key(mesh, "fallback", "fay")
        with grpc.insecure_channel(mesh.cfg.target("router")) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            params = router_pb2.ChatParams(
                model="chat",
                messages=[router_pb2.Message(role="user", content="hello with a fallback")],
                max_tokens=16,
                request_id=f"fb-{uuid.uuid4().hex}",
            )
            metadata = (("authorization", f"Bearer {key}"),)
            if fault.startswith("truncate"):
                items = list(
                    stub.ChatStream(router_pb2.ChatStreamRequest(params=params), metadata=metadata, timeout=20)
                )
                done = items[-1].done
            else:
                done = stub.Chat(router_pb2.ChatRequest(params=params), metadata=metadata, timeout=20)
        assert done.provider == "backup", done
        assert done.text
        rows = wait_for(
            lambda: ch.query(
                "SELECT provider, cost_nanos FROM interlock.usage_events FINAL WHERE request_id = {i:String}",
                parameters={"i": params.request_id},
            ).result_rows
            or None,
            "the fallback's usage row",
        )
        assert rows == [("backup", done.cost_nanos)]
    finally:
        mesh.stop()


def test_stream_cut_after_tokens_is_a_typed_error_not_a_silent_success(
    tmp_path: Path, kafka_bootstrap: str, clickhouse_url: str
) -> None:
    mesh, _ = _start(
        tmp_path, kafka_bootstrap, clickhouse_url, {"upstream": "gpt-4o-mini", "broken_first": "@truncate_after=3"}
    )
    try:
        key = create_key(mesh, "fallback", "fay")
        params = router_pb2.ChatParams(
            model="chat", messages=[router_pb2.Message(role="user", content="a b c d e f g")], max_tokens=16
        )
        with grpc.insecure_channel(mesh.cfg.target("router")) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            deltas = []
            with pytest.raises(grpc.RpcError) as info:
                for item in stub.ChatStream(
                    router_pb2.ChatStreamRequest(params=params),
                    metadata=(("authorization", f"Bearer {key}"),),
                    timeout=20,
                ):
                    deltas.append(item.delta)
        assert deltas, "tokens reached the caller before the cut"
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "interrupted" in (info.value.details() or "")
    finally:
        mesh.stop()


def test_fifty_switches_and_a_router_restart_lose_no_request(
    tmp_path: Path, kafka_bootstrap: str, clickhouse_url: str, ch: Any
) -> None:
    mesh, routing = _start(tmp_path, kafka_bootstrap, clickhouse_url, {"upstream": "gpt-4o-mini"})
    fake = f"http://127.0.0.1:{mesh.cfg.fake_provider_port}"
    second_port = free_port()
    env = service_env(mesh.cfg, "router")
    env.update(
        INTERLOCK_ROUTER_PORT=str(second_port),
        INTERLOCK_ROUTER_HTTP_PORT=str(free_port()),
        INTERLOCK_ROUTER_RELOAD_INTERVAL_S="0.1",
    )
    log = open(tmp_path / "router2.log", "ab")  # noqa: SIM115 - handed to the child
    second = subprocess.Popen([sys.executable, "-m", "interlock.services.router"], env=env, stdout=log, stderr=log)
    targets = [mesh.cfg.target("router"), f"127.0.0.1:{second_port}"]
    try:
        wait_for(lambda: health_status(targets[1]) == "SERVING" or None, "the second router replica")
        key = create_key(mesh, "switches", "sam")
        run_id = f"switch-{uuid.uuid4().hex[:10]}"
        versions = asyncio.run(_load_while_switching(mesh, routing, fake, key, run_id, targets, tmp_path))
        accepted, served = versions
        assert served, "no request was served"
        # Every request that a caller saw succeed is in ClickHouse, once, with the version that served it.
        rows = wait_for(
            lambda: (
                r
                if len(
                    r := ch.query(
                        "SELECT request_id, config_version FROM interlock.usage_events FINAL WHERE run_id = {r:String}",
                        parameters={"r": run_id},
                    ).result_rows
                )
                >= len(served)
                else None
            ),
            "every served request's usage row",
            timeout_s=120,
        )
        by_id = dict(rows)
        assert len(by_id) == len(served)
        for request_id, version in served.items():
            assert by_id[request_id] == version
        assert set(by_id.values()) <= accepted
        # The three valid documents alternate, so the load was served by all three versions.
        assert len(set(by_id.values())) == 3, "the load did not see the switches"
    finally:
        if second.poll() is None:
            second.send_signal(signal.SIGTERM)
            second.wait(30)
        log.close()
        mesh.stop()


def _restart_router(mesh: Mesh, tmp: Path) -> subprocess.Popen[bytes]:
    with open(tmp / "router-restarted.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "interlock.services.router"],
            env={**service_env(mesh.cfg, "router"), "INTERLOCK_ROUTER_RELOAD_INTERVAL_S": "0.1"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def _load_while_switching(
    mesh: Mesh, routing: Path, fake: str, key: str, run_id: str, targets: list[str], tmp: Path
) -> tuple[set[str], dict[str, str]]:
    metadata = (("authorization", f"Bearer {key}"),)
    channels = [grpc.aio.insecure_channel(t) for t in targets]
    stubs = [router_pb2_grpc.RouterServiceStub(c) for c in channels]
    served: dict[str, str] = {}
    failures: list[str] = []
    stop = asyncio.Event()

    async def worker(n: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            request_id = f"{run_id}-{n}-{i}"
            params = router_pb2.ChatParams(
                model="chat",
                messages=[router_pb2.Message(role="user", content=f"steady load {n} {i}")],
                max_tokens=8,
                request_id=request_id,
                run_id=run_id,
            )
            # A replica that is draining or down refuses before doing anything: send the same
            # request (same id) to the other one, as a load balancer would (Envoy's gRPC
            # retry_on: unavailable, cancelled). gRPC may cancel a call that reached a replica
            # around its stop, before or after a handler took it; the same request id makes a
            # retry safe either way (one usage row per id, asserted below).
            for attempt in range(6):
                stub = stubs[(n + i + attempt) % len(stubs)]
                try:
                    r = await stub.Chat(router_pb2.ChatRequest(params=params), metadata=metadata, timeout=20)
                except grpc.aio.AioRpcError as exc:
                    retryable = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
                    if exc.code() in retryable and attempt < 5:
                        await asyncio.sleep(0.05)
                        continue
                    failures.append(f"{request_id}: {exc.code()} {exc.details()}")
                    break
                served[request_id] = r.config_version
                break

    workers = [asyncio.create_task(worker(n)) for n in range(6)]
    accepted: set[str] = set()
    key_env = {"INTERLOCK_API_KEY": key}

    def live_version(target: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "interlock.cli", "routes", "--json", f"--router-target={target}"],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, **key_env},
        )
        assert out.returncode == 0, out.stderr
        return str(json.loads(out.stdout)["live_version"])

    accepted.add(live_version(targets[0]))
    upstreams = ["gpt-4.1-mini", "gpt-4o-mini"]
    for n in range(50):
        if n == 25:
            text = "models: [{name: chat, provider: nowhere}]\n"  # invalid: refused, the live one stays
        else:
            text = yaml.safe_dump(routing_doc(fake, upstreams[n % 2] if n % 3 else "gpt-4.1-nano"))
        # Replace the file whole, as a ConfigMap update does (a symlink swap), never half-written.
        staged = routing.with_suffix(".staged")
        staged.write_text(text)
        os.replace(staged, routing)
        await asyncio.sleep(0.35)
        if n != 25:
            version = await asyncio.to_thread(live_version, targets[0])
            accepted.add(version)
    # Restart the first replica under load: drain, exit, come back.
    router = mesh.processes["router"]
    router.send_signal(signal.SIGTERM)
    await asyncio.to_thread(router.wait, 60)
    assert router.returncode == 0
    mesh.processes["router"] = await asyncio.to_thread(_restart_router, mesh, tmp)
    await asyncio.to_thread(wait_for, lambda: health_status(targets[0]) == "SERVING" or None, "the restarted router")
    await asyncio.sleep(1.0)
    stop.set()
    await asyncio.gather(*workers)
    for c in channels:
        await c.close()
    assert not failures, failures[:5]
    routes = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "interlock.cli", "routes", "--json", f"--router-target={targets[1]}"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **key_env},
    )
    switches = json.loads(routes.stdout)["switches"]
    refused = [s for s in switches if not s["accepted"]]
    assert len(refused) == 1 and "nowhere" in refused[0]["error"]
    # Each of the 49 valid rewrites changed the version, and each change was a switch.
    assert sum(1 for s in switches if s["accepted"]) >= 45
    return accepted, served
