"""Every provider behind the facade, driven by the official SDKs, priced by genai-prices.

The mesh runs with its default routing: with no provider keys set, each provider's model
names are served by the built-in fake of that provider's own wire format, so the router's
adapters (Anthropic Messages, Cohere v2, Gemini generateContent, Mistral, Ollama, Azure
OpenAI, OpenAI) all carry real traffic.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import anthropic
import grpc
import openai
import pytest
from genai_prices import Usage, calc_price

from interlock.mesh import Mesh
from interlock.pricing import usd_to_nanos
from interlock.testing import create_key, start_mesh, wait_for
from interlock.traceingest.v1 import traceingest_pb2, traceingest_pb2_grpc

pytestmark = pytest.mark.e2e

MODELS = [
    "gpt-4o-mini",
    "claude-3-5-haiku-latest",
    "command-r-plus",
    "gemini-2.0-flash",
    "mistral-small-latest",
    "azure-gpt-4o-mini",
    "llama3.2",
]
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    m = start_mesh(tmp_path_factory.mktemp("providers"))
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture(scope="module")
def key(mesh: Mesh) -> str:
    return create_key(mesh, "providers", "rosa")


def client(mesh: Mesh, key: str, run_id: str = "") -> openai.OpenAI:
    headers = {"x-interlock-run-id": run_id} if run_id else {}
    return openai.OpenAI(
        base_url=f"http://{mesh.cfg.host}:{mesh.cfg.router_http_port}/v1",
        api_key=key,
        max_retries=0,
        default_headers=headers,
    )


@pytest.mark.parametrize("model", MODELS)
def test_openai_sdk_chat_stream_and_tool_call(mesh: Mesh, key: str, model: str) -> None:
    sdk = client(mesh, key)
    done = sdk.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello there"}], max_tokens=16
    )
    assert done.choices[0].message.content and done.usage and done.usage.completion_tokens > 0
    pieces = [
        c.choices[0].delta.content
        for c in sdk.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "stream a few words"}], max_tokens=16, stream=True
        )
        if c.choices and c.choices[0].delta.content
    ]
    assert "".join(pieces)
    called = sdk.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "weather in Oslo?"}],
        max_tokens=32,
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    calls = called.choices[0].message.tool_calls
    assert called.choices[0].finish_reason == "tool_calls"
    assert calls and calls[0].function.name == "get_weather"  # type: ignore[union-attr]


@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-3-5-haiku-latest", "gemini-2.0-flash"])
def test_anthropic_sdk_messages_stream_and_tool_use(mesh: Mesh, key: str, model: str) -> None:
    sdk = anthropic.Anthropic(
        base_url=f"http://{mesh.cfg.host}:{mesh.cfg.router_http_port}", api_key=key, max_retries=0
    )
    message = sdk.messages.create(model=model, max_tokens=16, messages=[{"role": "user", "content": "hi there"}])
    assert message.content and message.usage.output_tokens > 0
    with sdk.messages.stream(model=model, max_tokens=16, messages=[{"role": "user", "content": "stream it"}]) as s:
        assert "".join(s.text_stream)
    tool = sdk.messages.create(
        model=model,
        max_tokens=32,
        messages=[{"role": "user", "content": "weather in Oslo?"}],
        tools=[{"name": "get_weather", "description": "Weather", "input_schema": WEATHER["function"]["parameters"]}],
        tool_choice={"type": "tool", "name": "get_weather"},
    )
    assert tool.stop_reason == "tool_use"
    assert any(b.type == "tool_use" and b.name == "get_weather" for b in tool.content)


def _row(mesh: Mesh, run_id: str) -> traceingest_pb2.CostRow | None:
    with grpc.insecure_channel(mesh.cfg.target("traceingest")) as channel:
        rows = (
            traceingest_pb2_grpc.TraceIngestServiceStub(channel)
            .QueryCosts(traceingest_pb2.QueryCostsRequest(group_by=["run_id", "provider", "model"]), timeout=10)
            .rows
        )
    return next((r for r in rows if r.keys[0] == run_id), None)


@pytest.mark.parametrize(
    ("model", "provider_id"), [("gpt-4o-mini", "openai"), ("claude-3-5-haiku-latest", "anthropic")]
)
def test_usage_row_cost_equals_genai_prices(mesh: Mesh, key: str, model: str, provider_id: str) -> None:
    run_id = f"price-{provider_id}"
    done = client(mesh, key, run_id).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "price this call please"}], max_tokens=24
    )
    assert done.usage is not None
    row = wait_for(lambda: _row(mesh, run_id), f"the {model} usage row")
    assert (row.keys[1], row.keys[2]) == (provider_id, model)
    assert (row.input_tokens, row.output_tokens) == (done.usage.prompt_tokens, done.usage.completion_tokens)
    expected = calc_price(
        Usage(input_tokens=row.input_tokens, output_tokens=row.output_tokens), model_ref=model, provider_id=provider_id
    ).total_price
    assert row.cost_nanos == usd_to_nanos(Decimal(expected))
