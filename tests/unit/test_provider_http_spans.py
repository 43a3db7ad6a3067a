"""The router's provider requests carry the attempt's W3C trace context, and a sampled attempt
gets a CLIENT span `POST` per request, made by the adapter (no aiohttp instrumentation)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Sampler
from opentelemetry.trace import SpanKind, StatusCode
from provider_cases import collect, request_factory

from interlock.services.router.adapters import _http_provider
from interlock.services.router.adapters.openai import OpenAIProvider
from interlock.services.router.domain.provider import ProviderError, StreamEnd

make_request = request_factory("gpt-4o-mini")
ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 0,
    "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}
CHUNKS = [
    {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}],
    },
    {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    },
]


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """An OpenAI-shaped upstream that keeps every request's headers; model "fail" gets a 500."""
    seen: list[dict[str, str]] = []

    async def chat(request: web.Request) -> web.StreamResponse:
        seen.append({k.lower(): v for k, v in request.headers.items()})
        body: dict[str, Any] = await request.json()
        if body["model"] == "fail":
            return web.json_response({"error": {"message": "boom", "type": "server_error"}}, status=500)
        if not body.get("stream"):
            return web.json_response(ANSWER)
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for chunk in CHUNKS:
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/v1", seen
    finally:
        await runner.cleanup()


def _tracing(
    monkeypatch: pytest.MonkeyPatch, sampler: Sampler
) -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "router"}), sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(_http_provider, "_tracer", provider.get_tracer("test"))
    yield provider, exporter
    provider.shutdown()


@pytest.fixture
def sampled(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    yield from _tracing(monkeypatch, ALWAYS_ON)


@pytest.fixture
def unsampled(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    yield from _tracing(monkeypatch, ALWAYS_OFF)


@pytest.fixture
async def adapter(upstream: tuple[str, list[dict[str, str]]]) -> AsyncIterator[OpenAIProvider]:
    provider = OpenAIProvider(name="openai", base_url=upstream[0], api_key="sk-test-0123456789")
    yield provider
    await provider.aclose()


def _parent(headers: dict[str, str]) -> tuple[int, int, bool]:
    """Trace id, parent span id and the sampled flag of a request's `traceparent`."""
    version, trace_id, span_id, flags = headers["traceparent"].split("-")
    assert version == "00"
    return int(trace_id, 16), int(span_id, 16), bool(int(flags, 16) & 1)


def _posts(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == "POST"]


async def test_sampled_attempt_gets_a_client_span_whose_context_reaches_the_provider(
    upstream: tuple[str, list[dict[str, str]]],
    sampled: tuple[TracerProvider, InMemorySpanExporter],
    adapter: OpenAIProvider,
) -> None:
    url, seen = upstream
    provider, exporter = sampled
    with provider.get_tracer("t").start_as_current_span("chat gpt-4o-mini") as attempt:
        await adapter.chat(make_request())
        items = await collect(adapter, make_request())
    assert isinstance(items[-1], StreamEnd)
    posts = _posts(exporter)
    assert len(posts) == 2
    for post, headers in zip(posts, seen, strict=True):
        assert post.kind == SpanKind.CLIENT
        assert post.parent is not None and post.parent.span_id == attempt.get_span_context().span_id
        assert post.attributes is not None
        assert post.attributes["http.request.method"] == "POST"
        assert post.attributes["http.response.status_code"] == 200
        assert post.attributes["url.full"] == f"{url}/chat/completions"
        assert post.attributes["server.address"] == "127.0.0.1"
        # The provider sees this request's span as its parent, sampled.
        assert _parent(headers) == (post.context.trace_id, post.context.span_id, True)
        assert headers["x-request-id"]
    assert posts[0].status.status_code == StatusCode.UNSET


async def test_error_status_marks_the_span(
    sampled: tuple[TracerProvider, InMemorySpanExporter], adapter: OpenAIProvider
) -> None:
    provider, exporter = sampled
    with provider.get_tracer("t").start_as_current_span("chat fail"), pytest.raises(ProviderError):
        await adapter.chat(make_request(upstream_model="fail"))
    (post,) = _posts(exporter)
    assert post.attributes is not None and post.attributes["http.response.status_code"] == 500
    assert post.status.status_code == StatusCode.ERROR


async def test_unsampled_attempt_sends_its_context_without_a_span(
    upstream: tuple[str, list[dict[str, str]]],
    unsampled: tuple[TracerProvider, InMemorySpanExporter],
    adapter: OpenAIProvider,
) -> None:
    _, seen = upstream
    provider, exporter = unsampled
    with provider.get_tracer("t").start_as_current_span("chat gpt-4o-mini") as attempt:
        await adapter.chat(make_request())
    assert exporter.get_finished_spans() == ()
    ctx = attempt.get_span_context()
    assert _parent(seen[0]) == (ctx.trace_id, ctx.span_id, False)
