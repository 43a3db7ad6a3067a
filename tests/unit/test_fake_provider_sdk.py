"""The fake provider speaks OpenAI's wire format well enough for the official `openai` SDK."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import openai
import pytest
import pytest_asyncio
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from interlock.services.fakeprovider import serve_fake_provider

# One server for the module: starting and stopping uvicorn costs ~0.2 s.
pytestmark = pytest.mark.asyncio(loop_scope="module")

PROMPT: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def base_url() -> AsyncIterator[str]:
    async with serve_fake_provider() as url:
        yield url


@pytest_asyncio.fixture(loop_scope="module")
async def client(base_url: str) -> AsyncIterator[openai.AsyncOpenAI]:
    # max_retries=0: the SDK would otherwise retry the injected 429/500s.
    sdk = openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
    yield sdk
    await sdk.close()


async def test_unary(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="fake-echo",
        messages=PROMPT,
        max_tokens=64,
        extra_headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    )
    assert completion.object == "chat.completion"
    assert completion.model == "fake-echo"
    assert completion.id.startswith("chatcmpl-")
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "Echo: What is the capital of France?"
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    # One token per whitespace-separated word: 2 + 6 in, "Echo:" + 6 out.
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (
        8,
        7,
    )
    assert completion.usage.total_tokens == 15


async def test_unary_is_deterministic_and_bounded_by_max_tokens(
    client: openai.AsyncOpenAI,
) -> None:
    answers = []
    for _ in range(2):
        completion = await client.chat.completions.create(
            model="fake-echo",
            messages=PROMPT,
            max_completion_tokens=3,
        )
        answers.append(completion.choices[0].message.content)
        assert completion.choices[0].finish_reason == "length"
        assert completion.usage is not None
        assert completion.usage.completion_tokens == 3
    assert answers == ["Echo: What is", "Echo: What is"]


async def test_stream_with_usage(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="fake-echo",
        messages=PROMPT,
        max_tokens=64,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces: list[str] = []
    finish_reasons: list[str] = []
    usages = []
    async for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish_reasons.append(choice.finish_reason)
        if chunk.usage is not None:
            assert chunk.choices == []
            usages.append(chunk.usage)
    assert "".join(pieces) == "Echo: What is the capital of France?"
    assert len(pieces) == 7
    assert finish_reasons == ["stop"]
    assert len(usages) == 1
    assert (
        usages[0].prompt_tokens,
        usages[0].completion_tokens,
        usages[0].total_tokens,
    ) == (8, 7, 15)


async def test_stream_without_usage(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="fake-echo",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
    )
    chunks = [chunk async for chunk in stream]
    assert all(chunk.usage is None for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Echo: hi"


async def test_models(client: openai.AsyncOpenAI) -> None:
    models = [model.id async for model in client.models.list()]
    assert models == ["fake-echo"]


async def test_missing_key_is_authentication_error(base_url: str) -> None:
    # The SDK refuses an empty key itself, so talk to the server without one directly.
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{base_url}/chat/completions", json={"model": "m", "messages": PROMPT})
    assert response.status_code == 401
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    sdk = openai.AsyncOpenAI(
        base_url=base_url,
        api_key="x",
        max_retries=0,
        default_headers={"Authorization": ""},
    )
    with pytest.raises(openai.AuthenticationError) as caught:
        await sdk.chat.completions.create(model="fake-echo", messages=PROMPT)
    assert caught.value.status_code == 401
    await sdk.close()


async def test_injected_429_is_rate_limit_error(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(
            model="fake-echo",
            messages=PROMPT,
            extra_headers={"x-fake-fault": "status=429; retry_after=3"},
        )
    assert caught.value.response.headers["retry-after"] == "3"
    assert caught.value.code == "rate_limit_exceeded"


async def test_fault_in_model_name(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(
            model="fake-echo@status=500",
            messages=PROMPT,
        )


async def test_missing_messages_is_bad_request(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="fake-echo", messages=[], extra_body={})
    assert caught.value.code == "empty_array"
    assert caught.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as caught:
        await client.post("/chat/completions", cast_to=httpx.Response, body={"model": "fake-echo"})
    assert caught.value.code == "missing_required_parameter"
    assert caught.value.param == "messages"


async def test_stream_truncated_fault_has_no_finish(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="fake-echo",
        messages=PROMPT,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-fake-fault": "truncate_after=2"},
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo: What"
    assert all(c.usage is None for c in chunks)
    assert all(c.choices[0].finish_reason is None for c in chunks if c.choices)


TOOLS: list[ChatCompletionToolParam] = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look a thing up.",
            "parameters": {"type": "object", "properties": {"text": {"type": "string"}}},
        },
    }
]


async def test_tool_call_and_result(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="fake-echo@tool_call=lookup", messages=PROMPT, tools=TOOLS, tool_choice="auto"
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    (call,) = choice.message.tool_calls
    assert call.type == "function"
    assert call.function.name == "lookup"
    assert json.loads(call.function.arguments) == {"text": "What is the capital of France?"}
    followup = await client.chat.completions.create(
        model="fake-echo@tool_call=lookup",
        tools=TOOLS,
        messages=[
            *PROMPT,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": "lookup", "arguments": call.function.arguments},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call.id, "content": "Paris"},
        ],
    )
    assert followup.choices[0].message.content == "Echo: Paris"


async def test_streamed_tool_call(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="fake-echo@tool_call=lookup",
        messages=PROMPT,
        tools=TOOLS,
        stream=True,
        stream_options={"include_usage": True},
    )
    arguments = ""
    finish = None
    async for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or ():
                assert call.index == 0
                arguments += (call.function.arguments or "") if call.function else ""
            finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert json.loads(arguments) == {"text": "What is the capital of France?"}


async def test_usage_details(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="fake-echo@cached_tokens=4;reasoning_tokens=9",
        messages=PROMPT,
        response_format={"type": "json_object"},
        top_p=0.5,
        stop=["END"],
    )
    usage = completion.usage
    assert usage is not None
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 4
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 9
    assert usage.completion_tokens == 7 + 9


async def test_429_carries_rate_limit_headers(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model="fake-echo@status=429;retry_after=3", messages=PROMPT)
    headers = caught.value.response.headers
    assert headers["retry-after"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-limit-requests"] and headers["x-ratelimit-reset-requests"]


async def test_context_length_error_code(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(model="fake-echo@code=context_length_exceeded", messages=PROMPT)
    assert caught.value.code == "context_length_exceeded"


async def test_injected_server_errors(client: openai.AsyncOpenAI) -> None:
    for status in (500, 503):
        with pytest.raises(openai.InternalServerError) as caught:
            await client.chat.completions.create(model=f"fake-echo@status={status}", messages=PROMPT)
        assert caught.value.status_code == status
