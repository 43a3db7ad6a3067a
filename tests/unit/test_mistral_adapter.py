"""MistralProvider against the Mistral fake: answers, SSE streams, tool calls, usage and errors."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from provider_cases import collect, request_factory

from interlock.services.fakeprovider import serve_fake_provider
from interlock.services.router.adapters.mistral import MistralProvider
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

API_KEY = "mst-interlock-test-0123456789abcdef"
MODEL = "mistral-small-latest"
WEATHER = ToolSpec(
    name="get_weather",
    description="Current weather of a city.",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}},
)


make_request = request_factory(MODEL)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def base_url() -> AsyncIterator[str]:
    async with serve_fake_provider() as url:
        yield url.removesuffix("/v1") + "/mistral"


@pytest_asyncio.fixture(loop_scope="module")
async def provider(base_url: str) -> AsyncIterator[MistralProvider]:
    adapter = MistralProvider(base_url=base_url, api_key=API_KEY)
    yield adapter
    await adapter.aclose()


async def test_is_a_chat_provider() -> None:
    adapter: ChatProvider = MistralProvider(api_key=API_KEY)
    assert adapter.name == "mistral"
    await adapter.aclose()


async def test_chat(provider: MistralProvider) -> None:
    response = await provider.chat(make_request())
    assert response.text == "Echo: Name three primary colours, please."
    assert response.finish_reason == "stop"
    assert response.usage == TokenUsage(input_tokens=7, output_tokens=6)


async def test_max_tokens_gives_length(provider: MistralProvider) -> None:
    response = await provider.chat(make_request(max_tokens=2))
    assert (response.text, response.finish_reason, response.usage.output_tokens) == ("Echo: Name", "length", 2)


async def test_stream_joins_to_the_unary_text(provider: MistralProvider) -> None:
    unary = await provider.chat(make_request())
    items = await collect(provider, make_request())
    ends = [i for i in items if isinstance(i, StreamEnd)]
    assert len(ends) == 1 and items[-1] is ends[0]
    assert "".join(i.text for i in items if isinstance(i, StreamDelta)) == unary.text
    assert (ends[0].finish_reason, ends[0].usage) == ("stop", unary.usage)


async def test_tool_call_round_trip(provider: MistralProvider) -> None:
    model = f"{MODEL}@tool_call=get_weather"
    messages = (ChatMessage("user", "Paris"),)
    first = await provider.chat(make_request(model, messages=messages, tools=(WEATHER,)))
    assert first.finish_reason == "tool_calls"
    (call,) = first.tool_calls
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Paris"})
    assert len(call.id) == 9 and call.id.isalnum()  # Mistral's own ids
    follow_up = (
        *messages,
        ChatMessage("assistant", "", tool_calls=first.tool_calls),
        ChatMessage("tool", "sunny", tool_call_id=call.id),
    )
    second = await provider.chat(make_request(model, messages=follow_up, tools=(WEATHER,)))
    assert (second.text, second.finish_reason) == ("Echo: sunny", "stop")


async def test_tool_call_streamed(provider: MistralProvider) -> None:
    request = make_request(f"{MODEL}@tool_call=get_weather", messages=(ChatMessage("user", "Oslo"),), tools=(WEATHER,))
    unary = await provider.chat(request)
    items = await collect(provider, request)
    end = items[-1]
    assert isinstance(end, StreamEnd)
    assert end.finish_reason == "tool_calls"
    assert [(c.name, c.arguments) for c in end.tool_calls] == [(c.name, c.arguments) for c in unary.tool_calls]
    deltas = [i for i in items if isinstance(i, StreamToolCallDelta)]
    assert [(d.index, d.name, d.arguments) for d in deltas] == [(0, c.name, c.arguments) for c in end.tool_calls]
    assert end.tool_calls[0].id and end.tool_calls[0].id == deltas[0].id


async def test_required_tool_is_any(provider: MistralProvider) -> None:
    request = make_request(messages=(ChatMessage("user", "Rome"),), tools=(WEATHER,), tool_choice="required")
    (call,) = (await provider.chat(request)).tool_calls
    assert json.loads(call.arguments) == {"city": "Rome"}


async def test_seed_and_safe_prompt_are_accepted(base_url: str) -> None:
    adapter = MistralProvider(base_url=base_url, api_key=API_KEY, random_seed=7, safe_prompt=True)
    assert (await adapter.chat(make_request())).text == "Echo: Name three primary colours, please."
    await adapter.aclose()


async def test_cached_tokens(provider: MistralProvider) -> None:
    usage = (await provider.chat(make_request(f"{MODEL}@cached_tokens=4"))).usage
    assert usage == TokenUsage(input_tokens=7, output_tokens=6, cached_input_tokens=4)


async def test_tool_choice_none_sends_no_tools(provider: MistralProvider) -> None:
    request = make_request(f"{MODEL}@tool_call=get_weather", tools=(WEATHER,), tool_choice="none")
    assert (await provider.chat(request)).tool_calls == ()


async def test_json_mode(provider: MistralProvider) -> None:
    response = await provider.chat(make_request(json_mode=True, messages=(ChatMessage("user", "hi"),)))
    assert json.loads(response.text) == {"echo": "Echo: hi"}


@pytest.mark.parametrize(
    ("directive", "kind", "status"),
    [
        ("status=404", ProviderErrorKind.BAD_REQUEST, 404),
        ("status=400", ProviderErrorKind.BAD_REQUEST, 400),
        (
            "status=400;message=input exceeds the context length of the model",
            ProviderErrorKind.CONTEXT_LENGTH_EXCEEDED,
            400,
        ),
        ("status=429", ProviderErrorKind.RATE_LIMITED, 429),
        ("status=401", ProviderErrorKind.AUTH, 401),
        ("status=500", ProviderErrorKind.SERVER_ERROR, 500),
        ("status=503", ProviderErrorKind.OVERLOADED, 503),
    ],
)
async def test_error_kinds(provider: MistralProvider, directive: str, kind: str, status: int) -> None:
    request = make_request(f"{MODEL}@{directive}")
    with pytest.raises(ProviderError) as caught:
        await provider.chat(request)
    assert (caught.value.kind, caught.value.status_code) == (kind, status)
    with pytest.raises(ProviderError) as caught:
        await collect(provider, request)
    assert (caught.value.kind, caught.value.status_code) == (kind, status)


async def test_retry_after(provider: MistralProvider) -> None:
    with pytest.raises(ProviderError) as caught:
        await provider.chat(make_request(f"{MODEL}@status=429;retry_after=3"))
    assert caught.value.retry_after_s == 3.0


async def test_timeout(provider: MistralProvider) -> None:
    with pytest.raises(ProviderError) as caught:
        await provider.chat(make_request(f"{MODEL}@delay_ms=2000", timeout_s=0.2))
    assert caught.value.kind == ProviderErrorKind.TIMEOUT
    with pytest.raises(ProviderError) as caught:
        await collect(provider, make_request(f"{MODEL}@chunk_delay_ms=500", timeout_s=0.3))
    assert caught.value.kind == ProviderErrorKind.TIMEOUT


async def test_cut_stream_is_protocol(provider: MistralProvider) -> None:
    with pytest.raises(ProviderError) as caught:
        await collect(provider, make_request(f"{MODEL}@truncate_after=2"))
    assert caught.value.kind == ProviderErrorKind.PROTOCOL


async def test_malformed_json_is_protocol(provider: MistralProvider) -> None:
    with pytest.raises(ProviderError) as caught:
        await provider.chat(make_request(f"{MODEL}@truncate_after=20"))
    assert caught.value.kind == ProviderErrorKind.PROTOCOL


async def test_error_midway_through_a_stream(provider: MistralProvider) -> None:
    received: list[StreamItem] = []
    with pytest.raises(ProviderError) as caught:
        async for item in provider.stream(make_request(f"{MODEL}@error_after=2;status=500")):
            received.append(item)
    assert caught.value.kind == ProviderErrorKind.SERVER_ERROR
    assert [type(i) for i in received] == [StreamDelta, StreamDelta]


async def test_key_never_leaks(provider: MistralProvider) -> None:
    with pytest.raises(ProviderError) as caught:
        await provider.chat(make_request(f"{MODEL}@status=400;message=bad key {API_KEY}"))
    for text in (str(caught.value), repr(caught.value), repr(provider)):
        assert API_KEY not in text


async def test_mistral_finish_reasons(provider: MistralProvider) -> None:
    assert (await provider.chat(make_request(f"{MODEL}@finish=model_length"))).finish_reason == "length"
    end = (await collect(provider, make_request(f"{MODEL}@finish=model_length")))[-1]
    assert isinstance(end, StreamEnd) and end.finish_reason == "length"
    with pytest.raises(ProviderError) as caught:
        await provider.chat(make_request(f"{MODEL}@finish=error"))
    assert caught.value.kind == ProviderErrorKind.SERVER_ERROR
