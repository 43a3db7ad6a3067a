"""The Gemini fake speaks the Gemini API well enough for Google's official `google-genai` SDK."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from google import genai
from google.genai import errors, types

from interlock.services.fakeprovider import serve_fake_provider

pytestmark = pytest.mark.asyncio(loop_scope="module")

MODEL = "gemini-2.5-flash"
WEATHER = types.Tool(
    function_declarations=[
        types.FunctionDeclaration(
            name="get_weather",
            description="Current weather of a city.",
            parameters_json_schema={"type": "object", "properties": {"city": {"type": "string"}}},
        )
    ]
)
NO_AUTO_CALLS = types.AutomaticFunctionCallingConfig(disable=True)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def root_url() -> AsyncIterator[str]:
    async with serve_fake_provider() as url:
        yield url.removesuffix("/v1")


@pytest_asyncio.fixture(loop_scope="module")
async def client(root_url: str) -> AsyncIterator[genai.Client]:
    # base_url is the mount; api_version the path segment after it (the SDK's default is v1).
    sdk = genai.Client(api_key="x", http_options=types.HttpOptions(base_url=f"{root_url}/gemini", api_version="v1beta"))
    yield sdk
    await sdk.aio.aclose()


async def test_generate_content(client: genai.Client) -> None:
    response = await client.aio.models.generate_content(
        model=MODEL,
        contents="What is the capital of France?",
        config=types.GenerateContentConfig(system_instruction="Be brief.", max_output_tokens=64, temperature=0.2),
    )
    assert response.text == "Echo: What is the capital of France?"
    assert response.candidates is not None
    assert response.candidates[0].finish_reason == types.FinishReason.STOP
    usage = response.usage_metadata
    assert usage is not None
    assert (usage.prompt_token_count, usage.candidates_token_count, usage.total_token_count) == (8, 7, 15)
    assert response.model_version == MODEL


async def test_max_tokens_cuts_the_answer(client: genai.Client) -> None:
    response = await client.aio.models.generate_content(
        model=MODEL, contents="one two three four", config=types.GenerateContentConfig(max_output_tokens=2)
    )
    assert response.text == "Echo: one"
    assert response.candidates is not None
    assert response.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS


async def test_stream(client: genai.Client) -> None:
    chunks = [
        chunk
        async for chunk in await client.aio.models.generate_content_stream(model=MODEL, contents="Stream these words")
    ]
    assert "".join(c.text or "" for c in chunks) == "Echo: Stream these words"
    last = chunks[-1]
    assert last.candidates is not None
    assert last.candidates[0].finish_reason == types.FinishReason.STOP
    assert last.usage_metadata is not None
    assert last.usage_metadata.candidates_token_count == 4


async def test_cached_and_thought_tokens(client: genai.Client) -> None:
    response = await client.aio.models.generate_content(
        model=f"{MODEL}@cached_tokens=2;reasoning_tokens=5", contents="Think about this"
    )
    usage = response.usage_metadata
    assert usage is not None
    assert usage.prompt_token_count == 3
    assert usage.cached_content_token_count == 2
    assert usage.thoughts_token_count == 5
    assert usage.candidates_token_count == 4
    assert usage.total_token_count == 3 + 4 + 5


async def test_function_calling_round_trip(client: genai.Client) -> None:
    config = types.GenerateContentConfig(
        tools=[WEATHER],
        tool_config=types.ToolConfig(
            function_calling_config=types.FunctionCallingConfig(mode=types.FunctionCallingConfigMode.ANY)
        ),
        automatic_function_calling=NO_AUTO_CALLS,
    )
    first = await client.aio.models.generate_content(model=MODEL, contents="Paris", config=config)
    assert first.function_calls is not None
    call = first.function_calls[0]
    assert (call.name, call.args) == ("get_weather", {"city": "Paris"})
    assert first.candidates is not None and first.candidates[0].content is not None
    history = [
        types.Content(role="user", parts=[types.Part(text="Paris")]),
        first.candidates[0].content,
        types.Content(
            role="user",
            parts=[types.Part.from_function_response(name="get_weather", response={"weather": "sunny"})],
        ),
    ]
    second = await client.aio.models.generate_content(model=MODEL, contents=history, config=config)
    assert second.text == 'Echo: {"weather": "sunny"}'


async def test_function_call_streamed(client: genai.Client) -> None:
    config = types.GenerateContentConfig(tools=[WEATHER], automatic_function_calling=NO_AUTO_CALLS)
    chunks = [
        c
        async for c in await client.aio.models.generate_content_stream(
            model=f"{MODEL}@tool_call=get_weather", contents="Oslo", config=config
        )
    ]
    calls = [call for c in chunks for call in c.function_calls or ()]
    assert [(c.name, c.args) for c in calls] == [("get_weather", {"city": "Oslo"})]


async def test_json_mode(client: genai.Client) -> None:
    response = await client.aio.models.generate_content(
        model=MODEL, contents="hi", config=types.GenerateContentConfig(response_mime_type="application/json")
    )
    assert response.parsed is None  # no schema given: the SDK leaves parsing to the caller
    assert response.text == '{"echo": "Echo: hi"}'


@pytest.mark.parametrize(
    ("status", "rpc_status", "error_class"),
    [
        (400, "INVALID_ARGUMENT", errors.ClientError),
        (403, "PERMISSION_DENIED", errors.ClientError),
        (404, "NOT_FOUND", errors.ClientError),
        (429, "RESOURCE_EXHAUSTED", errors.ClientError),
        (500, "INTERNAL", errors.ServerError),
        (503, "UNAVAILABLE", errors.ServerError),
    ],
)
async def test_errors(client: genai.Client, status: int, rpc_status: str, error_class: type[errors.APIError]) -> None:
    with pytest.raises(error_class) as caught:
        await client.aio.models.generate_content(model=f"{MODEL}@status={status}", contents="hi")
    assert (caught.value.code, caught.value.status) == (status, rpc_status)


async def test_rate_limit_carries_retry_info(client: genai.Client) -> None:
    with pytest.raises(errors.ClientError) as caught:
        await client.aio.models.generate_content(
            model=MODEL,
            contents="hi",
            config=types.GenerateContentConfig(
                http_options=types.HttpOptions(headers={"x-fake-fault": "status=429;retry_after=7"})
            ),
        )
    details = caught.value.details["error"]["details"]
    assert {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"} in details


async def test_missing_key_is_refused(root_url: str) -> None:
    # The SDK refuses to run without a key, so ask over plain HTTP.
    async with httpx.AsyncClient() as http:
        answer = await http.post(f"{root_url}/gemini/v1beta/models/{MODEL}:generateContent", json={"contents": []})
    assert answer.status_code == 403
    assert answer.json()["error"]["status"] == "PERMISSION_DENIED"


async def test_stream_error_midway(client: genai.Client) -> None:
    with pytest.raises(errors.APIError) as caught:
        async for _ in await client.aio.models.generate_content_stream(
            model=f"{MODEL}@error_after=1;status=503", contents="one two three"
        ):
            pass
    assert caught.value.code == 503
