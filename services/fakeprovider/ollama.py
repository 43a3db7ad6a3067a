"""Fake of Ollama's native chat API, mounted at `/ollama`.

Endpoints:
- `POST /api/chat`: NDJSON stream (Ollama's default when `stream` is absent) of one object per
  token, then a `done: true` object with `done_reason` and the counts `prompt_eval_count` /
  `eval_count` (and durations); with `"stream": false` only one object, the whole answer.
- `GET /api/version`, `GET /api/tags`: what clients probe.

No key is needed (Ollama has none). Errors are `{"error": "<text>"}` with the HTTP status
(404 "model ... not found" for `status=404`); 429 also sends `Retry-After`, as a proxy would.
Answers, tool calls, usage and directives: see `echo`. Ollama specifics: a tool call's
`arguments` is an object and has no id; `options.num_predict` is the output limit (-1 none);
`format` "json" (or a schema) is JSON mode; Ollama has no tool choice: like a model that
reaches for its tools, the fake calls the first offered tool when the last turn is the
user's (and `tool_call=<name>` picks the tool); `finish=<reason>` sets `done_reason`; `error_after=<n>`
sends `{"error": ...}` as the stream's next line after n tokens. `cached_tokens` and
`reasoning_tokens` have no Ollama field and are ignored.
"""

from __future__ import annotations

import json
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

_MESSAGES = {
    400: "invalid request (injected fault)",
    429: "too many requests (injected fault)",
    500: "llama runner process has terminated: exit status 2",
    503: "server busy, please try again.  maximum pending requests exceeded",
}


def _error(text: str) -> bytes:
    return dumps({"error": text})


def _created_at() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())


class _Invalid(Exception):
    """A request Ollama answers with 400."""


def _parse(body: object) -> tuple[str, list[Turn], list[EchoTool], int | None, bool, bool]:
    """Model, turns, tools, output limit, JSON mode and streaming of a chat request."""
    if not isinstance(body, dict):
        raise _Invalid("invalid request body")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _Invalid("model is required")
    turns: list[Turn] = []
    for message in body.get("messages") or ():
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant", "tool"):
            raise _Invalid("invalid message format")
        text = str(message.get("content") or "")
        for call in message.get("tool_calls") or ():
            text += " " + json.dumps((call.get("function") or {}).get("arguments"), ensure_ascii=False)
        turns.append(Turn(message["role"], text))
    tools = [
        EchoTool(str(t["function"]["name"]), first_property(t["function"].get("parameters")))
        for t in body.get("tools") or ()
        if isinstance(t, dict) and isinstance(t.get("function"), dict)
    ]
    options = body.get("options") or {}
    limit = options.get("num_predict") if isinstance(options, dict) else None
    if limit is not None and not isinstance(limit, int):
        raise _Invalid('option "num_predict" must be of type integer')
    max_tokens = limit if isinstance(limit, int) and limit >= 0 else None
    fmt = body.get("format")
    json_mode = fmt == "json" or isinstance(fmt, dict)
    stream = body.get("stream")
    return model, turns, tools, max_tokens, json_mode, stream is not False


class OllamaFakeApp:
    """ASGI app of the fake Ollama API (paths without the mount prefix)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: Headers = []
        fault_spec = b""
        for name, value in scope["headers"]:
            if name == FAULT_HEADER:
                fault_spec = value
        path, method = scope["path"], scope["method"]
        if method == "GET" and path == "/api/version":
            await _respond(send, 200, b'{"version":"0.12.0"}', headers)
            return
        if method == "GET" and path == "/api/tags":
            await _respond(send, 200, b'{"models":[]}', headers)
            return
        if path != "/api/chat":
            await _respond(send, 404, b"404 page not found", [(b"content-type", b"text/plain"), *headers])
            return
        if method != "POST":
            await _respond(send, 405, b"405 method not allowed", headers)
            return
        raw = await _read_body(receive)
        try:
            body = json.loads(raw)
            model, turns, tools, max_tokens, json_mode, stream = _parse(body)
        except ValueError:
            await _respond(send, 400, _error("invalid character in request body"), headers)
            return
        except _Invalid as exc:
            await _respond(send, 400, _error(str(exc)), headers)
            return
        try:
            fault = fault_for(model, fault_spec)
        except ValueError as exc:
            await _respond(send, 400, _error(f"invalid fault: {exc}"), headers)
            return
        if fault.delay_ms and not await _sleep_unless_disconnected(fault.delay_ms / 1000, receive):
            return
        status = fault.status
        if status is not None and fault.error_after is None:
            if status == 429 or fault.retry_after is not None:
                headers.append((b"retry-after", (fault.retry_after or "1").encode()))
            await _respond(send, status, _error(self._message(model, fault)), headers)
            return
        eager = "*" if tools and turns and turns[-1].role == "user" else None
        answer = echo_answer(turns, max_tokens, fault, tools=tools, json_mode=json_mode, forced_tool=eager)
        name = model.partition("@")[0]
        if not stream:
            result = dumps(self._final(name, answer, fault, answer.pieces))
            if fault.truncate_after is not None:
                result = result[: fault.truncate_after]  # malformed JSON on purpose
            await _respond(send, 200, result, headers)
            return
        pieces = [] if answer.tool_name else answer.pieces
        lines = [
            dumps(
                {
                    "model": name,
                    "created_at": _created_at(),
                    "message": {"role": "assistant", "content": p},
                    "done": False,
                }
            )
            + b"\n"
            for p in pieces
        ]
        if answer.tool_name:
            # Ollama streams a tool call whole, in a message before the final one.
            call = self._final(name, answer, fault, [])["message"]
            lines.append(dumps({"model": name, "created_at": _created_at(), "message": call, "done": False}) + b"\n")
        final = self._final(name, answer, fault, [])
        final["message"] = {"role": "assistant", "content": ""}
        await send_stream(
            send,
            receive,
            content_type=b"application/x-ndjson",
            headers=headers,
            head=[],
            pieces=lines,
            tail=[dumps(final) + b"\n"],
            fault=fault,
            error_event=_error(self._message(model, fault)) + b"\n",
        )

    @staticmethod
    def _message(model: str, fault: Fault) -> str:
        status = fault.status or 500
        if fault.message:
            return fault.message
        if status == 404:
            return f'model "{model.partition("@")[0]}" not found, try pulling it first'
        return _MESSAGES.get(status, f"injected fault {status}")

    @staticmethod
    def _final(model: str, answer: EchoAnswer, fault: Fault, pieces: list[str]) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(pieces)}
        if answer.tool_name:
            message["tool_calls"] = [{"function": {"name": answer.tool_name, "arguments": answer.tool_arguments}}]
        return {
            "model": model,
            "created_at": _created_at(),
            "message": message,
            "done": True,
            "done_reason": fault.finish or ("length" if answer.truncated else "stop"),
            "total_duration": 1_000_000,
            "load_duration": 100_000,
            "prompt_eval_count": answer.prompt_tokens,
            "prompt_eval_duration": 200_000,
            "eval_count": answer.output_tokens,
            "eval_duration": 700_000,
        }
