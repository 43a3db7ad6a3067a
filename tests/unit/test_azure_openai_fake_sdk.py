"""The Azure OpenAI fake speaks Azure's URL and auth well enough for the `openai` SDK's AsyncAzureOpenAI."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import openai
import pytest
import pytest_asyncio
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionToolParam

from interlock.services.fakeprovider import serve_fake_provider

pytestmark = pytest.mark.asyncio(loop_scope="module")

PROMPT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the capital of France?"}]
TOOLS: list[ChatCompletionToolParam] = [
    {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}
]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def endpoint() -> AsyncIterator[str]:
    async with serve_fake_provider() as url:
        yield url.removesuffix("/v1") + "/azure"


@pytest_asyncio.fixture(loop_scope="module")
async def client(endpoint: str) -> AsyncIterator[openai.AsyncAzureOpenAI]:
    sdk = openai.AsyncAzureOpenAI(azure_endpoint=endpoint, api_key="x", api_version="2024-10-21", max_retries=0)
    yield sdk
    await sdk.close()


async def test_unary(client: openai.AsyncAzureOpenAI) -> None:
    completion = await client.chat.completions.create(model="gpt-4o-deployment", messages=PROMPT)
    assert completion.choices[0].message.content == "Echo: What is the capital of France?"
    assert completion.usage is not None and completion.usage.completion_tokens == 7


async def test_stream(client: openai.AsyncAzureOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o-deployment", messages=PROMPT, stream=True, stream_options={"include_usage": True}
    )
    texts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(texts) == "Echo: What is the capital of France?"


async def test_tool_call(client: openai.AsyncAzureOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="gpt-4o-deployment@tool_call=lookup", messages=PROMPT, tools=TOOLS
    )
    assert completion.choices[0].finish_reason == "tool_calls"
    assert completion.choices[0].message.tool_calls is not None


@pytest.mark.parametrize(
    ("directive", "error_class"),
    [
        ("status=429", openai.RateLimitError),
        ("status=500", openai.InternalServerError),
        ("code=content_filter", openai.BadRequestError),
        ("code=context_length_exceeded", openai.BadRequestError),
    ],
)
async def test_errors(
    client: openai.AsyncAzureOpenAI, directive: str, error_class: type[openai.APIStatusError]
) -> None:
    with pytest.raises(error_class):
        await client.chat.completions.create(model=f"gpt-4o-deployment@{directive}", messages=PROMPT)


async def test_missing_key_and_missing_version(endpoint: str) -> None:
    url = endpoint + "/openai/deployments/gpt-4o-deployment/chat/completions"
    body = {"model": "gpt-4o-deployment", "messages": PROMPT}
    async with httpx.AsyncClient() as http:
        missing_key = await http.post(url, params={"api-version": "2024-10-21"}, json=body)
        missing_version = await http.post(url, headers={"api-key": "x"}, json=body)
    assert missing_key.status_code == 401
    assert missing_version.status_code == 404
