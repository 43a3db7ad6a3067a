"""OpenAI Chat Completions adapter, also for any OpenAI-compatible server.

Wire choices:
- The output limit goes out as `max_tokens`: every OpenAI-compatible server knows it, and
  OpenAI still accepts it for chat models (`max_completion_tokens` is only required by its
  reasoning models).
- Tools go out as `tools: [{"type": "function", ...}]`; a forced tool as
  `tool_choice: {"type": "function", "function": {"name": ...}}`. JSON mode is
  `response_format: {"type": "json_object"}`.
- Streams ask for `stream_options.include_usage`, so the last event carries token usage; a
  stream without a finish reason, usage and `[DONE]` is an error (PROTOCOL), as is one cut
  by the network after the response began. Tool-call pieces are passed on as
  `StreamToolCallDelta` and assembled into `StreamEnd.tool_calls`.
- Usage: `prompt_tokens` already includes `prompt_tokens_details.cached_tokens` and
  `completion_tokens` includes `completion_tokens_details.reasoning_tokens`, which is exactly
  `TokenUsage`'s convention.

Errors map to `ProviderErrorKind`: code `context_length_exceeded` -> CONTEXT_LENGTH_EXCEEDED,
codes `content_filter` / `content_policy_violation` -> CONTENT_FILTERED, 429 -> RATE_LIMITED
(with Retry-After / retry-after-ms), 401/403 -> AUTH, 408 and timeouts -> TIMEOUT, other
4xx -> BAD_REQUEST, 503 -> OVERLOADED, other 5xx and connection failures -> SERVER_ERROR,
anything not in the wire format -> PROTOCOL.
"""

from __future__ import annotations

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
from ._http_provider import MESSAGE_LIMIT, HttpAnswer, HttpProvider, ToolCallAssembler, status_kind, token_count

_FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",  # the deprecated single-function form
    "content_filter": "content_filter",
}
_CONTENT_FILTER_CODES = frozenset({"content_filter", "content_policy_violation"})


class OpenAIProvider(HttpProvider):
    """ChatProvider for OpenAI's `/chat/completions` and compatible servers."""

    __slots__ = ("_params", "_path")

    def __init__(
        self,
        *,
        api_key: str,
        name: str = "openai",
        base_url: str = "https://api.openai.com/v1",
        timeout_s: float = 60.0,
        connect_timeout_s: float = 5.0,
        max_connections: int = 256,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """`timeout_s` caps every attempt (a request's own `timeout_s` can only lower it);
        `headers` are extra headers for every request (e.g. `OpenAI-Organization`)."""
        # Keyless local servers exist; an empty Bearer is not even valid HTTP.
        auth = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._init_openai(
            name=name,
            base_url=base_url,
            api_key=api_key,
            auth_headers=auth,
            path="chat/completions",
            params=None,
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            max_connections=max_connections,
            headers=headers,
        )

    def _init_openai(
        self,
        *,
        name: str,
        base_url: str,
        api_key: str,
        auth_headers: Mapping[str, str],
        path: str,
        params: Mapping[str, str] | None,
        timeout_s: float,
        connect_timeout_s: float,
        max_connections: int,
        headers: Mapping[str, str] | None,
    ) -> None:
        """Shared by OpenAI-shaped endpoints that differ in URL and auth (Azure OpenAI)."""
        self._path = path
        self._params = dict(params) if params else None
        super().__init__(
            name=name,
            base_url=base_url,
            api_key=api_key,
            auth_headers=auth_headers,
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            max_connections=max_connections,
            headers=headers,
        )

    async def chat(self, request: ProviderRequest) -> ProviderResponse:
        payload = await self._post(self._path, self._body(request, stream=False), request, self._params)
        try:
            choice = payload["choices"][0]
            message = choice["message"]
            content = message.get("content")
            finish_reason = _finish_reason(choice["finish_reason"])
            usage = _usage(payload["usage"])
            tool_calls = tuple(
                ToolCall(
                    id=str(call["id"]),
                    name=str(call["function"]["name"]),
                    arguments=str(call["function"].get("arguments") or ""),
                )
                for call in message.get("tool_calls") or ()
            )
        except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
            raise self.error(ProviderErrorKind.PROTOCOL, f"unexpected response shape: {exc!r}") from None
        if not (content is None or isinstance(content, str)):
            raise self.error(ProviderErrorKind.PROTOCOL, "unexpected response shape: content")
        return ProviderResponse(text=content or "", finish_reason=finish_reason, usage=usage, tool_calls=tool_calls)

    async def stream(self, request: ProviderRequest) -> AsyncIterator[StreamItem]:
        body = self._body(request, stream=True)
        async with self._open_stream(self._path, body, request, self._params) as events:
            finish_reason: str | None = None
            usage: TokenUsage | None = None
            tools = ToolCallAssembler()
            done = False
            async for data in events.payloads():
                if data == b"[DONE]":
                    done = True
                    break
                items, finish, chunk_usage = self._parse_chunk(self.json_object(data))
                for item in items:
                    if isinstance(item, StreamToolCallDelta):
                        tools.add(item.index, item.id, item.name, item.arguments)
                    yield item
                finish_reason = finish or finish_reason
                usage = chunk_usage or usage
            missing = [what for what, value in (("finish_reason", finish_reason), ("usage", usage)) if value is None]
            if not done:
                missing.append("[DONE]")
            if missing or finish_reason is None or usage is None:
                raise self.error(ProviderErrorKind.PROTOCOL, "stream ended without " + ", ".join(missing))
            await events.drain()
            yield StreamEnd(finish_reason=finish_reason, usage=usage, tool_calls=tools.calls())

    # -- wire format -----------------------------------------------------------------------

    @staticmethod
    def _body(request: ProviderRequest, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.upstream_model,
            "messages": [_message(m) for m in request.messages],
            "max_tokens": request.max_tokens,
        }
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.stop:
            body["stop"] = list(request.stop)
        if request.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": tool.name,
                        **({"description": tool.description} if tool.description else {}),
                        "parameters": dict(tool.parameters) or {"type": "object", "properties": {}},
                    },
                }
                for tool in request.tools
            ]
        if request.tool_choice is not None:
            if request.tool_choice in ("auto", "none", "required"):
                body["tool_choice"] = request.tool_choice
            else:
                body["tool_choice"] = {"type": "function", "function": {"name": request.tool_choice}}
        if request.json_mode:
            body["response_format"] = {"type": "json_object"}
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    def _status_error(self, response: HttpAnswer) -> ProviderError:
        kind = status_kind(response.status_code)
        details: dict[str, str] = {}
        upstream_message = ""
        try:
            error = json.loads(response.content)["error"]
            upstream_message = str(error.get("message") or "")
            for field in ("type", "code", "param"):
                if error.get(field) is not None:
                    details[field] = str(error[field])
        except (ValueError, KeyError, TypeError, AttributeError):
            pass  # not OpenAI's error shape: the status says enough
        if 400 <= response.status_code < 500 and kind != ProviderErrorKind.RATE_LIMITED:
            kind = _refine_kind(kind, details.get("code", ""), upstream_message)
        return self.http_error(response, kind, upstream_message, details)

    def _stream_error(self, error: object) -> ProviderError:
        # An error event after a 200: the server failed mid-answer.
        if not isinstance(error, dict):
            return self.error(ProviderErrorKind.PROTOCOL, "error event in stream")
        type_, code = str(error.get("type") or ""), str(error.get("code") or "")
        message = str(error.get("message") or "error event in stream")[:MESSAGE_LIMIT]
        if "rate_limit" in code or type_ in ("requests", "tokens", "rate_limit_error"):
            kind = ProviderErrorKind.RATE_LIMITED
        elif type_ == "invalid_request_error":
            kind = _refine_kind(ProviderErrorKind.BAD_REQUEST, code, message)
        elif "overloaded" in message.lower():
            kind = ProviderErrorKind.OVERLOADED
        else:
            kind = ProviderErrorKind.SERVER_ERROR
        details = {k: v for k, v in (("type", type_), ("code", code)) if v}
        return self.error(kind, message, details=details)

    def _parse_chunk(self, event: dict[str, Any]) -> tuple[list[StreamItem], str | None, TokenUsage | None]:
        """One `chat.completion.chunk`: its text and tool-call pieces, finish reason and usage."""
        if event.get("error") is not None:
            raise self._stream_error(event["error"])
        items: list[StreamItem] = []
        finish_reason: str | None = None
        try:
            for choice in event.get("choices") or ():
                if choice.get("index", 0) != 0:
                    continue  # n=1 is all we ask for
                delta = choice.get("delta") or {}
                text = delta.get("content")
                if isinstance(text, str) and text:
                    items.append(StreamDelta(text))
                for call in delta.get("tool_calls") or ():
                    function = call.get("function") or {}
                    items.append(
                        StreamToolCallDelta(
                            index=int(call["index"]),
                            id=str(call.get("id") or ""),
                            name=str(function.get("name") or ""),
                            arguments=str(function.get("arguments") or ""),
                        )
                    )
                if choice.get("finish_reason"):
                    finish_reason = _finish_reason(choice["finish_reason"])
            usage = _usage(event["usage"]) if event.get("usage") else None
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise self.error(ProviderErrorKind.PROTOCOL, f"unexpected chunk shape: {exc!r}") from None
        return items, finish_reason, usage


def _message(message: ChatMessage) -> dict[str, Any]:
    if message.role == "tool":
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
    if message.role == "assistant" and message.tool_calls:
        return {
            "role": "assistant",
            "content": message.content or None,  # null, not "", beside tool calls
            "tool_calls": [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in message.tool_calls
            ],
        }
    return {"role": message.role, "content": message.content}


def _refine_kind(kind: str, code: str, message: str) -> str:
    """A 4xx's kind from OpenAI's error code (and, for compatible servers, the wording)."""
    lowered = message.lower()
    if code == "context_length_exceeded" or "maximum context length" in lowered:
        return ProviderErrorKind.CONTEXT_LENGTH_EXCEEDED
    if code in _CONTENT_FILTER_CODES or "content management policy" in lowered:
        return ProviderErrorKind.CONTENT_FILTERED
    return kind


def _finish_reason(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("finish_reason is not a string")
    # Compatible servers add their own reasons (e.g. "abort"); the answer did end.
    return _FINISH_REASONS.get(value, "stop")


def _usage(usage: Any) -> TokenUsage:
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return TokenUsage(
        input_tokens=token_count(usage["prompt_tokens"]),
        output_tokens=token_count(usage["completion_tokens"]),
        cached_input_tokens=token_count(prompt_details.get("cached_tokens") or 0),
        reasoning_tokens=token_count(completion_details.get("reasoning_tokens") or 0),
    )
