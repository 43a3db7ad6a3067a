"""The router's HTTP facade: OpenAI's and Anthropic's wire formats in front of the same flow.

Existing code written against the official SDKs points its base_url here and gets the
same auth (the bearer token or x-api-key is an Interlock key), limits, budgets, usage
events and traces as gRPC callers:

- `POST /v1/chat/completions` (unary and SSE streaming, tools), `GET /v1/models`: OpenAI.
- `POST /v1/messages` (unary and SSE streaming, tools): Anthropic Messages.

Errors come back in the shape each SDK parses (OpenAI `{"error": {...}}`, Anthropic
`{"type": "error", "error": {...}}`), with the status code each SDK maps to its typed
exceptions. Optional headers: `x-request-id` (idempotency key), `x-interlock-run-id`,
`x-interlock-agent`, `x-interlock-step` (the caller's span comes as W3C `traceparent`).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import TextMapPropagator

from interlock import _json
from interlock._http import Receive, Scope, Send
from interlock._telemetry import CurrentSpan, current_trace_id
from interlock.errors import AuthenticationError, BudgetExceededError, ErrorCode, InterlockError
from interlock.services.router.adapters.live_routing import RoutingSnapshot
from interlock.services.router.adapters.load_shedding import LoadShedder
from interlock.services.router.domain.chat import ChatCall, new_request_id, validate_chat
from interlock.services.router.domain.flow import Caller, ChatFlow, ChatResult
from interlock.services.router.domain.provider import ChatMessage, StreamToolCallDelta, ToolCall, ToolSpec

MAX_BODY_BYTES = 16 * 1024 * 1024

_tracer = trace.get_tracer("interlock.router.http")

_STATUS = {
    ErrorCode.INVALID_ARGUMENT: 400,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.FAILED_PRECONDITION: 409,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.BUDGET_EXCEEDED: 429,
    ErrorCode.UPSTREAM_FAILED: 502,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.DEADLINE_EXCEEDED: 504,
    ErrorCode.INTERNAL: 500,
}
_OPENAI_TYPE = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    429: "rate_limit_error",
}
_ANTHROPIC_TYPE = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    429: "rate_limit_error",
    502: "api_error",
    503: "overloaded_error",
    504: "api_error",
}
_ANTHROPIC_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}


@functools.lru_cache(maxsize=4)
def _propagator_fields(textmap: TextMapPropagator) -> frozenset[str]:
    """The headers the process's propagators read (W3C `traceparent`, `baggage`, ...)."""
    return frozenset(field.lower() for field in textmap.fields)


class _Problem(Exception):
    """A request the facade refuses before the flow sees it."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def _bad(message: str, param: str) -> _Problem:
    return _Problem(400, message, param)


def _expect(body: Mapping[str, Any], key: str, kind: type | tuple[type, ...], what: str, required: bool = False) -> Any:
    value = body.get(key)
    if value is None:
        if required:
            raise _bad(f"Missing required parameter: '{key}'.", key)
        return None
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise _bad(f"Invalid type for '{key}': expected {what}, but got a boolean.", key)
    if not isinstance(value, kind):
        raise _bad(f"Invalid type for '{key}': expected {what}.", key)
    return value


def _text(content: Any, param: str) -> str:
    """A message content: a string, or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise _bad("Only text content parts are supported.", f"{param}[{i}]")
            out.append(part["text"])
        return "".join(out)
    raise _bad(f"Invalid type for '{param}': expected a string or an array of content parts.", param)


def _json_arguments(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


class HttpFacade:
    """ASGI app; each request reads the live routing snapshot once and is pinned to it."""

    def __init__(
        self,
        snapshot: Callable[[], RoutingSnapshot],
        flow: ChatFlow,
        authenticate: Callable[[str], Awaitable[Caller]],
        shedder: LoadShedder | None = None,
    ) -> None:
        self._snapshot = snapshot
        self._flow = flow
        self._authenticate = authenticate
        self._shedder = shedder or LoadShedder.off()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        anthropic = path == "/v1/messages"
        # The caller's trace context, when its headers carry one (parsed only then).
        fields = _propagator_fields(propagate.get_global_textmap())
        parent = otel_context.Context() if fields.isdisjoint(headers) else propagate.extract(headers)
        with CurrentSpan(
            _tracer,
            f"{method} {path}",
            kind=trace.SpanKind.SERVER,
            attributes=lambda: {"http.request.method": method, "url.path": path},
            context=parent,
        ) as span:
            status = await self._route(method, path, headers, receive, send, anthropic)
            if span.is_recording():
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(trace.StatusCode.ERROR)

    async def _route(
        self, method: str, path: str, headers: dict[str, str], receive: Receive, send: Send, anthropic: bool
    ) -> int:
        try:
            if path == "/v1/models" and method == "GET":
                await self._caller(headers)
                return await _send_json(send, 200, self._models())
            if path in ("/v1/chat/completions", "/v1/messages"):
                if method != "POST":
                    raise _Problem(405, f"Method {method} is not allowed on {path}.")
                with self._shedder.admit():
                    caller = await self._caller(headers)
                    body = await _read_json(receive)
                    if anthropic:
                        return await self._messages(caller, body, headers, send)
                    return await self._chat_completions(caller, body, headers, send)
            if path == "/healthz" and method == "GET":
                return await _send_json(send, 200, {"status": "ok"})
            raise _Problem(404, f"Unknown path {method} {path}.")
        except _Problem as p:
            return await _send_error(send, p.status, p.message, p.param, anthropic)
        except InterlockError as exc:
            return await _send_interlock_error(send, exc, anthropic)

    async def _caller(self, headers: Mapping[str, str]) -> Caller:
        auth = headers.get("authorization", "")
        key = auth[7:].strip() if auth[:7].lower() == "bearer " else headers.get("x-api-key", "").strip()
        if not key:
            raise AuthenticationError("Missing API key: send 'Authorization: Bearer <Interlock key>'.")
        return await self._authenticate(key)

    def _models(self) -> dict[str, Any]:
        config = self._snapshot().config
        return {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": route.provider}
                for name, route in sorted(config.models.items())
            ],
        }

    # OpenAI

    def _openai_call(
        self, snap: RoutingSnapshot, body: Mapping[str, Any], headers: Mapping[str, str]
    ) -> tuple[ChatCall, bool, bool]:
        model = _expect(body, "model", str, "a string", required=True)
        raw_messages = _expect(body, "messages", list, "an array", required=True)
        messages = []
        for i, m in enumerate(raw_messages):
            p = f"messages[{i}]"
            if not isinstance(m, dict):
                raise _bad(f"Invalid type for '{p}': expected an object.", p)
            role = m.get("role")
            if not isinstance(role, str):
                raise _bad(f"Missing required parameter: '{p}.role'.", f"{p}.role")
            calls = []
            for j, c in enumerate(m.get("tool_calls") or []):
                fn = c.get("function") if isinstance(c, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                    raise _bad("Each tool call needs function.name.", f"{p}.tool_calls[{j}]")
                calls.append(ToolCall(str(c.get("id", "")), fn["name"], _json_arguments(fn.get("arguments", "{}"))))
            messages.append(
                ChatMessage(
                    "system" if role == "developer" else role,
                    _text(m.get("content"), f"{p}.content"),
                    tool_calls=tuple(calls),
                    tool_call_id=str(m.get("tool_call_id") or ""),
                    name=str(m.get("name") or ""),
                )
            )
        tools = []
        for i, t in enumerate(_expect(body, "tools", list, "an array") or []):
            fn = t.get("function") if isinstance(t, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise _bad("Each tool needs type 'function' and function.name.", f"tools[{i}]")
            params = fn.get("parameters") or {}
            if not isinstance(params, dict):
                raise _bad("Invalid type: expected a JSON Schema object.", f"tools[{i}].function.parameters")
            tools.append(ToolSpec(fn["name"], str(fn.get("description") or ""), params))
        choice = body.get("tool_choice")
        if isinstance(choice, dict):
            fn = choice.get("function")
            choice = fn.get("name") if isinstance(fn, dict) else None
            if not isinstance(choice, str):
                raise _bad("tool_choice object needs function.name.", "tool_choice")
        elif choice is not None and not isinstance(choice, str):
            raise _bad("Invalid type for 'tool_choice'.", "tool_choice")
        stop = body.get("stop")
        stops = [stop] if isinstance(stop, str) else stop or []
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise _bad("Invalid type for 'stop': expected a string or an array of strings.", "stop")
        max_tokens = _expect(body, "max_completion_tokens", int, "an integer")
        if max_tokens is None:
            max_tokens = _expect(body, "max_tokens", int, "an integer")
        fmt = _expect(body, "response_format", dict, "an object") or {}
        stream = bool(_expect(body, "stream", bool, "a boolean"))
        options = _expect(body, "stream_options", dict, "an object") or {}
        call = validate_chat(
            snap.config,
            model=model,
            messages=messages,
            max_tokens=max_tokens,
            temperature=_expect(body, "temperature", (int, float), "a number"),
            request_id=headers.get("x-request-id") or new_request_id(),
            run_id=headers.get("x-interlock-run-id", ""),
            agent=headers.get("x-interlock-agent", ""),
            step=headers.get("x-interlock-step", ""),
            top_p=_expect(body, "top_p", (int, float), "a number"),
            stop=stops,
            tools=tools,
            tool_choice=choice,
            json_mode=fmt.get("type") == "json_object",
            field_prefix="",
            started_at=time.monotonic(),
        )
        return call, stream, bool(options.get("include_usage"))

    async def _chat_completions(
        self, caller: Caller, body: Mapping[str, Any], headers: Mapping[str, str], send: Send
    ) -> int:
        snap = self._snapshot()
        call, stream, include_usage = self._openai_call(snap, body, headers)
        created = int(time.time())
        completion_id = f"chatcmpl-{call.request_id}"
        if not stream:
            result = await self._flow.chat(caller, call, None, snap.providers)
            message: dict[str, Any] = {"role": "assistant", "content": result.text or None}
            if result.tool_calls:
                message["tool_calls"] = [_openai_tool_call(c) for c in result.tool_calls]
            payload = {
                "id": completion_id,
                "object": "chat.completion",
                "created": created,
                "model": result.model,
                "choices": [{"index": 0, "message": message, "finish_reason": result.finish_reason, "logprobs": None}],
                "usage": _openai_usage(result),
            }
            return await _send_json(send, 200, payload, _result_headers(result))

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": call.route.name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            }

        items = self._flow.stream(caller, call, None, snap.providers)
        # Admission, budget and provider errors before the first item are still plain HTTP errors.
        first = await anext(items, None)
        await _start_sse(send, {"x-request-id": call.request_id})
        await _sse(send, chunk({"role": "assistant", "content": ""}))
        item: Any = first
        try:
            while item is not None:
                if isinstance(item, str):
                    await _sse(send, chunk({"content": item}))
                elif isinstance(item, StreamToolCallDelta):
                    piece: dict[str, Any] = {"index": item.index, "function": {"arguments": item.arguments}}
                    if item.id or item.name:
                        piece.update(id=item.id, type="function")
                        piece["function"]["name"] = item.name
                    await _sse(send, chunk({"tool_calls": [piece]}))
                else:
                    await _sse(send, chunk({}, item.finish_reason))
                    if include_usage:
                        final = chunk({})
                        final["choices"] = []
                        final["usage"] = _openai_usage(item)
                        await _sse(send, final)
                item = await anext(items, None)
        except InterlockError as exc:
            # Headers are gone: the error goes in-band, as OpenAI does, and the stream ends without [DONE].
            await _sse(send, {"error": _openai_error_body(_STATUS[exc.code], exc.message, exc.field)["error"]})
            await _end_sse(send)
            return 200
        await _sse_raw(send, b"data: [DONE]\n\n")
        await _end_sse(send)
        return 200

    # Anthropic

    def _anthropic_call(
        self, snap: RoutingSnapshot, body: Mapping[str, Any], headers: Mapping[str, str]
    ) -> tuple[ChatCall, bool]:
        model = _expect(body, "model", str, "a string", required=True)
        max_tokens = _expect(body, "max_tokens", int, "an integer", required=True)
        raw_messages = _expect(body, "messages", list, "an array", required=True)
        messages: list[ChatMessage] = []
        system = body.get("system")
        if system is not None:
            messages.append(ChatMessage("system", _text(system, "system")))
        for i, m in enumerate(raw_messages):
            p = f"messages.{i}"
            if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
                raise _bad(f"{p}.role: Input should be 'user' or 'assistant'", f"{p}.role")
            content = m.get("content")
            if isinstance(content, str):
                messages.append(ChatMessage(m["role"], content))
                continue
            if not isinstance(content, list):
                raise _bad(f"{p}.content: Input should be a valid string or list", f"{p}.content")
            texts, calls = [], []
            for j, block in enumerate(content):
                kind = block.get("type") if isinstance(block, dict) else None
                if kind == "text":
                    texts.append(str(block.get("text", "")))
                elif kind == "tool_use":
                    calls.append(
                        ToolCall(
                            str(block.get("id", "")),
                            str(block.get("name", "")),
                            _json_arguments(block.get("input", {})),
                        )
                    )
                elif kind == "tool_result":
                    result = block.get("content", "")
                    messages.append(
                        ChatMessage(
                            "tool",
                            _text(result, f"{p}.content.{j}.content"),
                            tool_call_id=str(block.get("tool_use_id", "")),
                        )
                    )
                else:
                    raise _bad(f"{p}.content.{j}: unsupported content block type {kind!r}", f"{p}.content.{j}.type")
            if texts or calls:
                messages.append(ChatMessage(m["role"], "".join(texts), tool_calls=tuple(calls)))
        tools = []
        for i, t in enumerate(_expect(body, "tools", list, "an array") or []):
            if not isinstance(t, dict) or not isinstance(t.get("name"), str):
                raise _bad(f"tools.{i}.name: Field required", f"tools.{i}.name")
            tools.append(ToolSpec(t["name"], str(t.get("description") or ""), t.get("input_schema") or {}))
        choice_raw = _expect(body, "tool_choice", dict, "an object")
        choice = None
        if choice_raw:
            choice = {"auto": "auto", "any": "required", "none": "none"}.get(str(choice_raw.get("type")))
            if choice_raw.get("type") == "tool":
                choice = str(choice_raw.get("name", ""))
        call = validate_chat(
            snap.config,
            model=model,
            messages=messages,
            max_tokens=max_tokens,
            temperature=_expect(body, "temperature", (int, float), "a number"),
            request_id=headers.get("x-request-id") or new_request_id(),
            run_id=headers.get("x-interlock-run-id", ""),
            agent=headers.get("x-interlock-agent", ""),
            step=headers.get("x-interlock-step", ""),
            top_p=_expect(body, "top_p", (int, float), "a number"),
            stop=_expect(body, "stop_sequences", list, "an array") or [],
            tools=tools,
            tool_choice=choice,
            field_prefix="",
            started_at=time.monotonic(),
        )
        return call, bool(_expect(body, "stream", bool, "a boolean"))

    async def _messages(self, caller: Caller, body: Mapping[str, Any], headers: Mapping[str, str], send: Send) -> int:
        snap = self._snapshot()
        call, stream = self._anthropic_call(snap, body, headers)
        message_id = f"msg_{call.request_id}"
        if not stream:
            result = await self._flow.chat(caller, call, None, snap.providers)
            content: list[dict[str, Any]] = []
            if result.text:
                content.append({"type": "text", "text": result.text})
            for c in result.tool_calls:
                content.append({"type": "tool_use", "id": c.id, "name": c.name, "input": _loads_object(c.arguments)})
            payload = {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": result.model,
                "content": content,
                "stop_reason": _ANTHROPIC_STOP.get(result.finish_reason, "end_turn"),
                "stop_sequence": None,
                "usage": _anthropic_usage(result),
            }
            return await _send_json(send, 200, payload, _result_headers(result))

        items = self._flow.stream(caller, call, None, snap.providers)
        first = await anext(items, None)
        await _start_sse(send, {"x-request-id": call.request_id})
        start: dict[str, Any] = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": call.route.name,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        await _event(send, "message_start", {"type": "message_start", "message": start})
        block = -1
        open_kind: str | None = None
        tool_blocks: dict[int, int] = {}
        item: Any = first
        try:
            while item is not None:
                if isinstance(item, str):
                    if open_kind != "text":
                        if open_kind is not None:
                            await _event(send, "content_block_stop", {"type": "content_block_stop", "index": block})
                        block += 1
                        open_kind = "text"
                        await _event(
                            send,
                            "content_block_start",
                            {
                                "type": "content_block_start",
                                "index": block,
                                "content_block": {"type": "text", "text": ""},
                            },
                        )
                    await _event(
                        send,
                        "content_block_delta",
                        {"type": "content_block_delta", "index": block, "delta": {"type": "text_delta", "text": item}},
                    )
                elif isinstance(item, StreamToolCallDelta):
                    if item.index not in tool_blocks:
                        if open_kind is not None:
                            await _event(send, "content_block_stop", {"type": "content_block_stop", "index": block})
                        block += 1
                        open_kind = "tool"
                        tool_blocks[item.index] = block
                        await _event(
                            send,
                            "content_block_start",
                            {
                                "type": "content_block_start",
                                "index": block,
                                "content_block": {"type": "tool_use", "id": item.id, "name": item.name, "input": {}},
                            },
                        )
                    if item.arguments:
                        await _event(
                            send,
                            "content_block_delta",
                            {
                                "type": "content_block_delta",
                                "index": tool_blocks[item.index],
                                "delta": {"type": "input_json_delta", "partial_json": item.arguments},
                            },
                        )
                else:
                    if open_kind is not None:
                        await _event(send, "content_block_stop", {"type": "content_block_stop", "index": block})
                    await _event(
                        send,
                        "message_delta",
                        {
                            "type": "message_delta",
                            "delta": {
                                "stop_reason": _ANTHROPIC_STOP.get(item.finish_reason, "end_turn"),
                                "stop_sequence": None,
                            },
                            "usage": _anthropic_usage(item),
                        },
                    )
                    await _event(send, "message_stop", {"type": "message_stop"})
                item = await anext(items, None)
        except InterlockError as exc:
            status = _STATUS[exc.code]
            await _event(
                send,
                "error",
                {"type": "error", "error": {"type": _ANTHROPIC_TYPE.get(status, "api_error"), "message": exc.message}},
            )
        await _end_sse(send)
        return 200


def _openai_tool_call(c: ToolCall) -> dict[str, Any]:
    return {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}


def _openai_usage(result: ChatResult) -> dict[str, Any]:
    u = result.usage
    return {
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.input_tokens + u.output_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_input_tokens},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
    }


def _anthropic_usage(result: ChatResult) -> dict[str, Any]:
    u = result.usage
    # Anthropic counts cache reads and writes apart from input_tokens.
    return {
        "input_tokens": u.input_tokens - u.cached_input_tokens - u.cache_write_tokens,
        "output_tokens": u.output_tokens,
        "cache_read_input_tokens": u.cached_input_tokens,
        "cache_creation_input_tokens": u.cache_write_tokens,
    }


def _loads_object(text: str) -> Any:
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {"_raw": text}
    return value if isinstance(value, dict) else {"_value": value}


def _result_headers(result: ChatResult) -> dict[str, str]:
    return {
        "x-request-id": result.request_id,
        "x-interlock-cost-nanos": str(result.cost_nanos),
        "x-interlock-trace-id": current_trace_id(),
    }


def _openai_error_body(status: int, message: str, param: str | None, code: str | None = None) -> dict[str, Any]:
    kind = _OPENAI_TYPE.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


async def _send_error(send: Send, status: int, message: str, param: str | None, anthropic: bool) -> int:
    if anthropic:
        body: dict[str, Any] = {
            "type": "error",
            "error": {"type": _ANTHROPIC_TYPE.get(status, "api_error"), "message": message},
        }
    else:
        body = _openai_error_body(status, message, param)
    return await _send_json(send, status, body)


async def _send_interlock_error(send: Send, exc: InterlockError, anthropic: bool) -> int:
    status = _STATUS[exc.code]
    message = exc.message if not exc.field else f"{exc.field}: {exc.message}"
    headers: dict[str, str] = {}
    if exc.retry_after_s is not None:
        headers["retry-after"] = str(max(1, round(exc.retry_after_s)))
    if anthropic:
        body: dict[str, Any] = {
            "type": "error",
            "error": {"type": _ANTHROPIC_TYPE.get(status, "api_error"), "message": message},
        }
    else:
        code = "budget_exceeded" if isinstance(exc, BudgetExceededError) else exc.code.reason
        body = _openai_error_body(status, message, exc.field, code)
    return await _send_json(send, status, body, headers)


async def _read_json(receive: Receive) -> dict[str, Any]:
    chunks, size = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _Problem(413, f"Request body exceeds {MAX_BODY_BYTES} bytes.")
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    try:
        body = _json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError):
        raise _bad("We could not parse the JSON body of your request.", "body") from None
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object.", "body")
    return body


async def _send_json(send: Send, status: int, payload: object, headers: Mapping[str, str] | None = None) -> int:
    body = _json.dumps(payload)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
    return status


async def _start_sse(send: Send, headers: Mapping[str, str]) -> None:
    raw = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
    raw += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": 200, "headers": raw})


async def _sse(send: Send, payload: object) -> None:
    await _sse_raw(send, b"data: " + _json.dumps(payload) + b"\n\n")


async def _event(send: Send, name: str, payload: object) -> None:
    await _sse_raw(send, f"event: {name}\n".encode() + b"data: " + _json.dumps(payload) + b"\n\n")


async def _sse_raw(send: Send, data: bytes) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": True})


async def _end_sse(send: Send) -> None:
    await send({"type": "http.response.body", "body": b"", "more_body": False})
