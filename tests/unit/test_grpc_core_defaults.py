"""The services' default `GRPC_EXPERIMENTS`: every name in it is one the installed gRPC core
knows (an upgrade that drops one fails here, not silently in production), every way of
starting a service passes it on, and an operator's own value wins."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from interlock._server import GRPC_EXPERIMENTS
from interlock.mesh import SERVICES, MeshConfig, service_env

ROOT = Path(__file__).resolve().parents[2]

START_A_SERVER = """
import asyncio, grpc
async def main():
    server = grpc.aio.server()
    server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await server.stop(0)
asyncio.run(main())
"""


def grpc_stderr(experiments: str) -> str:
    """What gRPC core logs while a process with `GRPC_EXPERIMENTS=experiments` starts a server."""
    env = {**os.environ, "GRPC_EXPERIMENTS": experiments, "GRPC_VERBOSITY": "ERROR"}
    done = subprocess.run(
        [sys.executable, "-c", START_A_SERVER], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    return done.stderr


def test_grpc_core_knows_every_experiment_the_default_turns_off() -> None:
    names = [item.removeprefix("-") for item in GRPC_EXPERIMENTS.split(",")]
    assert names and all(re.fullmatch(r"[a-z_]+", n) for n in names), names
    assert "Unknown experiment" not in grpc_stderr(GRPC_EXPERIMENTS)
    # The check can fail: a name gRPC does not know is reported.
    assert "Unknown experiment: no_such_experiment" in grpc_stderr(GRPC_EXPERIMENTS + ",-no_such_experiment")


@pytest.mark.parametrize("service", SERVICES)
def test_every_mesh_service_gets_the_default(service: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRPC_EXPERIMENTS", raising=False)
    assert service_env(MeshConfig(tmp_path), service)["GRPC_EXPERIMENTS"] == GRPC_EXPERIMENTS


def test_the_operators_value_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPC_EXPERIMENTS", "-event_engine_listener")
    assert service_env(MeshConfig(tmp_path), "router")["GRPC_EXPERIMENTS"] == "-event_engine_listener"
    settings = {"GRPC_EXPERIMENTS": "event_engine_client"}
    assert service_env(MeshConfig(tmp_path, extra_env=settings), "router")["GRPC_EXPERIMENTS"] == "event_engine_client"


def test_the_images_carry_the_default() -> None:
    text = (ROOT / "Dockerfile").read_text()
    runtime = text[text.index("AS runtime") : text.index("AS router")]
    assert f"GRPC_EXPERIMENTS={GRPC_EXPERIMENTS}" in runtime.split()
