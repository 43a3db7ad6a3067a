"""CohereProvider against the Anthropic fake: answers, streams, tools, usage, cost, errors."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from provider_cases import MESSAGES, collect, request_factory

from interlock.services.fakeprovider import serve_fake_provider
from interlock.services.router.adapters.cohere import CohereProvider
from interlock.services.router.domain.provider import (
    ChatMessage,
    ChatProvider,
    ProviderError,
    ProviderErrorKind,
    StreamDelta,
    StreamEnd,
    StreamItem,
    StreamToolCallDelta,
    TokenUsage,
    ToolCall,
    ToolSpec,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

API_KEY = "co-interlock-test-0123456789abcdef"
TOOLS = (ToolSpec("lookup", "Look a thing up.", {"type": "object", "properties": {"query": {"type": "string"}}}),)


make_request = request_factory("command-fake")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def base_url() -> AsyncIterator[str]:
    async with serve_fake_provider() as url:
        yield url.removesuffix("/v1") + "/cohere"


@pytest_asyncio.fixture(loop_scope="module")
async def provider(base_url: str) -> AsyncIterator[CohereProvider]:
    adapter = CohereProvider(name="cohere-main", base_url=base_url, api_key=API_KEY)
    yield adapter
    await adapter.aclose()


async def test_is_a_chat_provider() -> None:
    adapter: ChatProvider = CohereProvider(api_key=API_KEY)
    assert adapter.name == "cohere"
    await adapter.aclose()


async def test_chat(provider: CohereProvider) -> None:
    response = await provider.chat(make_request(temperature=0.5, top_p=0.9, stop=("END",)))
    assert response.text == "Echo: Name three primary colours, please."
    assert response.finish_reason == "stop"
    assert response.usage == TokenUsage(input_tokens=7, output_tokens=6)
    assert response.tool_calls == ()


async def test_max_tokens_is_length(provider: CohereProvider) -> None:
    response = await provider.chat(make_request(max_tokens=2))
    assert response.text == "Echo: Name"
    assert response.finish_reason == "length"


async def test_error_toxic_is_content_filter(provider: CohereProvider) -> None:
    assert (await provider.chat(make_request("command-fake@finish=ERROR_TOXIC"))).finish_reason == "content_filter"


async def test_stream_matches_chat(provider: CohereProvider) -> None:
    unary = await provider.chat(make_request())
    items = await collect(provider, make_request("command-fake@chunk_delay_ms=2"))
    deltas = [item for item in items if isinstance(item, StreamDelta)]
    ends = [item for item in items if isinstance(item, StreamEnd)]
    assert len(ends) == 1 and items[-1] is ends[0]
    assert "".join(d.text for d in deltas) == unary.text
    assert ends[0] == StreamEnd(finish_reason="stop", usage=unary.usage)


async def test_tool_call_round_trip(provider: CohereProvider) -> None:
    first = await provider.chat(make_request("command-fake@tool_call=lookup", tools=TOOLS, tool_choice="auto"))
    assert first.finish_reason == "tool_calls"
    assert first.text == ""
    (call,) = first.tool_calls
    assert call.name == "lookup" and call.id.startswith("lookup_")
    assert json.loads(call.arguments) == {"query": "Name three primary colours, please."}
    followup = make_request(
        tools=TOOLS,
        messages=(
            *MESSAGES,
            ChatMessage("assistant", "", tool_calls=(call,)),
            ChatMessage("tool", "red yellow blue", tool_call_id=call.id, name="lookup"),
        ),
    )
    answer = await provider.chat(followup)
    assert answer.text == "Echo: red yellow blue"
    assert answer.finish_reason == "stop"


async def test_streamed_tool_call(provider: CohereProvider) -> None:
    unary = await provider.chat(make_request(tools=TOOLS, tool_choice="lookup"))
    items = await collect(provider, make_request(tools=TOOLS, tool_choice="lookup"))
    pieces = [item for item in items if isinstance(item, StreamToolCallDelta)]
    assert pieces[0].index == 0 and pieces[0].name == "lookup" and pieces[0].id.startswith("lookup_")
    assert len(pieces) > 2  # the arguments came in fragments
    end = items[-1]
    assert isinstance(end, StreamEnd)
    assert end.finish_reason == "tool_calls"
    (call,) = end.tool_calls
    assert call == ToolCall(id=pieces[0].id, name="lookup", arguments="".join(p.arguments for p in pieces))
    assert json.loads(call.arguments) == json.loads(unary.tool_calls[0].arguments)


@pytest.mark.parametrize(
    ("directive", "kind", "status"),
    [
        ("status=429;retry_after=2.5", ProviderErrorKind.RATE_LIMITED, 429),
        ("status=503", ProviderErrorKind.OVERLOADED, 503),
        ("status=500", ProviderErrorKind.SERVER_ERROR, 500),
        ("status=422", ProviderErrorKind.BAD_REQUEST, 422),
        ("status=401", ProviderErrorKind.AUTH, 401),
        ("status=403", ProviderErrorKind.AUTH, 403),
        ("status=404", ProviderErrorKind.BAD_REQUEST, 404),
        ("code=context_length_exceeded", ProviderErrorKind.CONTEXT_LENGTH_EXCEEDED, 400),
    ],
)
async def test_error_kinds(provider: CohereProvider, directive: str, kind: str, status: int) -> None:
    for call in (provider.chat, lambda r: collect(provider, r)):
        with pytest.raises(ProviderError) as caught:
            await call(make_request(f"command-fake@{directive}"))
        assert caught.value.kind == kind
        assert caught.value.status_code == status
        assert caught.value.provider == "cohere-main"
        assert caught.value.details["upstream_request_id"].startswith("fake-")
        if status == 429:
            assert caught.value.retry_after_s == 2.5


async def test_error_event_mid_stream(provider: CohereProvider) -> None:
    received: list[StreamItem] = []
    with pytest.raises(ProviderError) as caught:
        async for item in provider.stream(make_request("command-fake@error_after=2")):
            received.append(item)
    assert caught.value.kind == ProviderErrorKind.SERVER_ERROR  # message-end with finish_reason ERROR
    assert received == [StreamDelta("Echo:"), StreamDelta(" Name")]


async def test_truncated_stream_is_protocol(provider: CohereProvider) -> None:
    with pytest.raises(ProviderError) as caught:
        await collect(provider, make_request("command-fake@truncate_after=2"))
    assert caught.value.kind == ProviderErrorKind.PROTOCOL
    assert "message-end" in caught.value.message


async def test_malformed_json_is_protocol(provider: CohereProvider) -> None:
    with pytest.raises(ProviderError) as caught:
        await provider.chat(make_request("command-fake@truncate_after=20"))
    assert caught.value.kind == ProviderErrorKind.PROTOCOL


async def test_delay_past_deadline_is_timeout(provider: CohereProvider) -> None:
    for call in (provider.chat, lambda r: collect(provider, r)):
        started = time.monotonic()
        with pytest.raises(ProviderError) as caught:
            await call(make_request("command-fake@delay_ms=3000", timeout_s=0.2))
        assert caught.value.kind == ProviderErrorKind.TIMEOUT
        assert time.monotonic() - started < 1.5


async def test_connection_refused_is_server_error() -> None:
    adapter = CohereProvider(base_url="http://127.0.0.1:9", api_key=API_KEY)
    try:
        with pytest.raises(ProviderError) as caught:
            await adapter.chat(make_request())
        assert caught.value.kind == ProviderErrorKind.SERVER_ERROR
    finally:
        await adapter.aclose()


async def test_api_key_never_leaks(provider: CohereProvider) -> None:
    assert API_KEY not in repr(provider)
    assert API_KEY not in str(provider)
    for status in (400, 401, 429, 503):
        with pytest.raises(ProviderError) as caught:
            await provider.chat(make_request(f"command-fake@status={status};message=bad key {API_KEY} here"))
        error = caught.value
        assert API_KEY not in str(error)
        assert API_KEY not in repr(error)
        assert all(API_KEY not in value for value in error.details.values())


async def test_usage_is_billed_units_and_json_mode(provider: CohereProvider) -> None:
    response = await provider.chat(make_request("command-fake@reasoning_tokens=3", json_mode=True))
    # billed_units, not `tokens` (which adds the 60-token prompt template Cohere does not bill)
    assert response.usage == TokenUsage(input_tokens=7, output_tokens=9)
    assert json.loads(response.text) == {"echo": "Echo: Name three primary colours, please."}
