"""Mistral adapter: Mistral's chat completions API (`POST {base_url}/v1/chat/completions`).

Mistral's chat API is OpenAI's in shape (Bearer key, `choices`, `delta`, tool calls with
ids, SSE ending in `data: [DONE]`), so this adapter is the OpenAI adapter with Mistral's
differences applied:
- The body: no `stream_options` (Mistral refuses unknown fields with 422 and sends stream
  usage unasked, in the last chunk); a required tool is `tool_choice: "any"`; tool results
  carry the tool's `name`; `random_seed` and `safe_prompt` are this provider's settings.
- Errors: `{"object": "error", "message", "type", "code"}` at the top level (a 422 has a
  `message.detail` list); wording "maximum context length" / "too large for model" ->
  CONTEXT_LENGTH_EXCEEDED; 422 -> BAD_REQUEST; statuses as for every HTTP provider
  (429 -> RATE_LIMITED with Retry-After, 401/403 -> AUTH, 503 -> OVERLOADED, 5xx ->
  SERVER_ERROR).
- Finish reasons: `model_length` -> length, `error` -> a SERVER_ERROR failure.
Usage is OpenAI's `prompt_tokens` / `completion_tokens` (with `prompt_tokens_details.
cached_tokens` where Mistral reports it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..domain.provider import ProviderError, ProviderErrorKind, ProviderRequest, StreamItem, TokenUsage
from ._http_provider import HttpAnswer, status_kind
from .openai import OpenAIProvider

_CONTEXT_WORDS = ("maximum context length", "too large for model", "context length")


class MistralProvider(OpenAIProvider):
    """ChatProvider for Mistral's La Plateforme (api.mistral.ai)."""

    __slots__ = ("_random_seed", "_safe_prompt")

    def __init__(
        self,
        *,
        api_key: str,
        name: str = "mistral",
        base_url: str = "https://api.mistral.ai",
        timeout_s: float = 60.0,
        connect_timeout_s: float = 5.0,
        max_connections: int = 256,
        headers: Mapping[str, str] | None = None,
        random_seed: int | None = None,
        safe_prompt: bool = False,
    ) -> None:
        """`base_url` without `/v1`; `random_seed` makes sampling repeatable; `safe_prompt`
        prepends Mistral's safety system prompt. `timeout_s` caps every attempt."""
        self._random_seed = random_seed
        self._safe_prompt = safe_prompt
        self._init_openai(
            name=name,
            base_url=base_url,
            api_key=api_key,
            auth_headers={"authorization": f"Bearer {api_key}"} if api_key else {},
            path="v1/chat/completions",
            params=None,
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            max_connections=max_connections,
            headers=headers,
        )

    def _body(self, request: ProviderRequest, *, stream: bool) -> dict[str, Any]:  # type: ignore[override]
        body = OpenAIProvider._body(request, stream=stream)
        body.pop("stream_options", None)
        if body.get("tool_choice") == "required":
            body["tool_choice"] = "any"
        names_by_id = {call.id: call.name for m in request.messages for call in m.tool_calls}
        for wire, message in zip(body["messages"], request.messages, strict=True):
            if message.role == "tool":
                wire["name"] = message.name or names_by_id.get(message.tool_call_id, "")
        if self._random_seed is not None:
            body["random_seed"] = self._random_seed
        if self._safe_prompt:
            body["safe_prompt"] = True
        return body

    def json_object(self, data: bytes) -> dict[str, Any]:
        # Every answer and chunk passes here: map Mistral's own finish reasons before OpenAI's
        # parsing would read them as "stop".
        value = super().json_object(data)
        for choice in value.get("choices") or ():
            reason = choice.get("finish_reason") if isinstance(choice, dict) else None
            if reason == "model_length":  # the context window filled up
                choice["finish_reason"] = "length"
            elif reason == "error":
                raise self.error(ProviderErrorKind.SERVER_ERROR, "generation ended with finish_reason error")
        return value

    def _parse_chunk(self, event: dict[str, Any]) -> tuple[list[StreamItem], str | None, TokenUsage | None]:
        # Mistral's error event is its error body, not OpenAI's `{"error": {...}}`.
        if event.get("object") == "error":
            raise self._stream_error(event)
        return super()._parse_chunk(event)

    def _status_error(self, response: HttpAnswer) -> ProviderError:
        kind = status_kind(response.status_code)
        details: dict[str, str] = {}
        upstream_message = ""
        try:
            error = json.loads(response.content)
            message = error.get("message")
            # A 422's message is an object holding pydantic's `detail` list.
            upstream_message = message if isinstance(message, str) else json.dumps(message)[:300]
            for field in ("type", "code", "param"):
                if error.get(field) is not None:
                    details[field] = str(error[field])
        except (ValueError, TypeError, AttributeError):
            pass  # not Mistral's error shape: the status says enough
        if kind == ProviderErrorKind.BAD_REQUEST and any(w in upstream_message.lower() for w in _CONTEXT_WORDS):
            kind = ProviderErrorKind.CONTEXT_LENGTH_EXCEEDED
        return self.http_error(response, kind, upstream_message, details)
