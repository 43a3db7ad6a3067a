"""SIGTERM lets in-flight calls finish: a slow call started before the signal succeeds."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import grpc
import pytest
import yaml

from interlock.router.v1 import router_pb2
from interlock.testing import auth, chat_params, create_key, router_stub, start_mesh, wait_for

pytestmark = pytest.mark.e2e


def test_router_finishes_in_flight_calls_on_sigterm(tmp_path: Path) -> None:
    from interlock.devservers import free_port

    fake_port = free_port()
    routing = tmp_path / "routing.yaml"
    routing.write_text(
        yaml.safe_dump(
            {
                "providers": [{"name": "openai", "kind": "openai", "base_url": f"http://127.0.0.1:{fake_port}/v1"}],
                "models": [
                    # The fake provider reads faults from the model name: this one answers after 1.5 s.
                    {
                        "name": "slow-mini",
                        "provider": "openai",
                        "upstream_model": "gpt-4o-mini@delay_ms=1500",
                        "price": {"provider": "openai", "model": "gpt-4o-mini"},
                    }
                ],
            }
        )
    )
    mesh = start_mesh(tmp_path / "mesh", routing_path=str(routing), fake_provider_port=fake_port)
    try:
        key = create_key(mesh)
        channel, stub = router_stub(mesh)
        outcome: dict[str, object] = {}

        def slow_call() -> None:
            try:
                outcome["response"] = stub.Chat(
                    router_pb2.ChatRequest(params=chat_params(model="slow-mini")), metadata=auth(key), timeout=30
                )
            except grpc.RpcError as exc:
                outcome["error"] = exc

        caller = threading.Thread(target=slow_call)
        caller.start()
        time.sleep(0.5)  # the call is now waiting on the provider
        router = mesh.processes["router"]
        router.send_signal(signal.SIGTERM)
        caller.join(timeout=30)
        assert "error" not in outcome, outcome.get("error")
        response = outcome["response"]
        assert isinstance(response, router_pb2.ChatResponse) and response.text
        assert wait_for(lambda: router.poll(), "the router to exit", timeout_s=30) == 0
        channel.close()
        # A new call after the stop is refused, not hung.
        channel, stub = router_stub(mesh)
        with pytest.raises(grpc.RpcError) as info:
            stub.Chat(router_pb2.ChatRequest(params=chat_params()), metadata=auth(key), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        channel.close()
    finally:
        mesh.stop()
