"""Fake of Anthropic's Messages API, mounted at `/anthropic` (`POST /anthropic/v1/messages`).

Close enough for the official `anthropic` SDK with `base_url="http://host:port/anthropic"`:
- Needs `x-api-key` or `Authorization: Bearer` (else 401 authentication_error) and `anthropic-version` (else 400).
- Validates as Anthropic does: `model`, `max_tokens` (>= 1) and non-empty `messages` are
  required; roles are user/assistant; content is a string or blocks (text, tool_use,
  tool_result, image); `system` is a string or text blocks; temperature and top_p in 0..1;
  `tools` need `name` and `input_schema`; `tool_choice` type auto/any/tool/none.
- Answers with the shared echo (`interlock.services.fakeprovider.echo`): text, or a
  `tool_use` block when the directive `tool_call=<name>` is set or `tool_choice` forces a tool.
  Unary: one `message`; streaming (`"stream": true`): message_start, content_block_start,
  ping, one content_block_delta per token (text_delta / input_json_delta), content_block_stop,
  message_delta (stop_reason, output usage), message_stop; each as `event:` + `data:`.
- Usage: `input_tokens` is the echo's prompt tokens (the uncached part, as Anthropic counts);
  directives `cached_tokens=N` -> `cache_read_input_tokens`, `cache_write_tokens=N` ->
  `cache_creation_input_tokens`, `reasoning_tokens=N` are added to `output_tokens`
  (thinking is billed as output). `finish=<stop_reason>` overrides the stop reason (e.g.
  `refusal`).
- Errors: `{"type": "error", "error": {"type", "message"}, "request_id"}`; `status=` maps to
  Anthropic's types (400 invalid_request_error, 401 authentication_error, 403 permission_error,
  404 not_found_error, 413 request_too_large, 429 rate_limit_error with `retry-after` and
  `anthropic-ratelimit-*` headers, 500 api_error, 529 overloaded_error);
  `code=context_length_exceeded` is a 400 "prompt is too long: ...". `error_after=N` sends an
  `event: error` (overloaded_error) mid-stream; `truncate_after=N` cuts the stream (no
  message_stop) or, unary, the JSON body.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from .app import FAULT_HEADER, Fault, _read_body, _respond, _sleep_unless_disconnected
from .echo import EchoAnswer, EchoTool, Receive, Scope, Send, Turn, dumps, echo_answer, fault_for, send_stream

_STATUS_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
_STATUS_MESSAGES = {
    429: "Number of request tokens has exceeded your per-minute rate limit (injected fault).",
    529: "Overloaded",
    500: "Internal server error (injected fault).",
}


class _Invalid(Exception):
    """A request Anthropic would answer with 400 invalid_request_error."""


def error_body(type_: str, message: str, request_id: str) -> bytes:
    return dumps({"type": "error", "error": {"type": type_, "message": message}, "request_id": request_id})


def _text_of(content: object, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for i, block in enumerate(content):
            if not isinstance(block, dict) or not isinstance(block.get("type"), str):
                raise _Invalid(f"{where}.{i}: Input should be a valid content block")
            if block["type"] == "text":
                if not isinstance(block.get("text"), str):
                    raise _Invalid(f"{where}.{i}.text: Field required")
                texts.append(block["text"])
        return " ".join(texts)
    raise _Invalid(f"{where}: Input should be a valid string or list of content blocks")


def _turns(body: dict[str, Any]) -> list[Turn]:
    turns: list[Turn] = []
    system = body.get("system")
    if system is not None:
        turns.append(Turn("system", _text_of(system, "system")))
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise _Invalid("messages: Field required")
    if not messages:
        raise _Invalid("messages: at least one message is required")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise _Invalid(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        role, content = message["role"], message.get("content")
        if content is None:
            raise _Invalid(f"messages.{i}.content: Field required")
        if isinstance(content, list):
            for j, block in enumerate(content):
                kind = block.get("type") if isinstance(block, dict) else None
                if kind == "tool_result":
                    if not isinstance(block.get("tool_use_id"), str):
                        raise _Invalid(f"messages.{i}.content.{j}.tool_use_id: Field required")
                    result = block.get("content", "")
                    turns.append(Turn("tool", _text_of(result, f"messages.{i}.content.{j}.content")))
                elif kind == "tool_use":
                    if (
                        role != "assistant"
                        or not isinstance(block.get("id"), str)
                        or not isinstance(block.get("name"), str)
                    ):
                        raise _Invalid(f"messages.{i}.content.{j}: tool_use needs id and name in an assistant turn")
                    turns.append(Turn("assistant", json.dumps(block.get("input", {}))))
        text = _text_of(content, f"messages.{i}.content")
        if text or not isinstance(content, list):
            turns.append(Turn(role, text))
    return turns


def _tools(body: dict[str, Any]) -> tuple[list[EchoTool], str | None]:
    tools: list[EchoTool] = []
    for i, tool in enumerate(body.get("tools") or ()):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise _Invalid(f"tools.{i}.name: Field required")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise _Invalid(f"tools.{i}.input_schema: Field required")
        properties = schema.get("properties")
        first = next(iter(properties)) if isinstance(properties, dict) and properties else "input"
        tools.append(EchoTool(tool["name"], str(first)))
    choice = body.get("tool_choice")
    forced: str | None = None
    if choice is not None:
        type_ = choice.get("type") if isinstance(choice, dict) else None
        if type_ not in ("auto", "any", "tool", "none"):
            raise _Invalid("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")
        if type_ == "tool":
            forced = str(choice.get("name"))
            if forced not in {t.name for t in tools}:
                raise _Invalid(f"tool_choice.name: tool {forced!r} not found in tools")
        elif type_ == "any":
            forced = "*"
    return tools, forced


def _validate(body: object) -> tuple[dict[str, Any], int]:
    if not isinstance(body, dict):
        raise _Invalid("body: Input should be an object")
    if not isinstance(body.get("model"), str):
        raise _Invalid("model: Field required")
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise _Invalid("max_tokens: Field required")
    if max_tokens < 1:
        raise _Invalid("max_tokens: Input should be greater than or equal to 1")
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1
        ):
            raise _Invalid(f"{name}: Input should be a number between 0 and 1")
    stops = body.get("stop_sequences")
    if stops is not None and not (isinstance(stops, list) and all(isinstance(s, str) for s in stops)):
        raise _Invalid("stop_sequences: Input should be a valid list of strings")
    return body, max_tokens


class AnthropicFakeApp:
    """ASGI app of the fake Anthropic Messages API (paths as seen below the mount prefix)."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request_id = f"req_fake{next(self._ids):08d}"
        headers = [(b"request-id", request_id.encode())]
        api_key = version = fault_spec = b""
        for name, value in scope["headers"]:
            if name == b"x-api-key":
                api_key = value
            elif name == b"authorization" and value[:7].lower() == b"bearer " and not api_key:
                api_key = value[7:]  # the `anthropic` SDK 2.x sends its api_key as a Bearer token
            elif name == b"anthropic-version":
                version = value
            elif name == FAULT_HEADER:
                fault_spec = value

        async def fail(status: int, type_: str, message: str) -> None:
            await _respond(send, status, error_body(type_, message, request_id), headers)

        if scope["path"] != "/v1/messages":
            await fail(404, "not_found_error", f"Not found: {scope['path']}")
            return
        if scope["method"] != "POST":
            await fail(405, "invalid_request_error", f"Method {scope['method']} not allowed")
            return
        if not api_key.strip():
            await fail(401, "authentication_error", "x-api-key header is required")
            return
        if not version:
            await fail(400, "invalid_request_error", "anthropic-version: header is required")
            return
        try:
            body: object = json.loads(await _read_body(receive))
        except ValueError:
            await fail(400, "invalid_request_error", "There was an error parsing the body as JSON.")
            return
        model = body.get("model") if isinstance(body, dict) else None
        try:
            fault = fault_for(model if isinstance(model, str) else "", fault_spec)
        except ValueError as exc:
            await fail(400, "invalid_request_error", f"Invalid fault: {exc}")
            return
        if fault.delay_ms and not await _sleep_unless_disconnected(fault.delay_ms / 1000, receive):
            return
        if fault.status is not None or fault.code is not None:
            await self._fault_status(send, fault, headers, request_id)
            return
        try:
            request, max_tokens = _validate(body)
            turns = _turns(request)
            tools, forced = _tools(request)
        except _Invalid as exc:
            await fail(400, "invalid_request_error", str(exc))
            return
        answer = echo_answer(turns, max_tokens, fault, tools=tools, forced_tool=forced)
        message_id = f"msg_fake{next(self._ids):08d}"
        model_name = str(request["model"]).partition("@")[0]
        stop_reason = fault.finish or (
            "tool_use" if answer.tool_name else ("max_tokens" if answer.truncated else "end_turn")
        )
        usage = {
            "input_tokens": answer.prompt_tokens,
            "cache_creation_input_tokens": fault.cache_write_tokens,
            "cache_read_input_tokens": fault.cached_tokens,
            "output_tokens": answer.output_tokens + fault.reasoning_tokens,
        }
        tool_id = f"toolu_fake{next(self._ids):08d}"
        if request.get("stream"):
            await self._stream(
                send, receive, headers, fault, answer, message_id, model_name, stop_reason, usage, tool_id
            )
            return
        if answer.tool_name is not None:
            content: list[dict[str, Any]] = [
                {"type": "tool_use", "id": tool_id, "name": answer.tool_name, "input": answer.tool_arguments}
            ]
        else:
            content = [{"type": "text", "text": "".join(answer.pieces)}]
        payload = dumps(
            {
                "id": message_id,
                "type": "message",
                "role": "assistant",
                "model": model_name,
                "content": content,
                "stop_reason": stop_reason,
                "stop_sequence": None,
                "usage": usage,
            }
        )
        if fault.truncate_after is not None:
            payload = payload[: fault.truncate_after]  # malformed JSON on purpose
        await _respond(send, 200, payload, headers)

    async def _fault_status(
        self, send: Send, fault: Fault, headers: list[tuple[bytes, bytes]], request_id: str
    ) -> None:
        if fault.code == "context_length_exceeded":
            status, type_ = fault.status or 400, "invalid_request_error"
            message = "prompt is too long: 210000 tokens > 200000 maximum"
        else:
            status = fault.status or 400
            type_ = _STATUS_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
            message = _STATUS_MESSAGES.get(status, f"Injected fault {status}.")
        if status == 429:
            headers.append((b"retry-after", (fault.retry_after or "1").encode()))
            headers.extend(
                [
                    (b"anthropic-ratelimit-requests-limit", b"4000"),
                    (b"anthropic-ratelimit-requests-remaining", b"0"),
                    (b"anthropic-ratelimit-requests-reset", b"2030-01-01T00:00:01Z"),
                ]
            )
        elif fault.retry_after is not None:
            headers.append((b"retry-after", fault.retry_after.encode()))
        await _respond(send, status, error_body(type_, fault.message or message, request_id), headers)

    async def _stream(
        self,
        send: Send,
        receive: Receive,
        headers: list[tuple[bytes, bytes]],
        fault: Fault,
        answer: EchoAnswer,
        message_id: str,
        model: str,
        stop_reason: str,
        usage: dict[str, int],
        tool_id: str,
    ) -> None:
        def event(data: dict[str, Any]) -> bytes:
            return b"event: " + str(data["type"]).encode() + b"\ndata: " + dumps(data) + b"\n\n"

        start_usage = {**usage, "output_tokens": 1}  # Anthropic reports a provisional 1 at start
        message: dict[str, Any] = {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": start_usage,
        }
        if answer.tool_name is not None:
            block: dict[str, Any] = {"type": "tool_use", "id": tool_id, "name": answer.tool_name, "input": {}}
            arguments = json.dumps(answer.tool_arguments)
            deltas = [
                {"type": "input_json_delta", "partial_json": arguments[i : i + 8]} for i in range(0, len(arguments), 8)
            ]
        else:
            block = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": piece} for piece in answer.pieces]
        head = [
            event({"type": "message_start", "message": message}),
            event({"type": "content_block_start", "index": 0, "content_block": block}),
            event({"type": "ping"}),
        ]
        tail = [
            event({"type": "content_block_stop", "index": 0}),
            event(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                    "usage": {"output_tokens": usage["output_tokens"]},
                }
            ),
            event({"type": "message_stop"}),
        ]
        await send_stream(
            send,
            receive,
            content_type=b"text/event-stream; charset=utf-8",
            headers=headers,
            head=head,
            pieces=[event({"type": "content_block_delta", "index": 0, "delta": d}) for d in deltas],
            tail=tail,
            fault=fault,
            error_event=event({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        )
