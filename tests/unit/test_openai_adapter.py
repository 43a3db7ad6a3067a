"""OpenAIProvider against the fake provider: answers, streams and the error mapping."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from provider_cases import MESSAGES, collect, request_factory

from interlock.services.fakeprovider import serve_fake_provider
from interlock.services.router.adapters.openai import OpenAIProvider
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

API_KEY = "sk-interlock-test-0123456789abcdef"


make_request = request_factory("fake-echo")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def base_url() -> AsyncIterator[str]:
    async with serve_fake_provider() as url:
        yield url


@pytest_asyncio.fixture(loop_scope="module")
async def provider(base_url: str) -> AsyncIterator[OpenAIProvider]:
    adapter = OpenAIProvider(name="fake", base_url=base_url, api_key=API_KEY)
    yield adapter
    await adapter.aclose()


async def test_is_a_chat_provider() -> None:
    adapter: ChatProvider = OpenAIProvider(api_key=API_KEY)
    assert adapter.name == "openai"
    await adapter.aclose()


async def test_chat(provider: OpenAIProvider) -> None:
    response = await provider.chat(make_request())
    assert response.text == "Echo: Name three primary colours, please."
    assert response.finish_reason == "stop"
    assert response.usage == TokenUsage(input_tokens=7, output_tokens=6)


async def test_chat_max_tokens_is_sent(provider: OpenAIProvider) -> None:
    response = await provider.chat(make_request(max_tokens=2))
    assert response.text == "Echo: Name"
    assert response.finish_reason == "length"
    assert response.usage.output_tokens == 2


async def test_stream_matches_chat(provider: OpenAIProvider) -> None:
    unary = await provider.chat(make_request())
    items = await collect(provider, make_request())
    deltas = [item for item in items if isinstance(item, StreamDelta)]
    ends = [item for item in items if isinstance(item, StreamEnd)]
    assert len(ends) == 1 and items[-1] is ends[0]
    assert len(deltas) == 6
    assert "".join(d.text for d in deltas) == unary.text
    assert ends[0] == StreamEnd(finish_reason="stop", usage=unary.usage)


async def test_stream_with_chunk_delays_and_length_finish(
    provider: OpenAIProvider,
) -> None:
    # Separate network writes per token exercise the incremental SSE parser.
    items = await collect(provider, make_request("fake-echo@chunk_delay_ms=5", max_tokens=4))
    assert [i.text for i in items if isinstance(i, StreamDelta)] == [
        "Echo:",
        " Name",
        " three",
        " primary",
    ]
    assert items[-1] == StreamEnd(finish_reason="length", usage=TokenUsage(7, 4))


async def test_connection_is_reused_after_stream(provider: OpenAIProvider) -> None:
    for _ in range(5):
        await collect(provider, make_request())
        await provider.chat(make_request())
    pool = provider._client()
    # One keep-alive connection served every call: idle in the pool, none left busy.
    assert pool.idle_connections == 1
    assert pool.busy_connections == 0


async def test_rate_limited_with_retry_after(provider: OpenAIProvider) -> None:
    with pytest.raises(ProviderError) as caught:
        await provider.chat(make_request("fake-echo@status=429;retry_after=2.5"))
    error = caught.value
    assert error.kind == ProviderErrorKind.RATE_LIMITED
    assert error.status_code == 429
    assert error.retry_after_s == 2.5
    assert error.details["code"] == "rate_limit_exceeded"
    with pytest.raises(ProviderError) as caught:
        await collect(provider, make_request("fake-echo@status=429"))
    assert caught.value.kind == ProviderErrorKind.RATE_LIMITED
    assert caught.value.retry_after_s == 1.0


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (500, ProviderErrorKind.SERVER_ERROR),
        (503, ProviderErrorKind.OVERLOADED),
        (401, ProviderErrorKind.AUTH),
        (403, ProviderErrorKind.AUTH),
        (400, ProviderErrorKind.BAD_REQUEST),
        (404, ProviderErrorKind.BAD_REQUEST),
        (408, ProviderErrorKind.TIMEOUT),
    ],
)
async def test_status_mapping(provider: OpenAIProvider, status: int, kind: str) -> None:
    for call in (provider.chat, lambda r: collect(provider, r)):
        with pytest.raises(ProviderError) as caught:
            await call(make_request(f"fake-echo@status={status}"))
        assert caught.value.kind == kind
        assert caught.value.status_code == status
        assert caught.value.provider == "fake"


async def test_missing_key_is_auth(base_url: str) -> None:
    adapter = OpenAIProvider(base_url=base_url, api_key="")
    try:
        with pytest.raises(ProviderError) as caught:
            await adapter.chat(make_request())
    finally:
        await adapter.aclose()
    assert caught.value.kind == ProviderErrorKind.AUTH
    assert caught.value.status_code == 401


async def test_invalid_request_is_bad_request(provider: OpenAIProvider) -> None:
    with pytest.raises(ProviderError) as caught:
        await provider.chat(make_request(temperature=3.0))
    assert caught.value.kind == ProviderErrorKind.BAD_REQUEST
    assert caught.value.details["param"] == "temperature"
    assert "temperature" in caught.value.message


async def test_truncated_stream_is_protocol(provider: OpenAIProvider) -> None:
    received: list[StreamItem] = []
    with pytest.raises(ProviderError) as caught:
        async for item in provider.stream(make_request("fake-echo@truncate_after=2")):
            received.append(item)
    assert caught.value.kind == ProviderErrorKind.PROTOCOL
    assert "[DONE]" in caught.value.message
    # The deltas before the cut were delivered; no StreamEnd was.
    assert received == [StreamDelta("Echo:"), StreamDelta(" Name")]


async def test_malformed_json_is_protocol(provider: OpenAIProvider) -> None:
    with pytest.raises(ProviderError) as caught:
        await provider.chat(make_request("fake-echo@truncate_after=20"))
    assert caught.value.kind == ProviderErrorKind.PROTOCOL


async def test_delay_past_deadline_is_timeout(provider: OpenAIProvider) -> None:
    for call in (provider.chat, lambda r: collect(provider, r)):
        started = time.monotonic()
        with pytest.raises(ProviderError) as caught:
            await call(make_request("fake-echo@delay_ms=3000", timeout_s=0.2))
        assert caught.value.kind == ProviderErrorKind.TIMEOUT
        assert time.monotonic() - started < 1.5


async def test_stream_deadline_covers_the_whole_stream(
    provider: OpenAIProvider,
) -> None:
    # Each token comes quickly, but all of them together take longer than the deadline.
    received: list[StreamItem] = []
    with pytest.raises(ProviderError) as caught:
        async for item in provider.stream(make_request("fake-echo@chunk_delay_ms=100", timeout_s=0.25)):
            received.append(item)
    assert caught.value.kind == ProviderErrorKind.TIMEOUT
    assert len(received) < 6  # cut mid-answer (the full answer has 6 deltas and an end)


async def test_connection_refused_is_server_error() -> None:
    adapter = OpenAIProvider(base_url="http://127.0.0.1:9/v1", api_key=API_KEY)
    try:
        with pytest.raises(ProviderError) as caught:
            await adapter.chat(make_request())
        assert caught.value.kind == ProviderErrorKind.SERVER_ERROR
        with pytest.raises(ProviderError) as caught:
            await collect(adapter, make_request())
        assert caught.value.kind == ProviderErrorKind.SERVER_ERROR
    finally:
        await adapter.aclose()


async def test_api_key_never_leaks(provider: OpenAIProvider) -> None:
    assert API_KEY not in repr(provider)
    assert API_KEY not in str(provider)
    # A server that quotes the key back in its error message.
    for status in (400, 401, 429, 500):
        with pytest.raises(ProviderError) as caught:
            await provider.chat(make_request(f"fake-echo@status={status};message=bad key {API_KEY} here"))
        error = caught.value
        assert API_KEY not in str(error)
        assert API_KEY not in repr(error)
        assert all(API_KEY not in value for value in error.details.values())


TOOLS = (ToolSpec("lookup", "Look a thing up.", {"type": "object", "properties": {"text": {"type": "string"}}}),)


async def test_request_options_are_accepted(provider: OpenAIProvider) -> None:
    response = await provider.chat(make_request(top_p=0.5, stop=("END", "STOP"), json_mode=True, temperature=0.1))
    assert response.text == "Echo: Name three primary colours, please."


async def test_usage_details(provider: OpenAIProvider) -> None:
    model = "fake-echo@cached_tokens=5;reasoning_tokens=10"
    expected = TokenUsage(input_tokens=7, output_tokens=16, cached_input_tokens=5, reasoning_tokens=10)
    assert (await provider.chat(make_request(model))).usage == expected
    end = (await collect(provider, make_request(model)))[-1]
    assert isinstance(end, StreamEnd) and end.usage == expected


async def test_tool_call_round_trip(provider: OpenAIProvider) -> None:
    first = await provider.chat(make_request("fake-echo@tool_call=lookup", tools=TOOLS, tool_choice="required"))
    assert first.finish_reason == "tool_calls"
    assert first.text == ""
    (call,) = first.tool_calls
    assert call.name == "lookup" and call.id.startswith("call_")
    assert json.loads(call.arguments) == {"text": "Name three primary colours, please."}
    followup = make_request(
        "fake-echo@tool_call=lookup",
        tools=TOOLS,
        messages=(
            *MESSAGES,
            ChatMessage("assistant", "", tool_calls=(call,)),
            ChatMessage("tool", "red yellow blue", tool_call_id=call.id, name="lookup"),
        ),
    )
    answer = await provider.chat(followup)
    assert (answer.text, answer.finish_reason) == ("Echo: red yellow blue", "stop")


async def test_streamed_tool_call(provider: OpenAIProvider) -> None:
    items = await collect(provider, make_request("fake-echo@tool_call=lookup", tools=TOOLS, tool_choice="lookup"))
    pieces = [item for item in items if isinstance(item, StreamToolCallDelta)]
    assert pieces[0].name == "lookup" and pieces[0].id.startswith("call_")
    assert len(pieces) > 2
    end = items[-1]
    assert isinstance(end, StreamEnd) and end.finish_reason == "tool_calls"
    (call,) = end.tool_calls
    assert call == ToolCall(id=pieces[0].id, name="lookup", arguments="".join(p.arguments for p in pieces))
    assert json.loads(call.arguments) == {"text": "Name three primary colours, please."}


async def test_content_filter_finish(provider: OpenAIProvider) -> None:
    assert (await provider.chat(make_request("fake-echo@finish=content_filter"))).finish_reason == "content_filter"


@pytest.mark.parametrize(
    ("directive", "kind", "status"),
    [
        ("code=context_length_exceeded", ProviderErrorKind.CONTEXT_LENGTH_EXCEEDED, 400),
        ("code=content_filter", ProviderErrorKind.CONTENT_FILTERED, 400),
        ("code=content_policy_violation", ProviderErrorKind.CONTENT_FILTERED, 400),
        ("status=529", ProviderErrorKind.OVERLOADED, 529),
        ("status=502", ProviderErrorKind.SERVER_ERROR, 502),
    ],
)
async def test_error_codes(provider: OpenAIProvider, directive: str, kind: str, status: int) -> None:
    for call in (provider.chat, lambda r: collect(provider, r)):
        with pytest.raises(ProviderError) as caught:
            await call(make_request(f"fake-echo@{directive}"))
        assert (caught.value.kind, caught.value.status_code) == (kind, status)


async def test_error_event_mid_stream_is_server_error(provider: OpenAIProvider) -> None:
    received: list[StreamItem] = []
    with pytest.raises(ProviderError) as caught:
        async for item in provider.stream(make_request("fake-echo@error_after=1")):
            received.append(item)
    assert caught.value.kind == ProviderErrorKind.SERVER_ERROR
    assert received == [StreamDelta("Echo:")]
