"""Fake of Cohere's v2 Chat API, mounted at `/cohere` (`POST /cohere/v2/chat`).

Close enough for the official `cohere` SDK (`cohere.AsyncClientV2(base_url="http://host:port/cohere")`):
- Needs `Authorization: Bearer <anything>` (else 401). Validates `model`, non-empty
  `messages` (roles system/user/assistant/tool; tool turns need `tool_call_id`), `tools`
  (type function with a name), `tool_choice` (REQUIRED/NONE), `p` in 0.01..0.99,
  `temperature` >= 0, `max_tokens` >= 1, `response_format.type` text/json_object.
- Answers with the shared echo (`interlock.services.fakeprovider.echo`): text, or a tool call
  (with a `tool_plan`) when the directive `tool_call=<name>` is set or `tool_choice` is
  REQUIRED. JSON mode answers `{"echo": ...}`. Streaming: message-start, content-start, one
  content-delta per token (or tool-plan-delta, tool-call-start, tool-call-delta per
  8-character argument fragment, tool-call-end), content-end, message-end with
  `finish_reason` and usage; each as `event:` + `data:`.
- Usage: `billed_units` holds the echo's token counts (as floats, like Cohere's API sends
  them); `tokens` adds 60 prompt-template tokens to the input, which Cohere does not bill.
  `reasoning_tokens=N` is added to the output. `finish=<reason>` overrides finish_reason.
- Errors: `{"id", "message"}`; `status=` any 4xx/5xx (429 with `retry-after`);
  `code=context_length_exceeded` is a 400 "too many tokens: ..."; `error_after=N` ends the
  stream with a message-end whose finish_reason is ERROR; `truncate_after=N` cuts the stream
  (no message-end) or, unary, the JSON body.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from .app import FAULT_HEADER, Fault, _read_body, _respond, _sleep_unless_disconnected
from .echo import EchoAnswer, EchoTool, Receive, Scope, Send, Turn, dumps, echo_answer, fault_for, send_stream

TEMPLATE_TOKENS = 60
"""Input tokens Cohere's prompt template adds: in `usage.tokens`, not in `billed_units`."""
_MESSAGES = {
    400: "invalid request (injected fault)",
    401: "invalid api token",
    429: "You are using a Trial key, which is limited to 10 API calls / minute (injected fault).",
    500: "internal server error, this has been reported to our developers (injected fault)",
    503: "service unavailable (injected fault)",
}


class _Invalid(Exception):
    """A request Cohere would answer with 400."""


def _text_of(content: object, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        texts: list[str] = []
        for block in content:
            if not isinstance(block, dict):
                raise _Invalid(f"invalid {where}: content items must be objects")
            if block.get("type") == "text" and isinstance(block.get("text"), str):
                texts.append(block["text"])
            elif block.get("type") == "document":
                texts.append(json.dumps(block.get("document")))
        return " ".join(texts)
    raise _Invalid(f"invalid {where}: content must be a string or a list")


def _parse(body: object) -> tuple[dict[str, Any], list[Turn], list[EchoTool], str | None]:
    if not isinstance(body, dict):
        raise _Invalid("invalid request: body must be a JSON object")
    if not isinstance(body.get("model"), str):
        raise _Invalid("invalid request: model must be a string")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _Invalid("invalid request: messages must be a non-empty list")
    turns: list[Turn] = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("system", "user", "assistant", "tool"):
            raise _Invalid(f"invalid request: messages[{i}].role must be one of system, user, assistant, tool")
        if role == "tool" and not isinstance(message.get("tool_call_id"), str):
            raise _Invalid(f"invalid request: messages[{i}].tool_call_id is required for tool messages")
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise _Invalid(f"invalid request: messages[{i}].tool_calls need function.name")
            turns.append(Turn("assistant", str(function.get("arguments") or "")))
        turns.append(Turn(role, _text_of(message.get("content"), f"messages[{i}]")))
    tools: list[EchoTool] = []
    for i, tool in enumerate(body.get("tools") or ()):
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            tool.get("type") != "function"
            or not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
        ):
            raise _Invalid(f"invalid request: tools[{i}] must be a function with a name")
        properties = (function.get("parameters") or {}).get("properties")
        first = next(iter(properties)) if isinstance(properties, dict) and properties else "input"
        tools.append(EchoTool(function["name"], str(first)))
    choice = body.get("tool_choice")
    if choice is not None and choice not in ("REQUIRED", "NONE"):
        raise _Invalid("invalid request: tool_choice must be REQUIRED or NONE")
    p = body.get("p")
    if p is not None and (not isinstance(p, (int, float)) or not 0.01 <= p <= 0.99):
        raise _Invalid("invalid request: p must be between 0.01 and 0.99")
    temperature = body.get("temperature")
    if temperature is not None and (not isinstance(temperature, (int, float)) or temperature < 0):
        raise _Invalid("invalid request: temperature must be at least 0")
    max_tokens = body.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise _Invalid("invalid request: max_tokens must be at least 1")
    response_format = body.get("response_format")
    if response_format is not None and (
        not isinstance(response_format, dict) or response_format.get("type") not in ("text", "json_object")
    ):
        raise _Invalid("invalid request: response_format.type must be text or json_object")
    return body, turns, tools, ("*" if choice == "REQUIRED" else None)


class CohereFakeApp:
    """ASGI app of the fake Cohere v2 Chat API (paths as seen below the mount prefix)."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        response_id = f"fake-{next(self._ids):08d}"
        headers = [(b"x-request-id", response_id.encode())]
        authorization = fault_spec = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == FAULT_HEADER:
                fault_spec = value

        async def fail(status: int, message: str) -> None:
            await _respond(send, status, dumps({"id": response_id, "message": message}), headers)

        if scope["path"] != "/v2/chat":
            await fail(404, f"404 page not found: {scope['path']}")
            return
        if scope["method"] != "POST":
            await fail(405, "method not allowed")
            return
        if authorization[:7].lower() != b"bearer " or not authorization[7:].strip():
            await fail(401, "no api key supplied")
            return
        try:
            body: object = json.loads(await _read_body(receive))
        except ValueError:
            await fail(400, "invalid request: could not parse the JSON body")
            return
        model = body.get("model") if isinstance(body, dict) else None
        try:
            fault = fault_for(model if isinstance(model, str) else "", fault_spec)
        except ValueError as exc:
            await fail(400, f"invalid fault: {exc}")
            return
        if fault.delay_ms and not await _sleep_unless_disconnected(fault.delay_ms / 1000, receive):
            return
        if fault.status is not None or fault.code is not None:
            status = fault.status or 400
            if fault.code == "context_length_exceeded":
                message = (
                    "too many tokens: total number of tokens in the prompt cannot exceed 128000 - received 130000. "
                    "Try using a shorter prompt."
                )
            else:
                message = _MESSAGES.get(status, f"injected fault {status}")
            if status == 429:
                headers.append((b"retry-after", (fault.retry_after or "1").encode()))
            elif fault.retry_after is not None:
                headers.append((b"retry-after", fault.retry_after.encode()))
            await fail(status, fault.message or message)
            return
        try:
            request, turns, tools, forced = _parse(body)
        except _Invalid as exc:
            await fail(400, str(exc))
            return
        json_mode = (request.get("response_format") or {}).get("type") == "json_object"
        answer = echo_answer(
            turns, request.get("max_tokens"), fault, tools=tools, forced_tool=forced, json_mode=json_mode
        )
        finish = fault.finish or ("TOOL_CALL" if answer.tool_name else "MAX_TOKENS" if answer.truncated else "COMPLETE")
        usage = _usage(answer, fault)
        call_id = f"{answer.tool_name}_fake{next(self._ids):08d}"
        if request.get("stream"):
            await self._stream(send, receive, headers, fault, answer, response_id, finish, usage, call_id)
            return
        reply: dict[str, Any] = {"role": "assistant"}
        if answer.tool_name is not None:
            reply["tool_plan"] = f"I will use {answer.tool_name}."
            reply["tool_calls"] = [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": answer.tool_name, "arguments": json.dumps(answer.tool_arguments)},
                }
            ]
        else:
            reply["content"] = [{"type": "text", "text": "".join(answer.pieces)}]
        payload = dumps({"id": response_id, "finish_reason": finish, "message": reply, "usage": usage})
        if fault.truncate_after is not None:
            payload = payload[: fault.truncate_after]  # malformed JSON on purpose
        await _respond(send, 200, payload, headers)

    async def _stream(
        self,
        send: Send,
        receive: Receive,
        headers: list[tuple[bytes, bytes]],
        fault: Fault,
        answer: EchoAnswer,
        response_id: str,
        finish: str,
        usage: dict[str, Any],
        call_id: str,
    ) -> None:
        def event(data: dict[str, Any]) -> bytes:
            return b"event: " + str(data["type"]).encode() + b"\ndata: " + dumps(data) + b"\n\n"

        start = {
            "id": response_id,
            "type": "message-start",
            "delta": {
                "message": {"role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}
            },
        }
        if answer.tool_name is not None:
            arguments = json.dumps(answer.tool_arguments)
            call = {"id": call_id, "type": "function", "function": {"name": answer.tool_name, "arguments": ""}}
            head = [
                event(start),
                event(
                    {"type": "tool-plan-delta", "delta": {"message": {"tool_plan": f"I will use {answer.tool_name}."}}}
                ),
                event({"type": "tool-call-start", "index": 0, "delta": {"message": {"tool_calls": call}}}),
            ]
            pieces = [
                event(
                    {
                        "type": "tool-call-delta",
                        "index": 0,
                        "delta": {"message": {"tool_calls": {"function": {"arguments": arguments[i : i + 8]}}}},
                    }
                )
                for i in range(0, len(arguments), 8)
            ]
            closing = event({"type": "tool-call-end", "index": 0})
        else:
            head = [
                event(start),
                event(
                    {
                        "type": "content-start",
                        "index": 0,
                        "delta": {"message": {"content": {"type": "text", "text": ""}}},
                    }
                ),
            ]
            pieces = [
                event({"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": piece}}}})
                for piece in answer.pieces
            ]
            closing = event({"type": "content-end", "index": 0})
        end = {"type": "message-end", "id": response_id, "delta": {"finish_reason": finish, "usage": usage}}
        failed = {"type": "message-end", "id": response_id, "delta": {"finish_reason": "ERROR"}}
        await send_stream(
            send,
            receive,
            content_type=b"text/event-stream",
            headers=headers,
            head=head,
            pieces=pieces,
            tail=[closing, event(end)],
            fault=fault,
            error_event=event(failed),
        )


def _usage(answer: EchoAnswer, fault: Fault) -> dict[str, Any]:
    output = answer.output_tokens + fault.reasoning_tokens
    return {
        "billed_units": {"input_tokens": float(answer.prompt_tokens), "output_tokens": float(output)},
        "tokens": {"input_tokens": float(answer.prompt_tokens + TEMPLATE_TOKENS), "output_tokens": float(output)},
    }
