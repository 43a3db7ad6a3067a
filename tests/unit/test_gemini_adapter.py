"""GeminiProvider against the Gemini fake: answers, streams, tool calls, usage, costs and errors."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from genai_prices import Usage, calc_price
from provider_cases import collect, request_factory

from interlock.pricing import ModelPricing, usd_to_nanos
from interlock.services.fakeprovider import serve_fake_provider
from interlock.services.router.adapters.gemini import GeminiProvider
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
    ToolSpec,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

API_KEY = "AIza-interlock-test-0123456789abcdef"
MODEL = "gemini-2.5-flash"
WEATHER = ToolSpec(
    name="get_weather",
    description="Current weather of a city.",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "additionalProperties": False},
)


make_request = request_factory(MODEL)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def base_url() -> AsyncIterator[str]:
    async with serve_fake_provider() as url:
        yield url.removesuffix("/v1") + "/gemini"


@pytest_asyncio.fixture(loop_scope="module")
async def provider(base_url: str) -> AsyncIterator[GeminiProvider]:
    adapter = GeminiProvider(base_url=base_url, api_key=API_KEY)
    yield adapter
    await adapter.aclose()


async def test_is_a_chat_provider() -> None:
    adapter: ChatProvider = GeminiProvider(api_key=API_KEY)
    assert adapter.name == "gemini"
    await adapter.aclose()


async def test_chat(provider: GeminiProvider) -> None:
    response = await provider.chat(make_request())
    assert response.text == "Echo: Name three primary colours, please."
    assert response.finish_reason == "stop"
    # systemInstruction is counted: 2 + 5 words in, "Echo:" + 5 out.
    assert response.usage == TokenUsage(input_tokens=7, output_tokens=6)
    assert response.tool_calls == ()


async def test_max_tokens_gives_length(provider: GeminiProvider) -> None:
    response = await provider.chat(make_request(max_tokens=2))
    assert (response.text, response.finish_reason, response.usage.output_tokens) == ("Echo: Name", "length", 2)


async def test_stream_joins_to_the_unary_text(provider: GeminiProvider) -> None:
    unary = await provider.chat(make_request())
    items = await collect(provider, make_request())
    ends = [i for i in items if isinstance(i, StreamEnd)]
    assert len(ends) == 1 and items[-1] is ends[0]
    assert "".join(i.text for i in items if isinstance(i, StreamDelta)) == unary.text
    assert ends[0].finish_reason == "stop"
    assert ends[0].usage == unary.usage


async def test_cached_and_thinking_tokens_normalised(provider: GeminiProvider) -> None:
    response = await provider.chat(make_request(f"{MODEL}@cached_tokens=3;reasoning_tokens=10"))
    # output = candidates (6) + thoughts (10); input already includes the cached part.
    assert response.usage == TokenUsage(input_tokens=7, output_tokens=16, cached_input_tokens=3, reasoning_tokens=10)
    items = await collect(provider, make_request(f"{MODEL}@cached_tokens=3;reasoning_tokens=10"))
    end = items[-1]
    assert isinstance(end, StreamEnd) and end.usage == response.usage


async def test_cost_matches_genai_prices() -> None:
    usage = TokenUsage(input_tokens=12_000, output_tokens=3_000, cached_input_tokens=4_000, reasoning_tokens=1_000)
    pricing = ModelPricing.resolve("google", MODEL)
    ours = pricing.cost_nanos(usage.input_tokens, usage.output_tokens, cached_input_tokens=usage.cached_input_tokens)
    theirs = calc_price(
        Usage(input_tokens=12_000, output_tokens=3_000, cache_read_tokens=4_000), model_ref=MODEL, provider_id="google"
    )
    assert ours == usd_to_nanos(theirs.total_price)
    assert ours > 0


async def test_cost_of_a_real_adapter_answer(provider: GeminiProvider) -> None:
    usage = (await provider.chat(make_request(f"{MODEL}@cached_tokens=2;reasoning_tokens=4"))).usage
    ours = ModelPricing.resolve("google", "gemini-2.0-flash").cost_nanos(
        usage.input_tokens, usage.output_tokens, cached_input_tokens=usage.cached_input_tokens
    )
    theirs = calc_price(
        Usage(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens, cache_read_tokens=2),
        model_ref="gemini-2.0-flash",
        provider_id="google",
    )
    assert ours == usd_to_nanos(theirs.total_price)


async def test_tool_call_round_trip(provider: GeminiProvider) -> None:
    messages = (ChatMessage("user", "Paris"),)
    first = await provider.chat(make_request(messages=messages, tools=(WEATHER,), tool_choice="required"))
    assert first.finish_reason == "tool_calls"
    (call,) = first.tool_calls
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Paris"})
    assert call.id.startswith("gemini-call-")
    again = await provider.chat(make_request(messages=messages, tools=(WEATHER,), tool_choice="get_weather"))
    assert again.tool_calls == first.tool_calls  # made-up ids are stable
    follow_up = (
        *messages,
        ChatMessage("assistant", "", tool_calls=first.tool_calls),
        ChatMessage("tool", '{"weather": "sunny"}', tool_call_id=call.id),
    )
    second = await provider.chat(make_request(messages=follow_up, tools=(WEATHER,)))
    assert second.text == 'Echo: {"weather": "sunny"}'
    assert second.finish_reason == "stop"


async def test_tool_call_streamed(provider: GeminiProvider) -> None:
    request = make_request(f"{MODEL}@tool_call=get_weather", messages=(ChatMessage("user", "Oslo"),), tools=(WEATHER,))
    unary = await provider.chat(request)
    items = await collect(provider, request)
    deltas = [i for i in items if isinstance(i, StreamToolCallDelta)]
    end = items[-1]
    assert isinstance(end, StreamEnd)
    assert end.finish_reason == "tool_calls"
    assert end.tool_calls == unary.tool_calls
    assert [(d.index, d.id, d.name, d.arguments) for d in deltas] == [
        (0, c.id, c.name, c.arguments) for c in unary.tool_calls
    ]


async def test_tool_choice_none_answers_text(provider: GeminiProvider) -> None:
    request = make_request(f"{MODEL}@tool_call=get_weather", tools=(WEATHER,), tool_choice="none")
    response = await provider.chat(request)
    assert response.tool_calls == () and response.finish_reason == "stop"


async def test_json_mode(provider: GeminiProvider) -> None:
    response = await provider.chat(make_request(json_mode=True, messages=(ChatMessage("user", "hi"),)))
    assert json.loads(response.text) == {"echo": "Echo: hi"}


async def test_safety_finish_is_content_filter(provider: GeminiProvider) -> None:
    assert (await provider.chat(make_request(f"{MODEL}@finish=SAFETY"))).finish_reason == "content_filter"
    end = (await collect(provider, make_request(f"{MODEL}@finish=RECITATION")))[-1]
    assert isinstance(end, StreamEnd) and end.finish_reason == "content_filter"


@pytest.mark.parametrize(
    ("directive", "kind", "status"),
    [
        ("status=429", ProviderErrorKind.RATE_LIMITED, 429),
        ("status=503", ProviderErrorKind.OVERLOADED, 503),
        ("status=500", ProviderErrorKind.SERVER_ERROR, 500),
        ("status=504", ProviderErrorKind.TIMEOUT, 504),
        ("status=401", ProviderErrorKind.AUTH, 401),
        ("status=403", ProviderErrorKind.AUTH, 403),
        ("status=404", ProviderErrorKind.BAD_REQUEST, 404),
        ("status=400", ProviderErrorKind.BAD_REQUEST, 400),
        (
            "status=400;message=The input token count (1200000) exceeds the maximum number of tokens allowed",
            ProviderErrorKind.CONTEXT_LENGTH_EXCEEDED,
            400,
        ),
    ],
)
async def test_error_kinds(provider: GeminiProvider, directive: str, kind: str, status: int) -> None:
    request = make_request(f"{MODEL}@{directive}")
    with pytest.raises(ProviderError) as caught:
        await provider.chat(request)
    assert (caught.value.kind, caught.value.status_code) == (kind, status)
    with pytest.raises(ProviderError) as caught:
        await collect(provider, request)
    assert (caught.value.kind, caught.value.status_code) == (kind, status)


async def test_retry_after_from_retry_info(provider: GeminiProvider) -> None:
    with pytest.raises(ProviderError) as caught:
        await provider.chat(make_request(f"{MODEL}@status=429;retry_after=2.5"))
    assert caught.value.retry_after_s == 2.5
    assert caught.value.details["status"] == "RESOURCE_EXHAUSTED"


async def test_missing_key_is_auth(base_url: str) -> None:
    adapter = GeminiProvider(base_url=base_url, api_key="")
    with pytest.raises(ProviderError) as caught:
        await adapter.chat(make_request())
    assert caught.value.kind == ProviderErrorKind.AUTH
    await adapter.aclose()


async def test_timeout(provider: GeminiProvider) -> None:
    with pytest.raises(ProviderError) as caught:
        await provider.chat(make_request(f"{MODEL}@delay_ms=2000", timeout_s=0.2))
    assert caught.value.kind == ProviderErrorKind.TIMEOUT
    with pytest.raises(ProviderError) as caught:
        await collect(provider, make_request(f"{MODEL}@chunk_delay_ms=500", timeout_s=0.3))
    assert caught.value.kind == ProviderErrorKind.TIMEOUT


async def test_cut_stream_is_protocol(provider: GeminiProvider) -> None:
    with pytest.raises(ProviderError) as caught:
        await collect(provider, make_request(f"{MODEL}@truncate_after=2"))
    assert caught.value.kind == ProviderErrorKind.PROTOCOL


async def test_malformed_json_is_protocol(provider: GeminiProvider) -> None:
    with pytest.raises(ProviderError) as caught:
        await provider.chat(make_request(f"{MODEL}@truncate_after=20"))
    assert caught.value.kind == ProviderErrorKind.PROTOCOL


async def test_error_midway_through_a_stream(provider: GeminiProvider) -> None:
    received: list[StreamItem] = []
    with pytest.raises(ProviderError) as caught:
        async for item in provider.stream(make_request(f"{MODEL}@error_after=2;status=503")):
            received.append(item)
    assert caught.value.kind == ProviderErrorKind.OVERLOADED
    assert [type(i) for i in received] == [StreamDelta, StreamDelta]


async def test_key_never_leaks(provider: GeminiProvider) -> None:
    with pytest.raises(ProviderError) as caught:
        await provider.chat(make_request(f"{MODEL}@status=400;message=API key not valid: {API_KEY}"))
    for text in (str(caught.value), repr(caught.value), repr(provider)):
        assert API_KEY not in text
