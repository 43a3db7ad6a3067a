"""Ollama adapter: Ollama's native chat API (`POST /api/chat`), not its OpenAI-compatible one.

The native API reports load/eval counts and takes Ollama's own options, and it is what every
Ollama version serves.

Wire choices:
- `stream` is always sent: Ollama streams unless told `false`. Streams are NDJSON, one JSON
  object a line; the last has `done: true`, `done_reason` and the token counts, and a stream
  without it is an error (PROTOCOL). An `{"error": ...}` line mid-stream is a failure.
- Limits and sampling go in `options`: `num_predict` (the output limit), `temperature`,
  `top_p`, `stop`. JSON mode is `format: "json"`.
- Tools go out as `tools: [{"type": "function", ...}]`. Ollama has no tool choice: `none`
  sends no tools, anything else lets the model decide. Calls come back with `arguments` as
  an object (sent on as JSON text) and no id: made-up ids are a hash of the call's position,
  name and arguments, stable across retries and across streamed vs unary answers. A tool
  result goes back as role `tool` with `tool_name`.
- Usage: `prompt_eval_count` in, `eval_count` out (0 when absent: Ollama omits the prompt
  count when the whole prompt came from its cache).

Errors are `{"error": "<text>"}` with an HTTP status: 404 (model not found) and other 4xx ->
BAD_REQUEST (context-length wording -> CONTEXT_LENGTH_EXCEEDED), 429 (from a proxy) ->
RATE_LIMITED with Retry-After, 401/403 (from a proxy) -> AUTH, 503 -> OVERLOADED, other 5xx
-> SERVER_ERROR.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from ..domain.provider import (
    ChatMessage,
    ProviderError,
    ProviderErrorKind,
    ProviderRequest,
    ProviderResponse,
    StreamDelta,
    StreamEnd,
    StreamItem,
    StreamToolCallDelta,
    TokenUsage,
    ToolCall,
)
from ._http_provider import MESSAGE_LIMIT, HttpAnswer, HttpProvider, status_kind, token_count

_OWN_ID_PREFIX = "ollama-call-"
_CONTEXT_WORDS = ("context length", "context window", "exceeds the context", "too many tokens")


class OllamaProvider(HttpProvider):
    """ChatProvider for an Ollama server (or a proxy in front of one)."""

    __slots__ = ()

    def __init__(
        self,
        *,
        name: str = "ollama",
        base_url: str = "http://127.0.0.1:11434",
        api_key: str = "",
        timeout_s: float = 120.0,
        connect_timeout_s: float = 5.0,
        max_connections: int = 64,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """`api_key` is for a proxy or Ollama's hosted service (sent as Bearer); a local Ollama
        needs none. `timeout_s` caps every attempt (local models can be slow to load)."""
        super().__init__(
            name=name,
            base_url=base_url,
            api_key=api_key,
            auth_headers={"authorization": f"Bearer {api_key}"} if api_key else {},
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            max_connections=max_connections,
            headers=headers,
        )

    async def chat(self, request: ProviderRequest) -> ProviderResponse:
        payload = await self._post("api/chat", self._body(request, stream=False), request)
        self._raise_if_error(payload)
        try:
            text, calls = self._message(payload.get("message") or {}, first_index=0)
            finish, usage = self._final(payload)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise self.error(ProviderErrorKind.PROTOCOL, f"unexpected response shape: {exc!r}") from None
        return ProviderResponse(
            text=text, finish_reason=_finish_reason(finish, bool(calls)), usage=usage, tool_calls=tuple(calls)
        )

    async def stream(self, request: ProviderRequest) -> AsyncIterator[StreamItem]:
        calls: list[ToolCall] = []
        async for line in self._lines(request):
            payload = self.json_object(line)
            self._raise_if_error(payload)
            try:
                text, new_calls = self._message(payload.get("message") or {}, first_index=len(calls))
                done = payload.get("done") is True
                final = self._final(payload) if done else None
            except (AttributeError, KeyError, TypeError, ValueError) as exc:
                raise self.error(ProviderErrorKind.PROTOCOL, f"unexpected chunk shape: {exc!r}") from None
            if text:
                yield StreamDelta(text)
            for call in new_calls:
                yield StreamToolCallDelta(index=len(calls), id=call.id, name=call.name, arguments=call.arguments)
                calls.append(call)
            if final is not None:
                finish, usage = final
                yield StreamEnd(finish_reason=_finish_reason(finish, bool(calls)), usage=usage, tool_calls=tuple(calls))
                return
        raise self.error(ProviderErrorKind.PROTOCOL, "stream ended without a done message")

    # -- wire format -----------------------------------------------------------------------

    @staticmethod
    def _body(request: ProviderRequest, *, stream: bool) -> dict[str, Any]:
        names_by_id = {call.id: call.name for m in request.messages for call in m.tool_calls}
        options: dict[str, Any] = {"num_predict": request.max_tokens}
        if request.temperature is not None:
            options["temperature"] = request.temperature
        if request.top_p is not None:
            options["top_p"] = request.top_p
        if request.stop:
            options["stop"] = list(request.stop)
        body: dict[str, Any] = {
            "model": request.upstream_model,
            "messages": [_message(m, names_by_id) for m in request.messages],
            "stream": stream,
            "options": options,
        }
        if request.json_mode:
            body["format"] = "json"
        if request.tools and request.tool_choice != "none":
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": tool.name,
                        "description": tool.description,
                        "parameters": dict(tool.parameters) or {"type": "object", "properties": {}},
                    },
                }
                for tool in request.tools
            ]
        return body

    @staticmethod
    def _message(message: Mapping[str, Any], *, first_index: int) -> tuple[str, list[ToolCall]]:
        content = message.get("content") or ""
        if not isinstance(content, str):
            raise ValueError("message content is not a string")
        calls = []
        for offset, call in enumerate(message.get("tool_calls") or ()):
            function = call["function"]
            name = str(function["name"])
            raw = function.get("arguments")
            # Ollama sends an object; a string (some proxies) is already JSON text.
            arguments = raw if isinstance(raw, str) else json.dumps(raw or {}, ensure_ascii=False)
            index = first_index + offset
            call_id = str(call.get("id") or "") or _stable_id(index, name, arguments)
            calls.append(ToolCall(id=call_id, name=name, arguments=arguments))
        return content, calls

    @staticmethod
    def _final(payload: Mapping[str, Any]) -> tuple[str, TokenUsage]:
        if payload.get("done") is not True:
            raise ValueError("answer is not done")
        usage = TokenUsage(
            input_tokens=token_count(payload.get("prompt_eval_count") or 0),
            output_tokens=token_count(payload.get("eval_count") or 0),
        )
        return str(payload.get("done_reason") or "stop"), usage

    # -- I/O -------------------------------------------------------------------------------

    async def _lines(self, request: ProviderRequest) -> AsyncIterator[bytes]:
        """The NDJSON lines of a streamed answer, read under the attempt's deadline."""
        body = self._body(request, stream=True)
        async with self._open_body("api/chat", body, request, "application/x-ndjson") as chunks:
            buffer = b""
            while True:
                chunk = await chunks.next_chunk()
                if not chunk:
                    if buffer.strip():
                        yield buffer
                    return
                *lines, buffer = (buffer + chunk).split(b"\n")
                for line in lines:
                    if line.strip():
                        yield line

    # -- errors ----------------------------------------------------------------------------

    def _raise_if_error(self, payload: Mapping[str, Any]) -> None:
        error = payload.get("error")
        if error:
            message = str(error)[:MESSAGE_LIMIT]
            kind = _refine(ProviderErrorKind.SERVER_ERROR, message)
            raise self.error(kind, message)

    def _status_error(self, response: HttpAnswer) -> ProviderError:
        message = ""
        try:
            error = json.loads(response.content).get("error")
            message = str(error or "")
        except (ValueError, AttributeError):
            pass  # a proxy's page or Go's plain-text 404: the status says enough
        kind = status_kind(response.status_code)
        if kind == ProviderErrorKind.BAD_REQUEST:
            kind = _refine(kind, message)
        return self.http_error(response, kind, message)


def _message(message: ChatMessage, names_by_id: Mapping[str, str]) -> dict[str, Any]:
    if message.role == "tool":
        return {
            "role": "tool",
            "content": message.content,
            "tool_name": message.name or names_by_id.get(message.tool_call_id, ""),
        }
    wire: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        wire["tool_calls"] = [
            {"function": {"name": c.name, "arguments": _arguments_object(c.arguments)}} for c in message.tool_calls
        ]
    return wire


def _arguments_object(arguments: str) -> Any:
    try:
        return json.loads(arguments or "{}")
    except ValueError:
        return {}  # Ollama wants an object; a model's malformed arguments cannot be sent back as is


def _finish_reason(done_reason: str, has_calls: bool) -> str:
    if done_reason == "length":
        return "length"
    # Ollama says "stop" after tool calls too.
    return "tool_calls" if has_calls else "stop"


def _refine(kind: str, message: str) -> str:
    lowered = message.lower()
    if any(words in lowered for words in _CONTEXT_WORDS):
        return ProviderErrorKind.CONTEXT_LENGTH_EXCEEDED
    if "overloaded" in lowered or "server busy" in lowered:
        return ProviderErrorKind.OVERLOADED
    return kind


def _stable_id(index: int, name: str, arguments: str) -> str:
    digest = hashlib.sha256(f"{index}\0{name}\0{arguments}".encode()).hexdigest()[:16]
    return f"{_OWN_ID_PREFIX}{digest}"
