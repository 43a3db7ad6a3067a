"""Fake of Google's Gemini API (generativelanguage `generateContent`), mounted at `/gemini`.

Endpoints, for any API version (`v1`, `v1beta`, `v1alpha`):
- `POST /<version>/models/<model>:generateContent`: one `GenerateContentResponse`.
- `POST /<version>/models/<model>:streamGenerateContent?alt=sse`: SSE, one response per token
  (usage so far on each), then one with `finishReason` and the whole `usageMetadata`; without
  `alt=sse` the same responses as one JSON array, as Gemini does.

The key goes in `x-goog-api-key` (or `?key=`); without one: 403 PERMISSION_DENIED. Errors use
google.rpc's shape `{"error": {"code", "message", "status", "details"}}`; 429 carries a
QuotaFailure and a RetryInfo (`retryDelay` from `retry_after`, default 1s), as Gemini sends.
Answers, tool calls, usage and directives: see `echo`. Gemini specifics: `functionCall`
parts carry no id; a forced tool is `toolConfig.functionCallingConfig` mode ANY (the first
of `allowedFunctionNames`, if any); `finishReason` is STOP (also for function calls) or MAX_TOKENS;
`finish=SAFETY` (or RECITATION, ...) ends with that reason and no content;
`cached_tokens` -> `cachedContentTokenCount` (part of `promptTokenCount`);
`reasoning_tokens` -> `thoughtsTokenCount` (not part of `candidatesTokenCount`);
`error_after=<n>` -> after n pieces an SSE event `{"error": {...}}` (500 INTERNAL, or `status`'s).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Mapping
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

_PATH = re.compile(r"^/(v1|v1beta|v1alpha)/models/(?P<model>[^/]+):(?P<method>generateContent|streamGenerateContent)$")
_RPC_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_MESSAGES = {
    400: "Request contains an invalid argument.",
    401: "Request had invalid authentication credentials.",
    403: "The caller does not have permission",
    404: "models/unknown is not found for API version v1beta, or is not supported for generateContent.",
    429: "You exceeded your current quota, please check your plan and billing details.",
    500: "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
    503: "The model is overloaded. Please try again later.",
    504: "Deadline expired before operation could complete.",
}


def _field(obj: Mapping[str, Any], camel: str) -> Any:
    """Gemini's JSON accepts both `camelCase` and `snake_case` field names."""
    if camel in obj:
        return obj[camel]
    return obj.get(re.sub(r"([A-Z])", r"_\1", camel).lower())


def error_body(status: int, message: str, details: list[dict[str, Any]] | None = None) -> bytes:
    """google.rpc.Status as JSON, the shape of every Gemini error."""
    rpc_status = _RPC_STATUS.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")
    error: dict[str, Any] = {"code": status, "message": message, "status": rpc_status}
    if details:
        error["details"] = details
    return dumps({"error": error})


class _Invalid(Exception):
    """A request Gemini answers with 400 INVALID_ARGUMENT."""


def _parse(body: object) -> tuple[list[Turn], list[EchoTool], str | None, int | None, bool]:
    """Turns, tools, forced tool, output limit and JSON mode of a GenerateContentRequest."""
    if not isinstance(body, dict):
        raise _Invalid("Invalid JSON payload received. Expected an object.")
    turns: list[Turn] = []
    system = _field(body, "systemInstruction")
    if isinstance(system, dict):
        texts = [p.get("text", "") for p in system.get("parts") or () if isinstance(p, dict)]
        turns.append(Turn("system", " ".join(t for t in texts if isinstance(t, str))))
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise _Invalid("* GenerateContentRequest.contents: contents is not specified")
    for i, content in enumerate(contents):
        if not isinstance(content, dict) or not isinstance(content.get("parts"), list) or not content["parts"]:
            raise _Invalid(f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty.")
        role = content.get("role") or "user"
        if role not in ("user", "model"):
            raise _Invalid(f"Please use a valid role: user, model. Got {role!r} at contents[{i}].")
        texts, results = [], []
        for part in content["parts"]:
            if not isinstance(part, dict):
                raise _Invalid(f"* GenerateContentRequest.contents[{i}].parts: parts must be objects")
            if isinstance(part.get("text"), str):
                texts.append(part["text"])
            response = _field(part, "functionResponse")
            if isinstance(response, dict):
                results.append(json.dumps(response.get("response"), ensure_ascii=False))
            call = _field(part, "functionCall")
            if isinstance(call, dict):
                texts.append(json.dumps(call.get("args"), ensure_ascii=False))
        if results:
            turns.append(Turn("tool", " ".join(results)))
        else:
            turns.append(Turn("user" if role == "user" else "assistant", " ".join(texts)))
    tools: list[EchoTool] = []
    for tool in body.get("tools") or ():
        for declaration in (_field(tool, "functionDeclarations") or ()) if isinstance(tool, dict) else ():
            schema = declaration.get("parameters") or _field(declaration, "parametersJsonSchema")
            tools.append(EchoTool(str(declaration.get("name")), first_property(schema)))
    forced: str | None = None
    tool_config = _field(body, "toolConfig")
    calling = _field(tool_config, "functionCallingConfig") if isinstance(tool_config, dict) else None
    if isinstance(calling, dict):
        mode = str(calling.get("mode") or "AUTO").upper()
        allowed = _field(calling, "allowedFunctionNames") or []
        if mode == "NONE":
            tools = []  # no call, whatever the directives say
        elif mode == "ANY":
            forced = str(allowed[0]) if allowed else "*"
    config = _field(body, "generationConfig") or {}
    if not isinstance(config, dict):
        raise _Invalid("* GenerateContentRequest.generation_config: must be an object")
    max_tokens = _field(config, "maxOutputTokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise _Invalid("* GenerateContentRequest.generation_config.max_output_tokens: must be a positive integer")
    json_mode = _field(config, "responseMimeType") == "application/json"
    return turns, tools, forced, max_tokens, json_mode


class GeminiFakeApp:
    """ASGI app of the fake Gemini API (paths without the mount prefix)."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers: Headers = [(b"x-gemini-service-tier", b"standard")]
        api_key = fault_spec = b""
        for name, value in scope["headers"]:
            if name == b"x-goog-api-key":
                api_key = value
            elif name == FAULT_HEADER:
                fault_spec = value
        query = dict(
            pair.partition("=")[::2] for pair in scope.get("query_string", b"").decode("latin-1").split("&") if pair
        )
        match = _PATH.match(scope["path"])
        if match is None or scope["method"] != "POST":
            status = 404 if match is None else 405
            await _respond(send, status, error_body(status, f"Invalid path or method: {scope['path']}"), headers)
            return
        if not api_key and not query.get("key"):
            message = (
                "Method doesn't allow unregistered callers (callers without established identity). "
                "Please use API Key or other form of API consumer identity to call this API."
            )
            await _respond(send, 403, error_body(403, message), headers)
            return
        raw = await _read_body(receive)
        try:
            body = json.loads(raw)
        except ValueError:
            await _respond(send, 400, error_body(400, "Invalid JSON payload received."), headers)
            return
        model = match["model"]
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
        try:
            turns, tools, forced, max_tokens, json_mode = _parse(body)
        except _Invalid as exc:
            await _respond(send, 400, error_body(400, str(exc)), headers)
            return
        answer = echo_answer(turns, max_tokens, fault, tools=tools, forced_tool=forced, json_mode=json_mode)
        head = {"modelVersion": model.partition("@")[0], "responseId": f"fake-gemini-{next(self._ids):08d}"}
        if match["method"] == "generateContent":
            result = dumps(
                {
                    "candidates": [self._candidate(answer, fault, answer.pieces)],
                    **self._usage(answer, fault),
                    **head,
                }
            )
            if fault.truncate_after is not None:
                result = result[: fault.truncate_after]  # malformed JSON on purpose
            await _respond(send, 200, result, headers)
            return
        await self._stream(send, receive, answer, fault, head, headers, sse=query.get("alt") == "sse")

    @staticmethod
    def _candidate(answer: EchoAnswer, fault: Fault, pieces: list[str], final: bool = True) -> dict[str, Any]:
        candidate: dict[str, Any] = {"index": 0}
        if fault.finish and final:
            # Blocked answers carry no content, only the reason and ratings.
            candidate["finishReason"] = fault.finish
            candidate["safetyRatings"] = [
                {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}
            ]
            return candidate
        if answer.tool_name is not None:
            parts: list[dict[str, Any]] = [{"functionCall": {"name": answer.tool_name, "args": answer.tool_arguments}}]
        else:
            parts = [{"text": "".join(pieces)}]
        candidate["content"] = {"parts": parts, "role": "model"}
        if final:
            candidate["finishReason"] = "MAX_TOKENS" if answer.truncated else "STOP"
        return candidate

    @staticmethod
    def _usage(answer: EchoAnswer, fault: Fault, final: bool = True) -> dict[str, Any]:
        prompt = answer.prompt_tokens
        usage: dict[str, Any] = {"promptTokenCount": prompt}
        cached = min(fault.cached_tokens, prompt)
        if cached:
            usage["cachedContentTokenCount"] = cached
        output = 0
        if final:
            output = 0 if fault.finish else answer.output_tokens
            usage["candidatesTokenCount"] = output
            if fault.reasoning_tokens:
                usage["thoughtsTokenCount"] = fault.reasoning_tokens
                output += fault.reasoning_tokens
        usage["totalTokenCount"] = prompt + output
        usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
        if cached:
            usage["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": cached}]
        return {"usageMetadata": usage}

    async def _stream(
        self,
        send: Send,
        receive: Receive,
        answer: EchoAnswer,
        fault: Fault,
        head: dict[str, Any],
        headers: Headers,
        *,
        sse: bool,
    ) -> None:
        partial_usage = self._usage(answer, fault, final=False)
        status = fault.status or 500
        error = error_body(status, fault.message or _MESSAGES.get(status, f"Injected fault {status}."))
        if answer.tool_name is not None or fault.finish:
            chunks: list[bytes] = []  # function calls come whole, in the final response
        else:
            chunks = [
                dumps({"candidates": [self._candidate(answer, fault, [p], final=False)], **partial_usage, **head})
                for p in answer.pieces
            ]
        last = dumps(
            {
                "candidates": [self._candidate(answer, fault, answer.pieces if answer.tool_name else [""])],
                **self._usage(answer, fault),
                **head,
            }
        )
        if sse:
            await send_stream(
                send,
                receive,
                content_type=b"text/event-stream",
                headers=headers,
                head=[],
                pieces=[b"data: " + c + b"\r\n\r\n" for c in chunks],
                tail=[b"data: " + last + b"\r\n\r\n"],
                fault=fault,
                error_event=b"data: " + error + b"\r\n\r\n",
            )
            return
        # Without alt=sse Gemini streams one JSON array, an element per response.
        await send_stream(
            send,
            receive,
            content_type=b"application/json",
            headers=headers,
            head=[b"["],
            pieces=[(b"," if i else b"") + c for i, c in enumerate(chunks)],
            tail=[(b"," if chunks else b"") + last, b"]"],
            fault=fault,
            error_event=b"," + error + b"]",
        )

    async def _fault_status(self, send: Send, fault: Fault, headers: Headers) -> None:
        status = fault.status or 500
        details: list[dict[str, Any]] = []
        if status == 429:
            details.append(
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [
                        {
                            "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                            "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                            "quotaValue": "10",
                        }
                    ],
                }
            )
        if status == 429 or fault.retry_after is not None:
            details.append(
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{fault.retry_after or '1'}s"}
            )
        message = fault.message or _MESSAGES.get(status, f"Injected fault {status}.")
        await _respond(send, status, error_body(status, message, details), headers)
