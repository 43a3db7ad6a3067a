"""An overloaded router refuses new calls at once (gRPC UNAVAILABLE, HTTP 503, with a retry
hint) instead of queueing them, and admits again as soon as calls in flight end."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import openai
import pytest
import yaml

from interlock.errors import UnavailableError, from_rpc_error
from interlock.router.v1 import router_pb2
from interlock.testing import auth, chat_params, create_key, router_stub, start_mesh, wait_for

pytestmark = pytest.mark.e2e


def _overloaded(exc: grpc.RpcError) -> UnavailableError | None:
    err = from_rpc_error(exc)
    if isinstance(err, UnavailableError) and err.metadata.get("reason") == "overloaded":
        return err
    return None


def test_router_at_its_cap_refuses_new_calls_then_admits_again(tmp_path: Path) -> None:
    from interlock.devservers import free_port

    fake_port = free_port()
    routing = tmp_path / "routing.yaml"
    price = {"provider": "openai", "model": "gpt-4o-mini"}
    base_url = f"http://127.0.0.1:{fake_port}/v1"
    routing.write_text(
        yaml.safe_dump(
            {
                "providers": [{"name": "openai", "kind": "openai", "base_url": base_url}],
                "models": [
                    # The fake provider reads faults from the model name: this one answers after 8 s.
                    {
                        "name": "slow-mini",
                        "provider": "openai",
                        "upstream_model": "gpt-4o-mini@delay_ms=8000",
                        "price": price,
                    },
                    {"name": "fast-mini", "provider": "openai", "upstream_model": "gpt-4o-mini", "price": price},
                ],
            }
        )
    )
    mesh = start_mesh(
        tmp_path / "mesh",
        routing_path=str(routing),
        fake_provider_port=fake_port,
        extra_env={"INTERLOCK_ROUTER_MAX_IN_FLIGHT": "2"},
    )
    try:
        key = create_key(mesh)
        channel, stub = router_stub(mesh)
        outcomes: dict[str, str] = {}

        def slow_call(kind: str) -> None:
            # As a client of an overloaded router would: retry a refusal after a pause.
            for _ in range(400):
                try:
                    if kind == "unary":
                        response = stub.Chat(
                            router_pb2.ChatRequest(params=chat_params(model="slow-mini")),
                            metadata=auth(key),
                            timeout=60,
                        )
                        outcomes[kind] = response.text
                    else:
                        events = list(
                            stub.ChatStream(
                                router_pb2.ChatStreamRequest(params=chat_params(model="slow-mini")),
                                metadata=auth(key),
                                timeout=60,
                            )
                        )
                        outcomes[kind] = events[-1].done.text
                    return
                except grpc.RpcError as exc:
                    if _overloaded(exc) is None:
                        outcomes[kind] = f"error: {exc.code()} {exc.details()}"
                        return
                    time.sleep(0.05)

        callers = [threading.Thread(target=slow_call, args=(kind,)) for kind in ("unary", "stream")]
        for c in callers:
            c.start()

        def refused() -> UnavailableError | None:
            try:
                stub.Chat(router_pb2.ChatRequest(params=chat_params(model="fast-mini")), metadata=auth(key), timeout=10)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
                return _overloaded(exc)
            return None  # the slow calls are not both in flight yet

        # Both slow calls in flight: the next call is refused at once, with a retry hint.
        err = wait_for(refused, "a call refused at the in-flight cap", timeout_s=30, every_s=0.1)
        assert err.metadata["signal"] == "in_flight"
        assert err.retry_after_s == 1.0
        assert "cap of 2 calls in flight" in err.message

        # The OpenAI-compatible facade shares the cap: 503 with Retry-After.
        client = openai.OpenAI(
            base_url=f"http://{mesh.cfg.host}:{mesh.cfg.router_http_port}/v1", api_key=key, max_retries=0
        )
        with pytest.raises(openai.APIStatusError) as http_refusal:
            client.chat.completions.create(
                model="fast-mini", messages=[{"role": "user", "content": "hello"}], max_tokens=8
            )
        assert http_refusal.value.status_code == 503
        assert http_refusal.value.response.headers["retry-after"] == "1"
        assert "calls in flight" in http_refusal.value.message

        for c in callers:
            c.join(timeout=90)
        # The calls that held the places were served, the stream included.
        assert set(outcomes) == {"unary", "stream"}
        assert all(text and not text.startswith("error:") for text in outcomes.values()), outcomes

        # Their places are free again: calls on both interfaces are admitted.
        response = stub.Chat(
            router_pb2.ChatRequest(params=chat_params(model="fast-mini")), metadata=auth(key), timeout=10
        )
        assert response.text
        completion = client.chat.completions.create(
            model="fast-mini", messages=[{"role": "user", "content": "hello"}], max_tokens=8
        )
        assert completion.choices[0].message.content
        channel.close()
    finally:
        mesh.stop()
