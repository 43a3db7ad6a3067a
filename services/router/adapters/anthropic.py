"""Anthropic Messages API adapter (`POST {base_url}/v1/messages`).

Wire choices:
- Auth is `x-api-key` plus `anthropic-version: 2023-06-01`; `max_tokens` is required by the
  API and always sent.
- System turns go to the top-level `system` (joined by blank lines); a tool result becomes a
  `tool_result` block in a user turn (consecutive results share one turn, as the API wants);
  an assistant turn with tool calls becomes `text` + `tool_use` blocks.
- Tools go out as `{name, description, input_schema}`; `tool_choice` maps auto -> `auto`,
  required -> `any`, none -> `none`, a name -> `{"type": "tool", "name": ...}`.
- JSON mode: Anthropic has none, so it is emulated: one line asking for a single JSON object
  and nothing else is appended to the system prompt. The answer is not validated.
- Usage: Anthropic's `input_tokens` excludes the cache, so `TokenUsage.input_tokens` is
  input + cache_read + cache_creation, with `cached_input_tokens` = cache_read and
  `cache_write_tokens` = cache_creation. Anthropic does not report thinking tokens apart,
  so `reasoning_tokens` stays 0 (they are inside `output_tokens`).
- Streams: `message_start` (input usage), `content_block_start/_delta/_stop` (text_delta,
  input_json_delta), `message_delta` (stop_reason, cumulative output usage), `message_stop`;
  `ping` is skipped, an `error` event raises. A stream without `message_stop` is PROTOCOL.

Finish reasons: end_turn/stop_sequence/pause_turn -> stop, max_tokens -> length, tool_use ->
tool_calls, refusal -> content_filter. Errors: 429 rate_limit_error -> RATE_LIMITED (with
retry-after), 529 overloaded_error -> OVERLOADED, 400 "prompt is too long" ->
CONTEXT_LENGTH_EXCEEDED, 401/403 -> AUTH, other 4xx -> BAD_REQUEST, 5xx api_error -> SERVER_ERROR.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
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
from ._http_provider import MESSAGE_LIMIT, HttpAnswer, HttpProvider, ToolCallAssembler, status_kind, token_count

ANTHROPIC_VERSION = "2023-06-01"
JSON_MODE_INSTRUCTION = "Answer with one JSON object and nothing else: no prose, no code fences."
"""Appended to the system prompt when `json_mode` is set (Anthropic has no JSON mode)."""

_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_ERROR_KINDS = {
    "rate_limit_error": ProviderErrorKind.RATE_LIMITED,
    "overloaded_error": ProviderErrorKind.OVERLOADED,
    "authentication_error": ProviderErrorKind.AUTH,
    "permission_error": ProviderErrorKind.AUTH,
    "api_error": ProviderErrorKind.SERVER_ERROR,
    "timeout_error": ProviderErrorKind.TIMEOUT,
    "invalid_request_error": ProviderErrorKind.BAD_REQUEST,
    "not_found_error": ProviderErrorKind.BAD_REQUEST,
    "request_too_large": ProviderErrorKind.BAD_REQUEST,
}


class AnthropicProvider(HttpProvider):
    """ChatProvider for Anthropic's Messages API."""

    __slots__ = ()

    _request_id_header = "request-id"

    def __init__(
        self,
        *,
        api_key: str,
        name: str = "anthropic",
        base_url: str = "https://api.anthropic.com",
        anthropic_version: str = ANTHROPIC_VERSION,
        timeout_s: float = 60.0,
        connect_timeout_s: float = 5.0,
        max_connections: int = 256,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """`base_url` is without `/v1`; `headers` are extra headers for every request (e.g.
        `anthropic-beta`); `timeout_s` caps every attempt."""
        super().__init__(
            name=name,
            base_url=base_url,
            api_key=api_key,
            auth_headers={"x-api-key": api_key, "anthropic-version": anthropic_version},
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            max_connections=max_connections,
            headers=headers,
        )

    async def chat(self, request: ProviderRequest) -> ProviderResponse:
        payload = await self._post("v1/messages", self._body(request, stream=False), request)
        try:
            texts: list[str] = []
            calls: list[ToolCall] = []
            for block in payload["content"]:
                if block["type"] == "text":
                    texts.append(str(block["text"]))
                elif block["type"] == "tool_use":
                    arguments = json.dumps(block.get("input") or {}, ensure_ascii=False)
                    calls.append(ToolCall(id=str(block["id"]), name=str(block["name"]), arguments=arguments))
                # thinking and server-tool blocks carry nothing the interface returns
            finish_reason = _finish_reason(payload["stop_reason"])
            usage = _usage(payload["usage"], payload["usage"])
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise self.error(ProviderErrorKind.PROTOCOL, f"unexpected response shape: {exc!r}") from None
        return ProviderResponse(text="".join(texts), finish_reason=finish_reason, usage=usage, tool_calls=tuple(calls))

    async def stream(self, request: ProviderRequest) -> AsyncIterator[StreamItem]:
        async with self._open_stream("v1/messages", self._body(request, stream=True), request) as events:
            start_usage: Mapping[str, Any] | None = None
            last_usage: Mapping[str, Any] = {}
            stop_reason: str | None = None
            stopped = False
            tools = ToolCallAssembler()
            tool_index: dict[int, int] = {}  # content block index -> tool call ordinal
            async for data in events.payloads():
                event = self.json_object(data)
                type_ = event.get("type")
                try:
                    if type_ == "content_block_delta":
                        delta = event["delta"]
                        if delta["type"] == "text_delta":
                            if delta["text"]:
                                yield StreamDelta(str(delta["text"]))
                        elif delta["type"] == "input_json_delta" and int(event["index"]) in tool_index:
                            piece = StreamToolCallDelta(
                                index=tool_index[int(event["index"])], arguments=str(delta["partial_json"])
                            )
                            tools.add(piece.index, arguments=piece.arguments)
                            if piece.arguments:
                                yield piece
                    elif type_ == "content_block_start":
                        block = event["content_block"]
                        if block["type"] == "tool_use":
                            ordinal = tool_index[int(event["index"])] = len(tool_index)
                            piece = StreamToolCallDelta(index=ordinal, id=str(block["id"]), name=str(block["name"]))
                            tools.add(ordinal, piece.id, piece.name)
                            yield piece
                    elif type_ == "message_start":
                        start_usage = event["message"]["usage"]
                    elif type_ == "message_delta":
                        stop_reason = event["delta"].get("stop_reason") or stop_reason
                        last_usage = event.get("usage") or last_usage
                    elif type_ == "message_stop":
                        stopped = True
                        break
                    elif type_ == "error":
                        raise self._stream_error(event.get("error"))
                    # ping, content_block_stop and event types added later carry nothing needed
                except (AttributeError, KeyError, TypeError, ValueError) as exc:
                    raise self.error(ProviderErrorKind.PROTOCOL, f"unexpected event shape: {exc!r}") from None
            if not stopped or start_usage is None or stop_reason is None:
                missing = [
                    what
                    for what, absent in (
                        ("message_start", start_usage is None),
                        ("stop_reason", stop_reason is None),
                        ("message_stop", not stopped),
                    )
                    if absent
                ]
                raise self.error(ProviderErrorKind.PROTOCOL, "stream ended without " + ", ".join(missing))
            try:
                finish_reason = _finish_reason(stop_reason)
                usage = _usage(start_usage, last_usage)
            except (AttributeError, KeyError, TypeError, ValueError) as exc:
                raise self.error(ProviderErrorKind.PROTOCOL, f"unexpected usage shape: {exc!r}") from None
            await events.drain()
            # A tool with no arguments streams no input_json_delta: its input is `{}`.
            yield StreamEnd(finish_reason=finish_reason, usage=usage, tool_calls=tools.calls(empty_arguments="{}"))

    # -- wire format -----------------------------------------------------------------------

    def _body(self, request: ProviderRequest, *, stream: bool) -> dict[str, Any]:
        system = [m.content for m in request.messages if m.role == "system" and m.content]
        if request.json_mode:
            system.append(JSON_MODE_INSTRUCTION)
        body: dict[str, Any] = {
            "model": request.upstream_model,
            "max_tokens": request.max_tokens,
            "messages": self._messages(request.messages),
        }
        if system:
            body["system"] = "\n\n".join(system)
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.stop:
            body["stop_sequences"] = list(request.stop)
        if request.tools:
            body["tools"] = [
                {
                    "name": tool.name,
                    **({"description": tool.description} if tool.description else {}),
                    "input_schema": dict(tool.parameters) or {"type": "object", "properties": {}},
                }
                for tool in request.tools
            ]
            if request.tool_choice is not None:
                body["tool_choice"] = _tool_choice(request.tool_choice)
        if stream:
            body["stream"] = True
        return body

    def _messages(self, messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for message in messages:
            if message.role == "system":
                continue
            if message.role == "tool":
                block = {"type": "tool_result", "tool_use_id": message.tool_call_id, "content": message.content}
                previous = out[-1] if out else None
                if previous is not None and previous["role"] == "user" and isinstance(previous["content"], list):
                    previous["content"].append(block)  # results of one turn's calls go in one user turn
                else:
                    out.append({"role": "user", "content": [block]})
            elif message.role == "assistant" and message.tool_calls:
                blocks: list[dict[str, Any]] = [{"type": "text", "text": message.content}] if message.content else []
                blocks.extend(
                    {"type": "tool_use", "id": c.id, "name": c.name, "input": self._tool_input(c)}
                    for c in message.tool_calls
                )
                out.append({"role": "assistant", "content": blocks})
            else:
                out.append({"role": message.role, "content": message.content})
        return out

    def _tool_input(self, call: ToolCall) -> Any:
        # Anthropic wants the arguments as an object, not as JSON text.
        try:
            value = json.loads(call.arguments or "{}")
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise self.error(ProviderErrorKind.BAD_REQUEST, f"arguments of tool call {call.id!r} are not a JSON object")
        return value

    def _status_error(self, response: HttpAnswer) -> ProviderError:
        kind = status_kind(response.status_code)
        details: dict[str, str] = {}
        upstream_message = ""
        try:
            error = json.loads(response.content)["error"]
            upstream_message = str(error.get("message") or "")
            if error.get("type"):
                details["type"] = str(error["type"])
        except (ValueError, KeyError, TypeError, AttributeError):
            pass  # not Anthropic's error shape: the status says enough
        if kind == ProviderErrorKind.BAD_REQUEST:
            kind = _refine_bad_request(upstream_message)
        elif kind == ProviderErrorKind.SERVER_ERROR and details.get("type") == "overloaded_error":
            kind = ProviderErrorKind.OVERLOADED
        return self.http_error(response, kind, upstream_message, details)

    def _stream_error(self, error: object) -> ProviderError:
        # An error event after a 200 (most often overloaded_error mid-answer).
        if not isinstance(error, dict):
            return self.error(ProviderErrorKind.PROTOCOL, "error event in stream")
        type_ = str(error.get("type") or "")
        message = str(error.get("message") or "error event in stream")[:MESSAGE_LIMIT]
        kind = _ERROR_KINDS.get(type_, ProviderErrorKind.SERVER_ERROR)
        if kind == ProviderErrorKind.BAD_REQUEST:
            kind = _refine_bad_request(message)
        if kind == ProviderErrorKind.AUTH:
            message = "authentication failed"
        return self.error(kind, message, details={"type": type_} if type_ else None)


def _refine_bad_request(message: str) -> str:
    lowered = message.lower()
    if "prompt is too long" in lowered or "context window" in lowered or "context length" in lowered:
        return ProviderErrorKind.CONTEXT_LENGTH_EXCEEDED
    return ProviderErrorKind.BAD_REQUEST


def _tool_choice(choice: str) -> dict[str, str]:
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    return {"type": "tool", "name": choice}


def _finish_reason(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("stop_reason is not a string")
    return _FINISH_REASONS.get(value, "stop")


def _usage(input_usage: Mapping[str, Any], output_usage: Mapping[str, Any]) -> TokenUsage:
    """Normalise Anthropic usage: input counts from `input_usage` (message_start in a stream,
    where message_delta may repeat them), output from `output_usage` (cumulative)."""

    def count(name: str) -> int:
        value = output_usage.get(name)
        if value is None:
            value = input_usage.get(name)
        return token_count(value or 0)

    uncached, cache_read, cache_write = (
        count("input_tokens"),
        count("cache_read_input_tokens"),
        count("cache_creation_input_tokens"),
    )
    return TokenUsage(
        input_tokens=uncached + cache_read + cache_write,
        output_tokens=token_count(output_usage.get("output_tokens", input_usage.get("output_tokens"))),
        cached_input_tokens=cache_read,
        cache_write_tokens=cache_write,
    )
