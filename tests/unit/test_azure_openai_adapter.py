"""AzureOpenAIProvider against the Azure fake: Azure's URL and auth, OpenAI's format."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from interlock.services.fakeprovider import serve_fake_provider
from interlock.services.router.adapters.azure_openai import AzureOpenAIProvider
from interlock.services.router.domain.provider import (
    ChatMessage,
    ProviderError,
    ProviderErrorKind,
    ProviderRequest,
    StreamDelta,
    StreamEnd,
    StreamItem,
    TokenUsage,
    ToolSpec,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

API_KEY = "azure-interlock-test-0123456789abcdef"
MESSAGES = (ChatMessage("system", "Be brief."), ChatMessage("user", "Name three primary colours, please."))
TOOLS = (ToolSpec("lookup", "Look a thing up.", {"type": "object", "properties": {"text": {"type": "string"}}}),)


def make_request(model: str = "gpt-4o-deployment", **overrides: object) -> ProviderRequest:
    fields: dict[str, object] = {"upstream_model": model, "messages": MESSAGES, "max_tokens": 64, "timeout_s": 5.0}
    fields.update(overrides)
    return ProviderRequest(**fields)  # type: ignore[arg-type]


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def endpoint() -> AsyncIterator[str]:
    async with serve_fake_provider() as url:
        yield url.removesuffix("/v1") + "/azure"


@pytest_asyncio.fixture(loop_scope="module")
async def provider(endpoint: str) -> AsyncIterator[AzureOpenAIProvider]:
    adapter = AzureOpenAIProvider(endpoint=endpoint, deployment="gpt-4o-deployment", api_key=API_KEY)
    yield adapter
    await adapter.aclose()


async def test_chat_and_stream(provider: AzureOpenAIProvider) -> None:
    unary = await provider.chat(make_request())
    assert unary.text == "Echo: Name three primary colours, please."
    assert unary.usage == TokenUsage(input_tokens=7, output_tokens=6)
    items: list[StreamItem] = [item async for item in provider.stream(make_request())]
    assert "".join(i.text for i in items if isinstance(i, StreamDelta)) == unary.text
    assert [i for i in items if isinstance(i, StreamEnd)] == [items[-1]]


async def test_tool_call(provider: AzureOpenAIProvider) -> None:
    response = await provider.chat(make_request("gpt-4o-deployment@tool_call=lookup", tools=TOOLS))
    assert response.finish_reason == "tool_calls"
    assert json.loads(response.tool_calls[0].arguments) == {"text": "Name three primary colours, please."}
    end = [item async for item in provider.stream(make_request("gpt-4o-deployment@tool_call=lookup", tools=TOOLS))][-1]
    assert isinstance(end, StreamEnd) and end.tool_calls[0].name == "lookup"


@pytest.mark.parametrize(
    ("directive", "kind"),
    [
        ("code=content_filter", ProviderErrorKind.CONTENT_FILTERED),
        ("code=context_length_exceeded", ProviderErrorKind.CONTEXT_LENGTH_EXCEEDED),
        ("status=429;retry_after=4", ProviderErrorKind.RATE_LIMITED),
        ("status=503", ProviderErrorKind.OVERLOADED),
        ("status=500", ProviderErrorKind.SERVER_ERROR),
    ],
)
async def test_error_kinds(provider: AzureOpenAIProvider, directive: str, kind: str) -> None:
    with pytest.raises(ProviderError) as caught:
        await provider.chat(make_request(f"gpt-4o-deployment@{directive};message=key {API_KEY}"))
    assert caught.value.kind == kind
    assert caught.value.provider == "azure"
    assert API_KEY not in str(caught.value) and API_KEY not in repr(caught.value)
    if kind == ProviderErrorKind.RATE_LIMITED:
        assert caught.value.retry_after_s == 4.0


async def test_missing_key_is_auth_and_wrong_version_is_bad_request(endpoint: str) -> None:
    keyless = AzureOpenAIProvider(endpoint=endpoint, deployment="d", api_key="")
    unversioned = AzureOpenAIProvider(endpoint=endpoint + "/nowhere", deployment="d", api_key=API_KEY)
    try:
        with pytest.raises(ProviderError) as caught:
            await keyless.chat(make_request())
        assert caught.value.kind == ProviderErrorKind.AUTH
        with pytest.raises(ProviderError) as caught:
            await unversioned.chat(make_request())
        assert caught.value.kind == ProviderErrorKind.BAD_REQUEST and caught.value.status_code == 404
    finally:
        await keyless.aclose()
        await unversioned.aclose()
    assert API_KEY not in repr(unversioned)
