"""The Ollama fake speaks Ollama's native API well enough for the official `ollama` package."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import ollama
import pytest
import pytest_asyncio

from interlock.services.fakeprovider import serve_fake_provider

pytestmark = pytest.mark.asyncio(loop_scope="module")

MODEL = "llama3.2"
PROMPT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def host() -> AsyncIterator[str]:
    async with serve_fake_provider() as url:
        yield url.removesuffix("/v1") + "/ollama"


@pytest_asyncio.fixture(loop_scope="module")
async def client(host: str) -> ollama.AsyncClient:
    return ollama.AsyncClient(host=host)


async def test_chat(client: ollama.AsyncClient) -> None:
    response = await client.chat(model=MODEL, messages=PROMPT, stream=False, options={"num_predict": 64})
    assert response.message.role == "assistant"
    assert response.message.content == "Echo: What is the capital of France?"
    assert response.done is True and response.done_reason == "stop"
    assert (response.prompt_eval_count, response.eval_count) == (8, 7)


async def test_num_predict_cuts_the_answer(client: ollama.AsyncClient) -> None:
    response = await client.chat(model=MODEL, messages=PROMPT, options={"num_predict": 2})
    assert (response.message.content, response.done_reason, response.eval_count) == ("Echo: What", "length", 2)


async def test_stream(client: ollama.AsyncClient) -> None:
    parts = [part async for part in await client.chat(model=MODEL, messages=PROMPT, stream=True)]
    assert "".join(p.message.content or "" for p in parts) == "Echo: What is the capital of France?"
    assert [p.done for p in parts].count(True) == 1 and parts[-1].done
    assert (parts[-1].prompt_eval_count, parts[-1].eval_count, parts[-1].done_reason) == (8, 7, "stop")


async def test_tool_call_round_trip(client: ollama.AsyncClient) -> None:
    messages = [{"role": "user", "content": "Paris"}]
    first = await client.chat(model=f"{MODEL}@tool_call=get_weather", messages=messages, tools=[WEATHER])
    assert first.message.tool_calls is not None
    (call,) = first.message.tool_calls
    assert (call.function.name, dict(call.function.arguments)) == ("get_weather", {"city": "Paris"})
    follow_up: list[Mapping[str, Any] | ollama.Message] = [
        *messages,
        first.message,
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
    ]
    second = await client.chat(model=f"{MODEL}@tool_call=get_weather", messages=follow_up, tools=[WEATHER])
    assert second.message.content == "Echo: sunny" and not second.message.tool_calls


async def test_tool_call_streamed(client: ollama.AsyncClient) -> None:
    parts = [
        p
        async for p in await client.chat(
            model=f"{MODEL}@tool_call=get_weather",
            messages=[{"role": "user", "content": "Oslo"}],
            tools=[WEATHER],
            stream=True,
        )
    ]
    calls = [c for p in parts for c in p.message.tool_calls or ()]
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [("get_weather", {"city": "Oslo"})]


async def test_json_format(client: ollama.AsyncClient) -> None:
    response = await client.chat(model=MODEL, messages=[{"role": "user", "content": "hi"}], format="json")
    assert response.message.content == '{"echo": "Echo: hi"}'


@pytest.mark.parametrize("status", [400, 404, 429, 500, 503])
async def test_errors(client: ollama.AsyncClient, status: int) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        await client.chat(model=f"{MODEL}@status={status}", messages=PROMPT)
    assert caught.value.status_code == status
    if status == 404:
        assert caught.value.error == f'model "{MODEL}" not found, try pulling it first'


async def test_error_midway_through_a_stream(client: ollama.AsyncClient) -> None:
    received = []
    with pytest.raises(ollama.ResponseError) as caught:
        async for part in await client.chat(model=f"{MODEL}@error_after=2;status=500", messages=PROMPT, stream=True):
            received.append(part)
    assert len(received) == 2
    assert "terminated" in caught.value.error
