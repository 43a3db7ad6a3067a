"""The Mistral fake speaks Mistral's chat API well enough for the official `mistralai` SDK."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from mistralai.client import Mistral, errors, models

from interlock.services.fakeprovider import serve_fake_provider

pytestmark = pytest.mark.asyncio(loop_scope="module")

MODEL = "mistral-small-latest"
PROMPT: list[models.Messages] = [
    models.SystemMessage(content="Be brief."),
    models.UserMessage(content="What is the capital of France?"),
]
WEATHER = models.Tool(
    function=models.Function(
        name="get_weather",
        description="Current weather of a city.",
        parameters={"type": "object", "properties": {"city": {"type": "string"}}},
    )
)


def answer(response: models.ChatCompletionResponse) -> models.AssistantMessage:
    message = response.choices[0].message
    assert message is not None
    return message


def tool_calls(calls: object) -> list[models.ToolCall]:
    assert isinstance(calls, list) and all(isinstance(c, models.ToolCall) for c in calls)
    return calls


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def server_url() -> AsyncIterator[str]:
    async with serve_fake_provider() as url:
        yield url.removesuffix("/v1") + "/mistral"


@pytest_asyncio.fixture(loop_scope="module")
async def client(server_url: str) -> AsyncIterator[Mistral]:
    sdk = Mistral(api_key="x", server_url=server_url)
    yield sdk
    await sdk.__aexit__(None, None, None)  # type: ignore[no-untyped-call]


async def test_complete(client: Mistral) -> None:
    response = await client.chat.complete_async(
        model=MODEL, messages=PROMPT, max_tokens=64, random_seed=7, safe_prompt=True
    )
    assert answer(response).content == "Echo: What is the capital of France?"
    assert response.choices[0].finish_reason == "stop"
    assert (response.usage.prompt_tokens, response.usage.completion_tokens, response.usage.total_tokens) == (8, 7, 15)
    assert response.model == MODEL


async def test_stream(client: Mistral) -> None:
    events = [e async for e in await client.chat.stream_async(model=MODEL, messages=PROMPT)]
    text = "".join(str(e.data.choices[0].delta.content or "") for e in events)
    assert text == "Echo: What is the capital of France?"
    last = events[-1].data
    assert last.choices[0].finish_reason == "stop"
    assert last.usage is not None and last.usage.completion_tokens == 7


async def test_tool_call_round_trip(client: Mistral) -> None:
    messages: list[models.Messages] = [models.UserMessage(content="Paris")]
    first = await client.chat.complete_async(model=MODEL, messages=messages, tools=[WEATHER], tool_choice="any")
    assert first.choices[0].finish_reason == "tool_calls"
    (call,) = tool_calls(answer(first).tool_calls)
    assert call.function.name == "get_weather"
    assert json.loads(str(call.function.arguments)) == {"city": "Paris"}
    assert call.id is not None and len(call.id) == 9 and call.id.isalnum()
    messages += [
        models.AssistantMessage(content="", tool_calls=[call]),
        models.ToolMessage(name="get_weather", tool_call_id=call.id, content="sunny"),
    ]
    second = await client.chat.complete_async(model=MODEL, messages=messages, tools=[WEATHER])
    assert answer(second).content == "Echo: sunny"


async def test_tool_call_streamed(client: Mistral) -> None:
    events = [
        e
        async for e in await client.chat.stream_async(
            model=f"{MODEL}@tool_call=get_weather",
            messages=[models.UserMessage(content="Oslo")],
            tools=[WEATHER],
        )
    ]
    calls = [c for e in events for c in tool_calls(e.data.choices[0].delta.tool_calls or [])]
    assert [(c.function.name, json.loads(str(c.function.arguments))) for c in calls] == [
        ("get_weather", {"city": "Oslo"})
    ]
    assert events[-1].data.choices[0].finish_reason == "tool_calls"


async def test_json_mode(client: Mistral) -> None:
    response = await client.chat.complete_async(
        model=MODEL,
        messages=[models.UserMessage(content="hi")],
        response_format=models.ResponseFormat(type="json_object"),
    )
    assert answer(response).content == '{"echo": "Echo: hi"}'


@pytest.mark.parametrize("status", [400, 401, 404, 429, 500, 503])
async def test_errors(client: Mistral, status: int) -> None:
    with pytest.raises(errors.SDKError) as caught:
        await client.chat.complete_async(model=f"{MODEL}@status={status}", messages=PROMPT)
    assert caught.value.status_code == status
    if status == 429:
        assert caught.value.headers["retry-after"] == "1"
        assert caught.value.headers["x-ratelimitbysize-remaining-minute"] == "0"


async def test_validation_error(client: Mistral) -> None:
    with pytest.raises(errors.HTTPValidationError) as caught:
        await client.chat.complete_async(model=f"{MODEL}@status=422", messages=PROMPT)
    assert caught.value.status_code == 422


async def test_missing_key_is_unauthorized(server_url: str) -> None:
    # The SDK cannot send an empty Bearer, so ask over plain HTTP.
    async with httpx.AsyncClient() as http:
        answer = await http.post(
            f"{server_url}/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
        )
    assert (answer.status_code, answer.json()["message"]) == (401, "Unauthorized")
