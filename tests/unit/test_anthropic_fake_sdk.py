"""The Anthropic fake speaks the Messages API well enough for the official `anthropic` SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anthropic
import pytest
import pytest_asyncio
from anthropic.types import MessageParam, ToolParam

from interlock.services.fakeprovider import serve_fake_provider

pytestmark = pytest.mark.asyncio(loop_scope="module")

PROMPT: list[MessageParam] = [{"role": "user", "content": "What is the capital of France?"}]
TOOLS: list[ToolParam] = [
    {
        "name": "lookup",
        "description": "Look a city up.",
        "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}},
    }
]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def base_url() -> AsyncIterator[str]:
    async with serve_fake_provider() as url:
        yield url.removesuffix("/v1") + "/anthropic"


@pytest_asyncio.fixture(loop_scope="module")
async def client(base_url: str) -> AsyncIterator[anthropic.AsyncAnthropic]:
    # max_retries=0: the SDK would otherwise retry the injected 429/5xx.
    sdk = anthropic.AsyncAnthropic(base_url=base_url, api_key="x", max_retries=0)
    yield sdk
    await sdk.close()


async def test_unary(client: anthropic.AsyncAnthropic) -> None:
    message = await client.messages.create(model="claude-fake", max_tokens=64, system="Be brief.", messages=PROMPT)
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_")
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].type == "text"
    assert message.content[0].text == "Echo: What is the capital of France?"
    assert message.stop_reason == "end_turn"
    # One token per word: 2 (system) + 6 in, "Echo:" + 6 out.
    assert (message.usage.input_tokens, message.usage.output_tokens) == (8, 7)


async def test_max_tokens_cuts(client: anthropic.AsyncAnthropic) -> None:
    message = await client.messages.create(model="claude-fake", max_tokens=3, messages=PROMPT)
    assert message.content[0].type == "text"
    assert message.content[0].text == "Echo: What is"
    assert message.stop_reason == "max_tokens"


async def test_stream_helper(client: anthropic.AsyncAnthropic) -> None:
    async with client.messages.stream(model="claude-fake", max_tokens=64, messages=PROMPT) as stream:
        texts = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert "".join(texts) == "Echo: What is the capital of France?"
    assert len(texts) == 7
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 7


async def test_create_stream_events(client: anthropic.AsyncAnthropic) -> None:
    stream = await client.messages.create(model="claude-fake", max_tokens=64, messages=PROMPT, stream=True)
    types = [event.type async for event in stream]
    assert types[:2] == ["message_start", "content_block_start"]
    assert types[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert types.count("content_block_delta") == 7


async def test_tool_use_and_result(client: anthropic.AsyncAnthropic) -> None:
    message = await client.messages.create(
        model="claude-fake@tool_call=lookup", max_tokens=64, messages=PROMPT, tools=TOOLS
    )
    assert message.stop_reason == "tool_use"
    block = message.content[0]
    assert block.type == "tool_use"
    assert block.name == "lookup"
    assert block.input == {"query": "What is the capital of France?"}
    followup = await client.messages.create(
        model="claude-fake@tool_call=lookup",
        max_tokens=64,
        tools=TOOLS,
        messages=[
            *PROMPT,
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "Paris"}]},
        ],
    )
    assert followup.stop_reason == "end_turn"
    assert followup.content[0].type == "text"
    assert followup.content[0].text == "Echo: Paris"


async def test_streamed_tool_use(client: anthropic.AsyncAnthropic) -> None:
    async with client.messages.stream(
        model="claude-fake", max_tokens=64, messages=PROMPT, tools=TOOLS, tool_choice={"type": "any"}
    ) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[0].type == "tool_use"
    assert final.content[0].input == {"query": "What is the capital of France?"}


async def test_cache_usage(client: anthropic.AsyncAnthropic) -> None:
    message = await client.messages.create(
        model="claude-fake@cached_tokens=100;cache_write_tokens=20", max_tokens=64, messages=PROMPT
    )
    assert message.usage.cache_read_input_tokens == 100
    assert message.usage.cache_creation_input_tokens == 20
    assert message.usage.input_tokens == 6


@pytest.mark.parametrize(
    ("directive", "error_class", "status"),
    [
        ("status=429", anthropic.RateLimitError, 429),
        ("status=529", anthropic.InternalServerError, 529),
        ("status=500", anthropic.InternalServerError, 500),
        ("status=401", anthropic.AuthenticationError, 401),
        ("status=403", anthropic.PermissionDeniedError, 403),
        ("code=context_length_exceeded", anthropic.BadRequestError, 400),
    ],
)
async def test_error_classes(
    client: anthropic.AsyncAnthropic, directive: str, error_class: type[anthropic.APIStatusError], status: int
) -> None:
    with pytest.raises(error_class) as caught:
        await client.messages.create(model=f"claude-fake@{directive}", max_tokens=64, messages=PROMPT)
    assert caught.value.status_code == status
    assert caught.value.request_id is not None and caught.value.request_id.startswith("req_")
    if status == 429:
        assert caught.value.response.headers["retry-after"] == "1"
    if status == 400:
        assert "prompt is too long" in caught.value.message


async def test_invalid_request_is_bad_request(client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.BadRequestError):
        await client.messages.create(
            model="claude-fake", max_tokens=64, messages=PROMPT, extra_body={"temperature": 1.5}
        )


async def test_error_event_mid_stream(client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.APIStatusError) as caught:
        async with client.messages.stream(model="claude-fake@error_after=2", max_tokens=64, messages=PROMPT) as stream:
            async for _ in stream.text_stream:
                pass
    assert "overloaded" in str(caught.value).lower()
