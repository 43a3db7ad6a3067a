"""The Cohere fake speaks the v2 Chat API well enough for the official `cohere` SDK."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import cohere
import pytest
import pytest_asyncio
from cohere.core.request_options import RequestOptions

from interlock.services.fakeprovider import serve_fake_provider

pytestmark = pytest.mark.asyncio(loop_scope="module")

PROMPT: list[cohere.ChatMessageV2] = [
    cohere.SystemChatMessageV2(content="Be brief."),
    cohere.UserChatMessageV2(content="What is the capital of France?"),
]
TOOLS = [
    cohere.ToolV2(
        type="function",
        function=cohere.ToolV2Function(
            name="lookup", parameters={"type": "object", "properties": {"query": {"type": "string"}}}
        ),
    )
]
NO_RETRIES: RequestOptions = {"max_retries": 0}


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def client() -> AsyncIterator[cohere.AsyncClientV2]:
    async with serve_fake_provider() as url:
        yield cohere.AsyncClientV2(api_key="x", base_url=url.removesuffix("/v1") + "/cohere")


async def test_unary(client: cohere.AsyncClientV2) -> None:
    response = await client.chat(model="command-fake", messages=PROMPT)
    assert response.finish_reason == "COMPLETE"
    assert response.message.content is not None
    assert response.message.content[0].type == "text"
    assert response.message.content[0].text == "Echo: What is the capital of France?"
    assert response.usage is not None and response.usage.billed_units is not None
    assert (response.usage.billed_units.input_tokens, response.usage.billed_units.output_tokens) == (8, 7)
    assert response.usage.tokens is not None and response.usage.tokens.input_tokens == 68


async def test_max_tokens(client: cohere.AsyncClientV2) -> None:
    response = await client.chat(model="command-fake", messages=PROMPT, max_tokens=2, p=0.5, temperature=0.2)
    assert response.finish_reason == "MAX_TOKENS"


async def test_stream(client: cohere.AsyncClientV2) -> None:
    texts: list[str] = []
    types: list[str] = []
    finish = None
    async for event in client.chat_stream(model="command-fake", messages=PROMPT):
        types.append(event.type)
        if event.type == "content-delta" and event.delta and event.delta.message and event.delta.message.content:
            texts.append(event.delta.message.content.text or "")
        if event.type == "message-end" and event.delta:
            finish = event.delta.finish_reason
            assert event.delta.usage is not None and event.delta.usage.billed_units is not None
            assert event.delta.usage.billed_units.output_tokens == 7
    assert "".join(texts) == "Echo: What is the capital of France?"
    assert types[0] == "message-start" and types[-1] == "message-end"
    assert finish == "COMPLETE"


async def test_tool_call_and_result(client: cohere.AsyncClientV2) -> None:
    response = await client.chat(model="command-fake@tool_call=lookup", messages=PROMPT, tools=TOOLS)
    assert response.finish_reason == "TOOL_CALL"
    assert response.message.tool_plan
    assert response.message.tool_calls is not None
    (call,) = response.message.tool_calls
    assert call.function is not None and call.function.name == "lookup"
    assert json.loads(call.function.arguments or "") == {"query": "What is the capital of France?"}
    followup = await client.chat(
        model="command-fake@tool_call=lookup",
        tools=TOOLS,
        messages=[
            *PROMPT,
            cohere.AssistantChatMessageV2(tool_calls=[call], tool_plan=response.message.tool_plan),
            cohere.ToolChatMessageV2(tool_call_id=call.id or "", content="Paris"),
        ],
    )
    assert followup.message.content is not None
    assert followup.message.content[0].type == "text" and followup.message.content[0].text == "Echo: Paris"


async def test_streamed_tool_call(client: cohere.AsyncClientV2) -> None:
    arguments = ""
    async for event in client.chat_stream(model="command-fake", messages=PROMPT, tools=TOOLS, tool_choice="REQUIRED"):
        if event.type == "tool-call-delta" and event.delta and event.delta.message:
            calls = event.delta.message.tool_calls
            arguments += (calls.function.arguments or "") if calls and calls.function else ""
    assert json.loads(arguments) == {"query": "What is the capital of France?"}


@pytest.mark.parametrize(
    ("directive", "error_class", "status"),
    [
        ("status=429", cohere.TooManyRequestsError, 429),
        ("status=401", cohere.UnauthorizedError, 401),
        ("status=500", cohere.InternalServerError, 500),
        ("status=503", cohere.ServiceUnavailableError, 503),
        ("code=context_length_exceeded", cohere.BadRequestError, 400),
    ],
)
async def test_error_classes(
    client: cohere.AsyncClientV2, directive: str, error_class: type[cohere.core.ApiError], status: int
) -> None:
    with pytest.raises(error_class) as caught:
        await client.chat(model=f"command-fake@{directive}", messages=PROMPT, request_options=NO_RETRIES)
    assert caught.value.status_code == status
    if status == 400:
        assert "too many tokens" in str(caught.value.body)
