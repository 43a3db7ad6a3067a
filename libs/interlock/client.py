"""The Python client of the Interlock router.

    client = interlock.Client(target="127.0.0.1:50051", api_key=KEY)
    answer = client.chat(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=16)
    print(answer.text, answer.usage.output_tokens, answer.cost_usd, answer.trace_id)

Failures raise `interlock.InterlockError` subclasses (InvalidArgumentError,
AuthenticationError, RateLimitedError, BudgetExceededError, UpstreamError, ...).

Inside `interlock.Run` scopes (run > agent > step) every call carries the run id, agent
and step of its scope and is traced as a `chat {model}` span of that run.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from types import TracebackType
from typing import Any

import grpc
from opentelemetry import propagate, trace

from interlock.errors import AuthenticationError, from_rpc_error
from interlock.pricing import nanos_to_usd
from interlock.router.v1 import router_pb2, router_pb2_grpc
from interlock.runs import RunScope, current_scope

DEFAULT_TARGET = "127.0.0.1:50051"
_OPTIONS = [("grpc.max_send_message_length", 32 * 1024 * 1024), ("grpc.max_receive_message_length", 32 * 1024 * 1024)]


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens a call was billed for."""

    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call the model asked for; answer it with a `{"role": "tool", "tool_call_id": id, ...}` message."""

    id: str
    name: str
    arguments: str
    """Arguments as JSON text, as the model wrote them."""


@dataclass(frozen=True, slots=True)
class ChatResult:
    """A whole answer, or the last item of a stream."""

    text: str
    usage: Usage
    cost_usd: Decimal
    """Exact cost in US dollars (a whole number of nano-dollars)."""
    cost_nanos: int
    request_id: str
    trace_id: str
    """W3C trace id: find the call's spans with it."""
    model: str
    provider: str
    finish_reason: str
    tool_calls: tuple[ToolCall, ...] = ()
    """Tool calls the model asked for (finish_reason `tool_calls`)."""


@dataclass(frozen=True, slots=True)
class StreamDelta:
    """A piece of answer text."""

    text: str


def _result(r: router_pb2.ChatResponse) -> ChatResult:
    return ChatResult(
        text=r.text,
        usage=Usage(r.usage.input_tokens, r.usage.output_tokens),
        cost_usd=nanos_to_usd(r.cost_nanos),
        cost_nanos=r.cost_nanos,
        request_id=r.request_id,
        trace_id=r.trace_id,
        model=r.model,
        provider=r.provider,
        finish_reason=r.finish_reason,
        tool_calls=tuple(ToolCall(c.id, c.name, c.arguments) for c in r.tool_calls),
    )


def _message(m: Mapping[str, Any]) -> router_pb2.Message:
    calls = []
    for c in m.get("tool_calls") or ():
        if isinstance(c, ToolCall):
            calls.append(router_pb2.ToolCall(id=c.id, name=c.name, arguments=c.arguments))
        else:
            fn = c.get("function", c)  # OpenAI's nesting, or flat {id, name, arguments}
            calls.append(router_pb2.ToolCall(id=c.get("id", ""), name=fn["name"], arguments=fn.get("arguments", "")))
    return router_pb2.Message(
        role=m.get("role", "user"),
        content=m.get("content") or "",
        tool_calls=calls,
        tool_call_id=m.get("tool_call_id", ""),
        name=m.get("name", ""),
    )


def chat_params(
    model: str,
    messages: Iterable[Mapping[str, Any]],
    max_tokens: int,
    temperature: float | None = None,
    request_id: str | None = None,
    run_id: str | None = None,
    agent: str | None = None,
    step: str | None = None,
    tools: Sequence[Mapping[str, Any]] = (),
    tool_choice: str | None = None,
) -> router_pb2.ChatParams:
    """The request the router gets; run id, agent and step default to the current run scope's."""
    scope = current_scope()
    params = router_pb2.ChatParams(
        model=model,
        messages=[_message(m) for m in messages],
        max_tokens=max_tokens,
        request_id=request_id or "",
        run_id=run_id or (scope.run.run_id if scope else ""),
        agent=agent or (scope.agent if scope else ""),
        step=step or (scope.step if scope else ""),
        tools=[
            router_pb2.Tool(
                name=t["name"],
                description=t.get("description", ""),
                parameters_json=json.dumps(t.get("parameters") or {}),
            )
            for t in tools
        ],
        tool_choice=tool_choice or "",
    )
    if temperature is not None:
        params.temperature = temperature
    return params


@contextlib.contextmanager
def _call_span(params: router_pb2.ChatParams) -> Iterator[Any]:
    """A `chat {model}` span of the current run (none outside a run), current while the call runs."""
    scope: RunScope | None = current_scope()
    if scope is None:
        yield None
        return
    with scope.run.tracer.start_as_current_span(
        f"chat {params.model}",
        kind=trace.SpanKind.CLIENT,
        attributes={
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": params.model,
            "gen_ai.request.max_tokens": params.max_tokens,
            "gen_ai.agent.name": params.agent,
            "interlock.run_id": params.run_id,
            "interlock.step": params.step,
        },
    ) as span:
        yield span


def _tag_result(span: Any, result: ChatResult) -> None:
    if span is None:
        return
    span.set_attribute("gen_ai.response.model", result.model)
    span.set_attribute("gen_ai.provider.name", result.provider)
    span.set_attribute("gen_ai.usage.input_tokens", result.usage.input_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", result.usage.output_tokens)
    span.set_attribute("gen_ai.response.finish_reasons", [result.finish_reason])
    span.set_attribute("interlock.cost_nanos", result.cost_nanos)
    span.set_attribute("interlock.request_id", result.request_id)


def _with_trace_context(metadata: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """Carry the caller's current trace (if any) into the router: one trace per agent run."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return metadata + tuple(carrier.items()) if carrier else metadata


def _api_key(api_key: str | None) -> str:
    key = api_key or os.environ.get("INTERLOCK_API_KEY", "")
    if not key:
        raise AuthenticationError("no API key: pass api_key= or set INTERLOCK_API_KEY")
    return key


class Client:
    """Blocking client; safe to share between threads."""

    def __init__(self, target: str = DEFAULT_TARGET, api_key: str | None = None, timeout_s: float = 120.0) -> None:
        self._metadata = (("authorization", f"Bearer {_api_key(api_key)}"),)
        self._timeout = timeout_s
        self._channel = grpc.insecure_channel(target, options=_OPTIONS)
        self._stub = router_pb2_grpc.RouterServiceStub(self._channel)

    def chat(
        self,
        *,
        model: str,
        messages: Iterable[Mapping[str, Any]],
        max_tokens: int,
        temperature: float | None = None,
        request_id: str | None = None,
        run_id: str | None = None,
        agent: str | None = None,
        step: str | None = None,
        tools: Sequence[Mapping[str, Any]] = (),
        tool_choice: str | None = None,
    ) -> ChatResult:
        params = chat_params(
            model, messages, max_tokens, temperature, request_id, run_id, agent, step, tools, tool_choice
        )
        with _call_span(params) as span:
            try:
                response = self._stub.Chat(
                    router_pb2.ChatRequest(params=params),
                    metadata=_with_trace_context(self._metadata),
                    timeout=self._timeout,
                )
            except grpc.RpcError as exc:
                raise from_rpc_error(exc) from None
            result = _result(response)
            _tag_result(span, result)
        return result

    def stream(
        self,
        *,
        model: str,
        messages: Iterable[Mapping[str, Any]],
        max_tokens: int,
        temperature: float | None = None,
        request_id: str | None = None,
        run_id: str | None = None,
        agent: str | None = None,
    ) -> Iterator[StreamDelta | ChatResult]:
        """Yield StreamDelta pieces, then one ChatResult with the whole text, usage and cost."""
        params = chat_params(model, messages, max_tokens, temperature, request_id, run_id, agent)
        call = self._stub.ChatStream(
            router_pb2.ChatStreamRequest(params=params),
            metadata=_with_trace_context(self._metadata),
            timeout=self._timeout,
        )
        try:
            for item in call:
                if item.HasField("done"):
                    yield _result(item.done)
                else:
                    yield StreamDelta(item.delta)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            call.cancel()

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """asyncio client, for agents that run many calls at once."""

    def __init__(self, target: str = DEFAULT_TARGET, api_key: str | None = None, timeout_s: float = 120.0) -> None:
        self._metadata = (("authorization", f"Bearer {_api_key(api_key)}"),)
        self._timeout = timeout_s
        self._channel = grpc.aio.insecure_channel(target, options=_OPTIONS)
        self._stub = router_pb2_grpc.RouterServiceStub(self._channel)

    async def chat(
        self,
        *,
        model: str,
        messages: Iterable[Mapping[str, Any]],
        max_tokens: int,
        temperature: float | None = None,
        request_id: str | None = None,
        run_id: str | None = None,
        agent: str | None = None,
        step: str | None = None,
        tools: Sequence[Mapping[str, Any]] = (),
        tool_choice: str | None = None,
    ) -> ChatResult:
        params = chat_params(
            model, messages, max_tokens, temperature, request_id, run_id, agent, step, tools, tool_choice
        )
        with _call_span(params) as span:
            try:
                response = await self._stub.Chat(
                    router_pb2.ChatRequest(params=params),
                    metadata=_with_trace_context(self._metadata),
                    timeout=self._timeout,
                )
            except grpc.RpcError as exc:
                raise from_rpc_error(exc) from None
            result = _result(response)
            _tag_result(span, result)
        return result

    async def stream(
        self,
        *,
        model: str,
        messages: Iterable[Mapping[str, Any]],
        max_tokens: int,
        temperature: float | None = None,
        request_id: str | None = None,
        run_id: str | None = None,
        agent: str | None = None,
    ) -> AsyncIterator[StreamDelta | ChatResult]:
        params = chat_params(model, messages, max_tokens, temperature, request_id, run_id, agent)
        call: Any = self._stub.ChatStream(
            router_pb2.ChatStreamRequest(params=params),
            metadata=_with_trace_context(self._metadata),
            timeout=self._timeout,
        )
        try:
            async for item in call:
                if item.HasField("done"):
                    yield _result(item.done)
                else:
                    yield StreamDelta(item.delta)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            call.cancel()

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
