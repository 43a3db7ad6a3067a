"""Google Gemini adapter: the Gemini API's `generateContent` (generativelanguage.googleapis.com).

Wire choices:
- `POST {base_url}/{api_version}/models/{model}:generateContent`, and
  `:streamGenerateContent?alt=sse` for streams; the key goes in `x-goog-api-key` (never in
  the URL, where proxies and logs would keep it).
- System turns become `systemInstruction`; assistant turns are role `model`; tool results are
  `functionResponse` parts of a `user` turn (consecutive results share one turn, as Gemini
  wants one turn answering all calls of the previous one). Adjacent turns of one role merge.
- Tools go out as `functionDeclarations` with `parametersJsonSchema`, which takes any JSON
  Schema (the older `parameters` field rejects e.g. `additionalProperties`). Tool choice:
  auto -> AUTO, none -> NONE, required -> ANY, a name -> ANY limited to that name.
  JSON mode is `responseMimeType: application/json`.
- Gemini gives function calls no ids (newer models sometimes do; those are kept and sent
  back). Made-up ids are stable: a hash of the call's position, name and arguments, so the
  same answer streamed or not gets the same ids. Arguments (an object) are sent on as JSON.
- Usage: `promptTokenCount` already includes `cachedContentTokenCount`; `toolUsePromptTokenCount`
  is input too. Output is `candidatesTokenCount + thoughtsTokenCount` (thinking is billed
  as output), with the thoughts as `reasoning_tokens`.
- Finish: STOP -> stop (tool_calls when the answer has calls), MAX_TOKENS -> length, the
  safety family (SAFETY, RECITATION, PROHIBITED_CONTENT, ...) -> content_filter; a prompt
  blocked outright (`promptFeedback.blockReason`, no candidates) is a CONTENT_FILTERED error.
  A stream must end with a finish reason and usage, else PROTOCOL.

Errors are google.rpc.Status JSON: 429 RESOURCE_EXHAUSTED -> RATE_LIMITED (wait from the
RetryInfo detail, else Retry-After), 503 UNAVAILABLE -> OVERLOADED, 400 INVALID_ARGUMENT about
the token limit -> CONTEXT_LENGTH_EXCEEDED, 400 with reason API_KEY_INVALID and 401/403 ->
AUTH, 504 DEADLINE_EXCEEDED -> TIMEOUT, other 4xx -> BAD_REQUEST, other 5xx -> SERVER_ERROR.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
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

_FILTERED = frozenset(
    {"SAFETY", "RECITATION", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT"}
)
_BAD_CALL = frozenset({"MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS"})
_CONTEXT_WORDS = re.compile(
    r"token count|exceeds the maximum number of tokens|too many tokens|context (window|length)", re.I
)
_OWN_ID_PREFIX = "gemini-call-"
"""Marks ids this adapter made up, which Gemini must not be sent back."""
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


class GeminiProvider(HttpProvider):
    """ChatProvider for the Gemini API (Google AI Studio keys)."""

    __slots__ = ("_api_version",)

    def __init__(
        self,
        *,
        api_key: str,
        name: str = "gemini",
        base_url: str = "https://generativelanguage.googleapis.com",
        api_version: str = "v1beta",
        timeout_s: float = 60.0,
        connect_timeout_s: float = 5.0,
        max_connections: int = 256,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """`base_url` without the version; `timeout_s` caps every attempt (a request's own
        `timeout_s` can only lower it); `headers` are extra headers for every request."""
        self._api_version = api_version.strip("/")
        super().__init__(
            name=name,
            base_url=base_url,
            api_key=api_key,
            auth_headers={"x-goog-api-key": api_key} if api_key else {},
            timeout_s=timeout_s,
            connect_timeout_s=connect_timeout_s,
            max_connections=max_connections,
            headers=headers,
        )

    async def chat(self, request: ProviderRequest) -> ProviderResponse:
        payload = await self._post(self._path(request, "generateContent"), self._body(request), request)
        self._raise_if_error(payload)
        try:
            texts, calls, finish, usage = self._parse(payload, first_index=0)
        except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
            raise self.error(ProviderErrorKind.PROTOCOL, f"unexpected response shape: {exc!r}") from None
        if finish is None or usage is None:
            raise self.error(ProviderErrorKind.PROTOCOL, "response without finishReason or usageMetadata")
        return ProviderResponse(
            text="".join(texts),
            finish_reason=self._finish_reason(finish, bool(calls)),
            usage=usage,
            tool_calls=tuple(calls),
        )

    async def stream(self, request: ProviderRequest) -> AsyncIterator[StreamItem]:
        path = self._path(request, "streamGenerateContent")
        async with self._open_stream(path, self._body(request), request, {"alt": "sse"}) as events:
            finish: str | None = None
            usage: TokenUsage | None = None
            calls: list[ToolCall] = []
            async for data in events.payloads():
                payload = self.json_object(data)
                self._raise_if_error(payload)
                try:
                    texts, new_calls, chunk_finish, chunk_usage = self._parse(payload, first_index=len(calls))
                except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
                    raise self.error(ProviderErrorKind.PROTOCOL, f"unexpected chunk shape: {exc!r}") from None
                for text in texts:
                    if text:
                        yield StreamDelta(text)
                for call in new_calls:
                    # Gemini sends each call whole: one delta carries all of it.
                    yield StreamToolCallDelta(index=len(calls), id=call.id, name=call.name, arguments=call.arguments)
                    calls.append(call)
                finish = chunk_finish or finish
                usage = chunk_usage or usage
            missing = [what for what, value in (("finishReason", finish), ("usageMetadata", usage)) if value is None]
            if missing or finish is None or usage is None:
                raise self.error(ProviderErrorKind.PROTOCOL, "stream ended without " + ", ".join(missing))
            await events.drain()
            yield StreamEnd(
                finish_reason=self._finish_reason(finish, bool(calls)), usage=usage, tool_calls=tuple(calls)
            )

    # -- wire format -----------------------------------------------------------------------

    def _path(self, request: ProviderRequest, method: str) -> str:
        model = request.upstream_model.removeprefix("models/")
        return f"{self._api_version}/models/{model}:{method}"

    def _body(self, request: ProviderRequest) -> dict[str, Any]:
        system = [m.content for m in request.messages if m.role == "system" and m.content]
        names_by_id = {call.id: call.name for m in request.messages for call in m.tool_calls}
        contents: list[dict[str, Any]] = []
        for message in request.messages:
            if message.role == "system":
                continue
            role = "model" if message.role == "assistant" else "user"
            parts = self._parts(message, names_by_id)
            if contents and contents[-1]["role"] == role:
                contents[-1]["parts"].extend(parts)  # Gemini wants turns to alternate
            else:
                contents.append({"role": role, "parts": parts})
        body: dict[str, Any] = {"contents": contents}
        if system:
            body["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
        config: dict[str, Any] = {"maxOutputTokens": request.max_tokens}
        if request.temperature is not None:
            config["temperature"] = request.temperature
        if request.top_p is not None:
            config["topP"] = request.top_p
        if request.stop:
            config["stopSequences"] = list(request.stop)
        if request.json_mode:
            config["responseMimeType"] = "application/json"
        body["generationConfig"] = config
        if request.tools:
            declarations = []
            for tool in request.tools:
                declaration: dict[str, Any] = {"name": tool.name}
                if tool.description:
                    declaration["description"] = tool.description
                if tool.parameters:
                    declaration["parametersJsonSchema"] = dict(tool.parameters)
                declarations.append(declaration)
            body["tools"] = [{"functionDeclarations": declarations}]
        if request.tool_choice is not None:
            calling: dict[str, Any]
            if request.tool_choice in ("auto", "none"):
                calling = {"mode": request.tool_choice.upper()}
            elif request.tool_choice == "required":
                calling = {"mode": "ANY"}
            else:
                calling = {"mode": "ANY", "allowedFunctionNames": [request.tool_choice]}
            body["toolConfig"] = {"functionCallingConfig": calling}
        return body

    def _parts(self, message: ChatMessage, names_by_id: Mapping[str, str]) -> list[dict[str, Any]]:
        if message.role == "tool":
            response: dict[str, Any] = {
                "name": message.name or names_by_id.get(message.tool_call_id, ""),
                "response": _as_object(message.content, "result"),
            }
            if message.tool_call_id and not message.tool_call_id.startswith(_OWN_ID_PREFIX):
                response["id"] = message.tool_call_id
            return [{"functionResponse": response}]
        parts: list[dict[str, Any]] = [{"text": message.content}] if message.content or not message.tool_calls else []
        for call in message.tool_calls:
            try:
                args = json.loads(call.arguments or "{}")
            except ValueError:
                raise self.error(
                    ProviderErrorKind.BAD_REQUEST, f"tool call {call.name!r} has arguments that are not JSON"
                ) from None
            function_call: dict[str, Any] = {"name": call.name, "args": args if isinstance(args, dict) else {}}
            if call.id and not call.id.startswith(_OWN_ID_PREFIX):
                function_call["id"] = call.id
            parts.append({"functionCall": function_call})
        return parts

    def _parse(
        self, payload: Mapping[str, Any], *, first_index: int
    ) -> tuple[list[str], list[ToolCall], str | None, TokenUsage | None]:
        """One GenerateContentResponse: text pieces, whole calls, raw finish reason, usage."""
        candidates = payload.get("candidates") or []
        feedback = payload.get("promptFeedback") or {}
        if not candidates and feedback.get("blockReason"):
            raise self.error(
                ProviderErrorKind.CONTENT_FILTERED,
                f"prompt blocked: {feedback['blockReason']}",
                details={"block_reason": str(feedback["blockReason"])},
            )
        texts: list[str] = []
        calls: list[ToolCall] = []
        finish: str | None = None
        if candidates:
            candidate = candidates[0]
            for part in (candidate.get("content") or {}).get("parts") or ():
                if part.get("thought"):
                    continue  # thought summaries are not the answer
                if isinstance(part.get("text"), str):
                    texts.append(part["text"])
                call = part.get("functionCall")
                if call is not None:
                    name = str(call["name"])
                    arguments = json.dumps(call.get("args") or {}, ensure_ascii=False)
                    index = first_index + len(calls)
                    call_id = str(call.get("id") or "") or _stable_id(index, name, arguments)
                    calls.append(ToolCall(id=call_id, name=name, arguments=arguments))
            if candidate.get("finishReason"):
                finish = str(candidate["finishReason"])
        metadata = payload.get("usageMetadata")
        # Streams repeat usage so far on every chunk; the caller keeps the last.
        usage = _usage(metadata) if metadata else None
        return texts, calls, finish, usage

    def _finish_reason(self, finish: str, has_calls: bool) -> str:
        if finish == "MAX_TOKENS":
            return "length"
        if finish in _FILTERED:
            return "content_filter"
        if finish in _BAD_CALL:
            # The model botched a tool call; another attempt may not.
            raise self.error(ProviderErrorKind.PROTOCOL, f"model ended with {finish}")
        return "tool_calls" if has_calls else "stop"

    # -- errors ----------------------------------------------------------------------------

    def _raise_if_error(self, payload: Mapping[str, Any]) -> None:
        """A 200 can still carry an error (a stream failing midway)."""
        error = payload.get("error")
        if isinstance(error, dict):
            code = error.get("code")
            status = code if isinstance(code, int) else 500
            kind, details, retry = self._classify(status, error)
            message = str(error.get("message") or "error in stream")[:MESSAGE_LIMIT]
            raise self.error(kind, message, retry_after_s=retry, details=details)

    def _status_error(self, response: HttpAnswer) -> ProviderError:
        try:
            error = json.loads(response.content).get("error")
        except (ValueError, AttributeError):
            error = None
        if not isinstance(error, dict):
            return self.http_error(response, status_kind(response.status_code), "")
        kind, details, retry = self._classify(response.status_code, error)
        found = self.http_error(response, kind, str(error.get("message") or ""), details)
        return dataclasses.replace(found, retry_after_s=retry) if retry is not None else found

    @staticmethod
    def _classify(status: int, error: Mapping[str, Any]) -> tuple[str, dict[str, str], float | None]:
        """Kind, details and RetryInfo wait of a google.rpc.Status error."""
        rpc_status = str(error.get("status") or "")
        message = str(error.get("message") or "")
        reason = ""
        retry: float | None = None
        for detail in error.get("details") or ():
            if not isinstance(detail, dict):
                continue
            type_ = str(detail.get("@type") or "")
            if type_.endswith("google.rpc.ErrorInfo"):
                reason = str(detail.get("reason") or "")
            elif type_.endswith("google.rpc.RetryInfo"):
                retry = _duration_s(detail.get("retryDelay"))
        kind = status_kind(status)
        if status == 429 or rpc_status == "RESOURCE_EXHAUSTED":
            kind = ProviderErrorKind.RATE_LIMITED
        elif rpc_status == "UNAVAILABLE":
            kind = ProviderErrorKind.OVERLOADED
        elif status == 504 or rpc_status == "DEADLINE_EXCEEDED":
            kind = ProviderErrorKind.TIMEOUT
        elif reason == "API_KEY_INVALID" or rpc_status in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
            kind = ProviderErrorKind.AUTH
        elif kind == ProviderErrorKind.BAD_REQUEST and _CONTEXT_WORDS.search(message):
            kind = ProviderErrorKind.CONTEXT_LENGTH_EXCEEDED
        details = {k: v for k, v in (("status", rpc_status), ("reason", reason)) if v}
        return kind, details, retry


def _usage(metadata: Mapping[str, Any]) -> TokenUsage:
    thoughts = token_count(metadata.get("thoughtsTokenCount") or 0)
    return TokenUsage(
        input_tokens=token_count(metadata.get("promptTokenCount") or 0)
        + token_count(metadata.get("toolUsePromptTokenCount") or 0),
        output_tokens=token_count(metadata.get("candidatesTokenCount") or 0) + thoughts,
        cached_input_tokens=token_count(metadata.get("cachedContentTokenCount") or 0),
        reasoning_tokens=thoughts,
    )


def _stable_id(index: int, name: str, arguments: str) -> str:
    digest = hashlib.sha256(f"{index}\0{name}\0{arguments}".encode()).hexdigest()[:16]
    return f"{_OWN_ID_PREFIX}{digest}"


def _as_object(text: str, key: str) -> dict[str, Any]:
    """A tool result as the JSON object Gemini wants: the text itself if it is one."""
    try:
        value = json.loads(text)
    except ValueError:
        return {key: text}
    return value if isinstance(value, dict) else {key: value}


def _duration_s(value: object) -> float | None:
    """Seconds of a protobuf Duration in JSON (`"27s"`, `"1.5s"`)."""
    match = _DURATION.match(value) if isinstance(value, str) else None
    return float(match.group(1)) if match else None
