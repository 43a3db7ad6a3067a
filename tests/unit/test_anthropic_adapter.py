"""AnthropicProvider against the Anthropic fake: answers, streams, tools, usage, cost, errors."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from genai_prices import Usage, calc_price
from provider_cases import MESSAGES, collect, request_factory

from interlock.pricing import ModelPricing, usd_to_nanos
from interlock.services.fakeprovider import serve_fake_provider
from interlock.services.router.adapters.anthropic import AnthropicProvider
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

API_KEY = "sk-ant-interlock-test-0123456789abcdef"
TOOLS = (ToolSpec("lookup", "Look a thing up.", {"type": "object", "properties": {"query": {"type": "string"}}}),)


make_request = request_factory("claude-fake")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def base_url() -> AsyncIterator[str]:
    async with serve_fake_provider() as url:
        yield url.removesuffix("/v1") + "/anthropic"


@pytest_asyncio.fixture(loop_scope="module")
async def provider(base_url: str) -> AsyncIterator[AnthropicProvider]:
    adapter = AnthropicProvider(name="claude", base_url=base_url, api_key=API_KEY)
    yield adapter
    await adapter.aclose()


async def test_is_a_chat_provider() -> None:
    adapter: ChatProvider = AnthropicProvider(api_key=API_KEY)
    assert adapter.name == "anthropic"
    await adapter.aclose()


async def test_chat(provider: AnthropicProvider) -> None:
    response = await provider.chat(make_request(temperature=0.5, top_p=0.9, stop=("END",)))
    assert response.text == "Echo: Name three primary colours, please."
    assert response.finish_reason == "stop"
    assert response.usage == TokenUsage(input_tokens=7, output_tokens=6)
    assert response.tool_calls == ()


async def test_max_tokens_is_length(provider: AnthropicProvider) -> None:
    response = await provider.chat(make_request(max_tokens=2))
    assert response.text == "Echo: Name"
    assert response.finish_reason == "length"


async def test_refusal_is_content_filter(provider: AnthropicProvider) -> None:
    assert (await provider.chat(make_request("claude-fake@finish=refusal"))).finish_reason == "content_filter"


async def test_json_mode_is_emulated_in_the_system_prompt(provider: AnthropicProvider) -> None:
    plain = await provider.chat(make_request())
    emulated = await provider.chat(make_request(json_mode=True))
    # The instruction went out as system text: the fake counts its words as input.
    assert emulated.usage.input_tokens > plain.usage.input_tokens


async def test_stream_matches_chat(provider: AnthropicProvider) -> None:
    unary = await provider.chat(make_request())
    items = await collect(provider, make_request("claude-fake@chunk_delay_ms=2"))
    deltas = [item for item in items if isinstance(item, StreamDelta)]
    ends = [item for item in items if isinstance(item, StreamEnd)]
    assert len(ends) == 1 and items[-1] is ends[0]
    assert "".join(d.text for d in deltas) == unary.text
    assert ends[0] == StreamEnd(finish_reason="stop", usage=unary.usage)


async def test_usage_with_prompt_cache(provider: AnthropicProvider) -> None:
    model = "claude-fake@cached_tokens=100;cache_write_tokens=20"
    expected = TokenUsage(input_tokens=127, output_tokens=6, cached_input_tokens=100, cache_write_tokens=20)
    assert (await provider.chat(make_request(model))).usage == expected
    end = (await collect(provider, make_request(model)))[-1]
    assert isinstance(end, StreamEnd) and end.usage == expected


async def test_cost_matches_genai_prices(provider: AnthropicProvider) -> None:
    usage = (await provider.chat(make_request("claude-fake@cached_tokens=1000;cache_write_tokens=300"))).usage
    pricing = ModelPricing.resolve("anthropic", "claude-3-5-haiku-latest")
    ours = pricing.cost_nanos(
        usage.input_tokens,
        usage.output_tokens,
        cached_input_tokens=usage.cached_input_tokens,
        cache_write_tokens=usage.cache_write_tokens,
    )
    # genai-prices wants the same normalisation: input_tokens includes cache reads and writes.
    theirs = calc_price(
        Usage(input_tokens=1307, output_tokens=6, cache_read_tokens=1000, cache_write_tokens=300),
        model_ref="claude-3-5-haiku-latest",
        provider_id="anthropic",
    ).total_price
    assert usage.input_tokens == 1307
    assert ours == usd_to_nanos(theirs)
    assert ours > 0


async def test_tool_call_round_trip(provider: AnthropicProvider) -> None:
    first = await provider.chat(make_request("claude-fake@tool_call=lookup", tools=TOOLS, tool_choice="auto"))
    assert first.finish_reason == "tool_calls"
    assert first.text == ""
    (call,) = first.tool_calls
    assert call.name == "lookup" and call.id.startswith("toolu_")
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


async def test_streamed_tool_call(provider: AnthropicProvider) -> None:
    unary = await provider.chat(make_request(tools=TOOLS, tool_choice="lookup"))
    items = await collect(provider, make_request(tools=TOOLS, tool_choice="lookup"))
    pieces = [item for item in items if isinstance(item, StreamToolCallDelta)]
    assert pieces[0].index == 0 and pieces[0].name == "lookup" and pieces[0].id.startswith("toolu_")
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
        ("status=529", ProviderErrorKind.OVERLOADED, 529),
        ("status=500", ProviderErrorKind.SERVER_ERROR, 500),
        ("status=401", ProviderErrorKind.AUTH, 401),
        ("status=403", ProviderErrorKind.AUTH, 403),
        ("status=404", ProviderErrorKind.BAD_REQUEST, 404),
        ("code=context_length_exceeded", ProviderErrorKind.CONTEXT_LENGTH_EXCEEDED, 400),
    ],
)
async def test_error_kinds(provider: AnthropicProvider, directive: str, kind: str, status: int) -> None:
    for call in (provider.chat, lambda r: collect(provider, r)):
        with pytest.raises(ProviderError) as caught:
            await call(make_request(f"claude-fake@{directive}"))
        assert caught.value.kind == kind
        assert caught.value.status_code == status
        assert caught.value.provider == "claude"
        assert caught.value.details["upstream_request_id"].startswith("req_")
        if status == 429:
            assert caught.value.retry_after_s == 2.5


async def test_invalid_request_is_bad_request(provider: AnthropicProvider) -> None:
    with pytest.raises(ProviderError) as caught:
        await provider.chat(make_request(temperature=1.5))
    assert caught.value.kind == ProviderErrorKind.BAD_REQUEST
    assert "temperature" in caught.value.message


async def test_error_event_mid_stream(provider: AnthropicProvider) -> None:
    received: list[StreamItem] = []
    with pytest.raises(ProviderError) as caught:
        async for item in provider.stream(make_request("claude-fake@error_after=2")):
            received.append(item)
    assert caught.value.kind == ProviderErrorKind.OVERLOADED
    assert received == [StreamDelta("Echo:"), StreamDelta(" Name")]


async def test_truncated_stream_is_protocol(provider: AnthropicProvider) -> None:
    with pytest.raises(ProviderError) as caught:
        await collect(provider, make_request("claude-fake@truncate_after=2"))
    assert caught.value.kind == ProviderErrorKind.PROTOCOL
    assert "message_stop" in caught.value.message


async def test_malformed_json_is_protocol(provider: AnthropicProvider) -> None:
    with pytest.raises(ProviderError) as caught:
        await provider.chat(make_request("claude-fake@truncate_after=20"))
    assert caught.value.kind == ProviderErrorKind.PROTOCOL


async def test_delay_past_deadline_is_timeout(provider: AnthropicProvider) -> None:
    for call in (provider.chat, lambda r: collect(provider, r)):
        started = time.monotonic()
        with pytest.raises(ProviderError) as caught:
            await call(make_request("claude-fake@delay_ms=3000", timeout_s=0.2))
        assert caught.value.kind == ProviderErrorKind.TIMEOUT
        assert time.monotonic() - started < 1.5


async def test_connection_refused_is_server_error() -> None:
    adapter = AnthropicProvider(base_url="http://127.0.0.1:9", api_key=API_KEY)
    try:
        with pytest.raises(ProviderError) as caught:
            await adapter.chat(make_request())
        assert caught.value.kind == ProviderErrorKind.SERVER_ERROR
    finally:
        await adapter.aclose()


async def test_api_key_never_leaks(provider: AnthropicProvider) -> None:
    assert API_KEY not in repr(provider)
    assert API_KEY not in str(provider)
    for status in (400, 401, 429, 529):
        with pytest.raises(ProviderError) as caught:
            await provider.chat(make_request(f"claude-fake@status={status};message=bad key {API_KEY} here"))
        error = caught.value
        assert API_KEY not in str(error)
        assert API_KEY not in repr(error)
        assert all(API_KEY not in value for value in error.details.values())
