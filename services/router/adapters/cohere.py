"""Cohere v2 Chat adapter (`POST {base_url}/v2/chat`, Bearer key).

Wire choices:
- Messages keep their roles (system/user/assistant/tool); an assistant turn with tool calls
  sends `tool_calls` (and its text as `tool_plan`, where Cohere keeps the model's reasoning
  before a call); a tool result is `{"role": "tool", "tool_call_id", "content"}`.
- Tools go out as `{"type": "function", "function": {...}}`. Cohere's `tool_choice` knows only
  REQUIRED and NONE: `required` -> REQUIRED, `none` -> NONE, a tool name -> only that tool is
  offered, with REQUIRED; `auto` sends nothing.
- top_p goes out as `p`, stop as `stop_sequences`, JSON mode as `response_format: json_object`.
- Usage is billed from `usage.billed_units` (what Cohere charges for); `usage.tokens` also
  counts the prompt template Cohere adds around the conversation, which is not billed.
  `usage.cached_tokens` (where sent) becomes `cached_input_tokens`; Cohere reports no
  reasoning tokens. Counts may arrive as floats (`5.0`).
- Streams: message-start, content-start/-delta/-end, tool-plan-delta,
  tool-call-start/-delta/-end, citation events, message-end (finish_reason and usage); a
  stream without message-end is PROTOCOL.

Finish reasons: COMPLETE/STOP_SEQUENCE -> stop, MAX_TOKENS/ERROR_LIMIT -> length, TOOL_CALL ->
tool_calls, ERROR_TOXIC -> content_filter; ERROR raises SERVER_ERROR and TIMEOUT raises TIMEOUT.
Errors: 429 -> RATE_LIMITED, 400 "too many tokens" -> CONTEXT_LENGTH_EXCEEDED, 401/403/498
-> AUTH, other 4xx -> BAD_REQUEST, 503 -> OVERLOADED, other 5xx -> SERVER_ERROR.
"""

from __future__ import annotations

import contextlib
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
from ._http_provider import HttpAnswer, HttpProvider, ToolCallAssembler, status_kind, token_count

_FINISH_REASONS = {
    "COMPLETE": "stop",
    "STOP_SEQUENCE": "stop",
    "MAX_TOKENS": "length",
    "ERROR_LIMIT": "length",
    "TOOL_CALL": "tool_calls",
    "ERROR_TOXIC": "content_filter",
}


class CohereProvider(HttpProvider):
    """ChatProvider for Cohere's v2 Chat API."""

    __slots__ = ()

    def __init__(
        self,
        *,
        api_key: str,
        name: str = "cohere",
        base_url: str = "https://api.cohere.com",
        timeout_s: float = 60.0,
        connect_timeout_s: float = 5.0,
        max_connections: int = 256,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """`base_url` is without `/v2`; `timeout_s` caps every attempt."""
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
        payload = await self._post("v2/chat", self._body(request, stream=False), request)
        try:
            message = payload["message"]
            text = "".join(str(part["text"]) for part in message.get("content") or () if part.get("type") == "text")
            calls = tuple(
                ToolCall(
                    id=str(call["id"]),
                    name=str(call["function"]["name"]),
                    arguments=str(call["function"].get("arguments") or "{}"),
                )
                for call in message.get("tool_calls") or ()
            )
            finish_reason = self._finish_reason(payload["finish_reason"])
            usage = _usage(payload["usage"])
        except ProviderError:
            raise
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise self.error(ProviderErrorKind.PROTOCOL, f"unexpected response shape: {exc!r}") from None
        return ProviderResponse(text=text, finish_reason=finish_reason, usage=usage, tool_calls=calls)

    async def stream(self, request: ProviderRequest) -> AsyncIterator[StreamItem]:
        async with self._open_stream("v2/chat", self._body(request, stream=True), request) as events:
            tools = ToolCallAssembler()
            end: StreamEnd | None = None
            async for data in events.payloads():
                if data == b"[DONE]":
                    break
                event = self.json_object(data)
                type_ = event.get("type")
                try:
                    message = (event.get("delta") or {}).get("message") or {}
                    if type_ == "content-delta":
                        text = (message.get("content") or {}).get("text")
                        if text:
                            yield StreamDelta(str(text))
                    elif type_ in ("tool-call-start", "tool-call-delta"):
                        call = message.get("tool_calls") or {}
                        function = call.get("function") or {}
                        piece = StreamToolCallDelta(
                            index=int(event["index"]),
                            id=str(call.get("id") or ""),
                            name=str(function.get("name") or ""),
                            arguments=str(function.get("arguments") or ""),
                        )
                        tools.add(piece.index, piece.id, piece.name, piece.arguments)
                        if piece.id or piece.arguments:
                            yield piece
                    elif type_ == "message-end":
                        delta = event["delta"]
                        end = StreamEnd(
                            finish_reason=self._finish_reason(delta["finish_reason"]),
                            usage=_usage(delta["usage"]),
                            tool_calls=tools.calls(empty_arguments="{}"),
                        )
                        break
                    # message-start, content-start/-end, tool-plan-delta, tool-call-end and
                    # citations carry nothing the interface returns
                except ProviderError:
                    raise
                except (AttributeError, KeyError, TypeError, ValueError) as exc:
                    raise self.error(ProviderErrorKind.PROTOCOL, f"unexpected event shape: {exc!r}") from None
            if end is None:
                raise self.error(ProviderErrorKind.PROTOCOL, "stream ended without message-end")
            await events.drain()
            yield end

    # -- wire format -----------------------------------------------------------------------

    @staticmethod
    def _body(request: ProviderRequest, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.upstream_model,
            "messages": [_message(m) for m in request.messages],
            "max_tokens": request.max_tokens,
            "stream": stream,
        }
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["p"] = request.top_p
        if request.stop:
            body["stop_sequences"] = list(request.stop)
        if request.json_mode:
            body["response_format"] = {"type": "json_object"}
        tools = list(request.tools)
        choice = request.tool_choice
        if tools and choice not in (None, "auto", "none", "required"):
            tools = [t for t in tools if t.name == choice]  # Cohere cannot force one tool by name
            choice = "required"
        if tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": tool.name,
                        **({"description": tool.description} if tool.description else {}),
                        "parameters": dict(tool.parameters) or {"type": "object", "properties": {}},
                    },
                }
                for tool in tools
            ]
            if choice in ("required", "none"):
                body["tool_choice"] = choice.upper()
        return body

    def _finish_reason(self, value: object) -> str:
        if value == "ERROR":
            raise self.error(ProviderErrorKind.SERVER_ERROR, "the generation failed (finish_reason ERROR)")
        if value == "TIMEOUT":
            raise self.error(ProviderErrorKind.TIMEOUT, "the generation timed out (finish_reason TIMEOUT)")
        if not isinstance(value, str):
            raise ValueError("finish_reason is not a string")
        return _FINISH_REASONS.get(value, "stop")

    def _status_error(self, response: HttpAnswer) -> ProviderError:
        status = response.status_code
        kind = ProviderErrorKind.AUTH if status == 498 else status_kind(status)  # 498: invalid token
        upstream_message = ""
        # Not Cohere's error shape: the status says enough.
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            upstream_message = str(json.loads(response.content).get("message") or "")
        if kind == ProviderErrorKind.BAD_REQUEST and "too many tokens" in upstream_message.lower():
            kind = ProviderErrorKind.CONTEXT_LENGTH_EXCEEDED
        return self.http_error(response, kind, upstream_message)


def _message(message: ChatMessage) -> dict[str, Any]:
    if message.role == "tool":
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
    if message.role == "assistant" and message.tool_calls:
        out: dict[str, Any] = {
            "role": "assistant",
            "tool_calls": [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments or "{}"}}
                for c in message.tool_calls
            ],
        }
        if message.content:
            out["tool_plan"] = message.content
        return out
    return {"role": message.role, "content": message.content}


def _usage(usage: Mapping[str, Any]) -> TokenUsage:
    billed = usage["billed_units"]
    input_tokens = token_count(billed.get("input_tokens") or 0)
    return TokenUsage(
        input_tokens=input_tokens,
        output_tokens=token_count(billed.get("output_tokens") or 0),
        # Prompt tokens served from Cohere's cache, where reported; never more than billed.
        cached_input_tokens=min(input_tokens, token_count(usage.get("cached_tokens") or 0)),
    )
