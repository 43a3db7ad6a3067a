"""Fake of Mistral's chat completions API, mounted at `/mistral`.

Endpoint: `POST /v1/chat/completions` with `Authorization: Bearer <anything non-empty>` (else
401 `{"message": "Unauthorized"}`). Unary, or SSE with `"stream": true`: a role chunk, one
chunk per token, a last chunk with `finish_reason` and `usage` (Mistral sends usage
unasked), then `data: [DONE]`.

Mistral's differences from OpenAI that the fake keeps: unknown body fields are refused
(422, e.g. OpenAI's `stream_options`), `tool_choice` takes `any`, tool call ids are 9
letters and digits, a tool call comes whole in one chunk, errors are
`{"object": "error", "message", "type", "param", "code"}` at the top level (422: a
`message.detail` list), and a 429 carries `Retry-After` plus `x-ratelimitbysize-*` headers.
Answers, tool calls, usage and directives: see `echo`; `cached_tokens` ->
`usage.prompt_tokens_details.cached_tokens`; `finish=<reason>` (e.g. `model_length`, `error`)
sets the finish reason; `error_after=<n>` sends an error event after n tokens.
"""

from __future__ import annotations

import itertools
import json
import string
import time
from typing import Any

from .app import FAULT_HEADER, Fault, _read_body, _respond, _sleep_unless_disconnected
from .echo import (
    EchoAnswer,
    EchoTool,
    Headers,
    Receive,
    Scope,
    Send,
    Turn,
    dumps,
    echo_answer,
    fault_for,
    first_property,
    send_stream,
)

_FIELDS = frozenset(
    {
        "model", "messages", "max_tokens", "temperature", "top_p", "stop", "random_seed", "safe_prompt", "stream",
        "tools", "tool_choice", "response_format", "presence_penalty", "frequency_penalty", "n", "prediction",
        "parallel_tool_calls", "prompt_mode", "metadata", "guardrails", "reasoning_effort",
    }
)  # fmt: skip
_ERRORS = {
    400: ("invalid_request_error", "Invalid request (injected fault)."),
    404: ("invalid_request_error", "Invalid model: unknown"),
    429: ("rate_limited", "Requests rate limit exceeded"),
    500: ("internal_server_error", "Internal server error"),
    503: ("service_unavailable", "Service unavailable: the model is overloaded."),
}
_ID_ALPHABET = string.ascii_letters + string.digits


def error_body(status: int, message: object, type_: str | None = None, code: str | None = None) -> bytes:
    if type_ is None:
        type_ = _ERRORS.get(status, ("internal_server_error" if status >= 500 else "invalid_request_error", ""))[0]
    return dumps({"object": "error", "message": message, "type": type_, "param": None, "code": code})


class _Invalid(Exception):
    """A body Mistral refuses with 422 (validation) or 400."""

    def __init__(self, message: str, loc: str, type_: str = "value_error") -> None:
        super().__init__(message)
        self.detail = [{"type": type_, "loc": ["body", loc], "msg": message, "input": None}]


def _parse(body: object) -> tuple[str, list[Turn], list[EchoTool], str | None, int | None, bool, bool]:
    """Model, turns, tools, forced tool, output limit, JSON mode and streaming of a request."""
    if not isinstance(body, dict):
        raise _Invalid("Input should be a valid dictionary", "body", "dict_type")
    for key in body:
        if key not in _FIELDS:
            raise _Invalid("Extra inputs are not permitted", key, "extra_forbidden")
    model, messages = body.get("model"), body.get("messages")
    if not isinstance(model, str):
        raise _Invalid("Field required", "model", "missing")
    if not isinstance(messages, list) or not messages:
        raise _Invalid("Field required", "messages", "missing")
    turns: list[Turn] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant", "tool"):
            raise _Invalid("Input tag does not match any of the expected tags", f"messages.{i}", "union_tag_invalid")
        content = message.get("content")
        text = content if isinstance(content, str) else ""
        if isinstance(content, list):
            text = " ".join(str(c.get("text", "")) for c in content if isinstance(c, dict))
        for call in message.get("tool_calls") or ():
            text += " " + str((call.get("function") or {}).get("arguments") or "")
        turns.append(Turn(message["role"], text))
    tools = [
        EchoTool(str(t["function"]["name"]), first_property(t["function"].get("parameters")))
        for t in body.get("tools") or ()
        if isinstance(t, dict) and isinstance(t.get("function"), dict)
    ]
    choice = body.get("tool_choice")
    forced: str | None = None
    if choice == "none":
        tools = []
    elif choice in ("any", "required"):
        forced = "*"
    elif isinstance(choice, dict):
        forced = str((choice.get("function") or {}).get("name") or "*")
    max_tokens = body.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 0):
        raise _Invalid("Input should be greater than or equal to 0", "max_tokens", "greater_than_equal")
    response_format = body.get("response_format") or {}
    json_mode = isinstance(response_format, dict) and response_format.get("type") in ("json_object", "json_schema")
    return model, turns, tools, forced, max_tokens, json_mode, body.get("stream") is True


class MistralFakeApp:
    """ASGI app of the fake Mistral API (paths without the mount prefix)."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._call_ids = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: Headers = [(b"x-kong-request-id", b"fake-mistral")]
        authorization = fault_spec = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == FAULT_HEADER:
                fault_spec = value
        if scope["path"] != "/v1/chat/completions" or scope["method"] != "POST":
            await _respond(send, 404, dumps({"detail": "Not Found"}), headers)
            return
        if not authorization[7:].strip() or authorization[:7].lower() != b"bearer ":
            await _respond(send, 401, dumps({"message": "Unauthorized", "request_id": "fake"}), headers)
            return
        raw = await _read_body(receive)
        try:
            model, turns, tools, forced, max_tokens, json_mode, stream = _parse(json.loads(raw))
        except ValueError:
            body = error_body(400, "Invalid JSON body", "invalid_request_error")
            await _respond(send, 400, body, headers)
            return
        except _Invalid as exc:
            body = error_body(422, {"detail": exc.detail}, "invalid_request_error")
            await _respond(send, 422, body, headers)
            return
        try:
            fault = fault_for(model, fault_spec)
        except ValueError as exc:
            await _respond(send, 400, error_body(400, f"Invalid fault: {exc}"), headers)
            return
        if fault.delay_ms and not await _sleep_unless_disconnected(fault.delay_ms / 1000, receive):
            return
        if fault.status is not None and fault.error_after is None:
            await self._fault_status(send, fault, headers)
            return
        answer = echo_answer(turns, max_tokens, fault, tools=tools, forced_tool=forced, json_mode=json_mode)
        head = {
            "id": f"{next(self._ids):032x}",
            "created": int(time.time()),
            "model": model.partition("@")[0],
        }
        calls = self._tool_calls(answer)
        finish = fault.finish or ("tool_calls" if calls else "length" if answer.truncated else "stop")
        usage = self._usage(answer, fault)
        if not stream:
            message: dict[str, Any] = {
                "role": "assistant",
                "content": "".join(answer.pieces),
                "tool_calls": calls or None,
            }
            choice = {"index": 0, "message": message, "finish_reason": finish}
            result = dumps({**head, "object": "chat.completion", "choices": [choice], "usage": usage})
            if fault.truncate_after is not None:
                result = result[: fault.truncate_after]  # malformed JSON on purpose
            await _respond(send, 200, result, headers)
            return

        def event(delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
            return (
                b"data: " + dumps({**head, "object": "chat.completion.chunk", "choices": [choice], **extra}) + b"\n\n"
            )

        pieces = [event({"content": p}) for p in answer.pieces]
        if calls:
            pieces.append(event({"tool_calls": calls}))
        status = fault.status or 500
        type_, message_text = _ERRORS.get(status, ("internal_server_error", f"Injected fault {status}."))
        error = {"object": "error", "message": fault.message or message_text, "type": type_, "code": str(status)}
        await send_stream(
            send,
            receive,
            content_type=b"text/event-stream",
            headers=headers,
            head=[event({"role": "assistant", "content": ""})],
            pieces=pieces,
            tail=[event({"content": ""}, finish, usage=usage), b"data: [DONE]\n\n"],
            fault=fault,
            error_event=b"data: " + dumps(error) + b"\n\n",
        )

    def _tool_calls(self, answer: EchoAnswer) -> list[dict[str, Any]]:
        if answer.tool_name is None:
            return []
        number = next(self._call_ids)
        call_id = "".join(_ID_ALPHABET[(number * 7 + i * 13) % len(_ID_ALPHABET)] for i in range(9))
        arguments = json.dumps(answer.tool_arguments, ensure_ascii=False)
        return [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": answer.tool_name, "arguments": arguments},
                "index": 0,
            }
        ]

    @staticmethod
    def _usage(answer: EchoAnswer, fault: Fault) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.output_tokens,
            "total_tokens": answer.prompt_tokens + answer.output_tokens,
        }
        cached = min(fault.cached_tokens, answer.prompt_tokens)
        if cached:
            usage["prompt_tokens_details"] = {"cached_tokens": cached}
        return usage

    @staticmethod
    async def _fault_status(send: Send, fault: Fault, headers: Headers) -> None:
        status = fault.status or 500
        type_, message = _ERRORS.get(
            status, ("internal_server_error" if status >= 500 else "invalid_request_error", f"Injected fault {status}.")
        )
        if status == 429:
            headers += [
                (b"retry-after", (fault.retry_after or "1").encode()),
                (b"x-ratelimitbysize-limit-minute", b"500000"),
                (b"x-ratelimitbysize-remaining-minute", b"0"),
                (b"x-ratelimitbysize-limit-month", b"1000000000"),
                (b"x-ratelimitbysize-remaining-month", b"999000000"),
            ]
        elif fault.retry_after is not None:
            headers.append((b"retry-after", fault.retry_after.encode()))
        if status == 422:
            body = error_body(
                422,
                {
                    "detail": [
                        {"type": "value_error", "loc": ["body"], "msg": fault.message or "Invalid", "input": None}
                    ]
                },
            )
        else:
            body = error_body(status, fault.message or message, type_, fault.code)
        await _respond(send, status, body, headers)
