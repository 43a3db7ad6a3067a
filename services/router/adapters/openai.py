"""OpenAI Chat Completions adapter, also for any OpenAI-compatible server.

One long-lived `httpx.AsyncClient` per provider (HTTP/1.1, pooled keep-alive connections).
It is a plain client on purpose: the OpenTelemetry httpx instrumentation patches
`httpx.AsyncHTTPTransport` itself, so these requests get client spans and a `traceparent`
header without this module knowing about tracing.

Wire choices:
- The output limit goes out as `max_tokens`: every OpenAI-compatible server knows it, and
  OpenAI still accepts it for chat models (`max_completion_tokens` is only required by its
  reasoning models).
- Streams ask for `stream_options.include_usage`, so the last event carries token usage; a
  stream without a finish reason, usage and `[DONE]` is an error (PROTOCOL), as is one cut
  by the network after the response began.
- `request.timeout_s` (capped by the provider's `timeout_s`) bounds the whole attempt,
  stream included.

Errors map to `ProviderErrorKind`: 429 -> RATE_LIMITED (with Retry-After), 401/403 -> AUTH,
408 and timeouts -> TIMEOUT, other 4xx -> BAD_REQUEST, 5xx and connection failures ->
UNAVAILABLE, anything not in the wire format -> PROTOCOL. The API key never appears in an
error, a log line or a repr: upstream messages are scrubbed of it, and AUTH errors do not
quote the upstream message at all.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

from ..domain.provider import (
    ProviderError,
    ProviderErrorKind,
    ProviderRequest,
    ProviderResponse,
    StreamDelta,
    StreamEnd,
    StreamItem,
    TokenUsage,
)

_MESSAGE_LIMIT = 300
"""Longest upstream error text quoted in a ProviderError."""
_DRAIN_GRACE_S = 0.5
"""After `[DONE]`, how long to wait for the body's end so the connection can be reused."""
_MIN_REDACTED_KEY = 8
"""Keys shorter than this are placeholders (`"x"` in tests), not secrets: scrubbing them
would mangle every message."""


class _Secret:
    """Holds the API key so that neither repr nor vars() shows it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "_Secret('***')"


class OpenAIProvider:
    """ChatProvider for OpenAI's `/chat/completions` and compatible servers."""

    __slots__ = (
        "_base_url",
        "_client",
        "_connect_timeout_s",
        "_name",
        "_secret",
        "_timeout_s",
    )

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
        self._name = name
        self._base_url = base_url.rstrip("/")
        self._secret = _Secret(api_key)
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        default_headers = {
            **(headers or {}),
            "content-type": "application/json",
            "accept": "application/json",
            "user-agent": "interlock-router",
        }
        if api_key:  # keyless local servers exist; an empty Bearer is not even valid HTTP
            default_headers["authorization"] = f"Bearer {api_key}"
        self._client = httpx.AsyncClient(
            base_url=self._base_url + "/",
            # httpx masks `authorization` in its own reprs of these headers.
            headers=default_headers,
            timeout=httpx.Timeout(timeout_s, connect=min(connect_timeout_s, timeout_s)),
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
            ),
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"OpenAIProvider(name={self._name!r}, base_url={self._base_url!r})"

    @property
    def name(self) -> str:
        return self._name

    async def aclose(self) -> None:
        await self._client.aclose()

    async def chat(self, request: ProviderRequest) -> ProviderResponse:
        limit = self._attempt_timeout(request)
        try:
            async with asyncio.timeout(limit):
                response = await self._client.post(
                    "chat/completions",
                    content=self._body(request, stream=False),
                    headers=self._request_headers(request),
                    timeout=self._httpx_timeout(limit),
                )
        except TimeoutError:
            raise self._error(ProviderErrorKind.TIMEOUT, f"no answer within {limit:g}s") from None
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, limit) from exc
        if response.status_code >= 300:
            raise self._status_error(response)
        payload = self._json(response.content)
        try:
            choice = payload["choices"][0]
            message = choice["message"]
            content = message.get("content")
            finish_reason = choice["finish_reason"]
            usage = _usage(payload["usage"])
        except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
            raise self._error(ProviderErrorKind.PROTOCOL, f"unexpected response shape: {exc!r}") from None
        if not isinstance(finish_reason, str) or not (content is None or isinstance(content, str)):
            raise self._error(
                ProviderErrorKind.PROTOCOL,
                "unexpected response shape: content/finish_reason",
            )
        return ProviderResponse(text=content or "", finish_reason=finish_reason, usage=usage)

    async def stream(self, request: ProviderRequest) -> AsyncIterator[StreamItem]:
        limit = self._attempt_timeout(request)
        # One deadline for the whole stream; each await gets its own timeout scope, because
        # a scope held across a `yield` would cancel the consumer's code instead of ours.
        deadline = asyncio.get_running_loop().time() + limit
        http_request = self._client.build_request(
            "POST",
            "chat/completions",
            content=self._body(request, stream=True),
            headers=self._request_headers(request),
            timeout=self._httpx_timeout(limit),
        )
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._client.send(http_request, stream=True)
        except TimeoutError:
            raise self._error(ProviderErrorKind.TIMEOUT, f"no answer within {limit:g}s") from None
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, limit) from exc
        try:
            if response.status_code >= 300:
                try:
                    async with asyncio.timeout_at(deadline):
                        await response.aread()
                except (TimeoutError, httpx.HTTPError):
                    pass  # the status alone is enough to classify the failure
                raise self._status_error(response)
            chunks = response.aiter_bytes()
            decoder = _SSEDecoder()
            finish_reason: str | None = None
            usage: TokenUsage | None = None
            done = False
            while not done:
                try:
                    async with asyncio.timeout_at(deadline):
                        chunk = await anext(chunks, None)
                except TimeoutError:
                    raise self._error(ProviderErrorKind.TIMEOUT, f"stream not done within {limit:g}s") from None
                except httpx.TimeoutException:
                    raise self._error(ProviderErrorKind.TIMEOUT, f"stream stalled past {limit:g}s") from None
                except httpx.HTTPError as exc:
                    raise self._error(
                        ProviderErrorKind.PROTOCOL,
                        f"stream cut short: {type(exc).__name__}",
                    ) from exc
                payloads = decoder.feed(chunk) if chunk is not None else decoder.flush()
                for data in payloads:
                    if data == b"[DONE]":
                        done = True
                        break
                    texts, finish, chunk_usage = self._parse_chunk(self._json(data))
                    for text in texts:
                        yield StreamDelta(text)
                    finish_reason = finish or finish_reason
                    usage = chunk_usage or usage
                if chunk is None:
                    break
            missing = [
                what
                for what, absent in (
                    ("finish_reason", finish_reason is None),
                    ("usage", usage is None),
                )
                if absent
            ]
            if not done:
                missing.append("[DONE]")
            if missing or finish_reason is None or usage is None:
                raise self._error(
                    ProviderErrorKind.PROTOCOL,
                    "stream ended without " + ", ".join(missing),
                )
            await _drain(
                chunks,
                min(_DRAIN_GRACE_S, deadline - asyncio.get_running_loop().time()),
            )
            yield StreamEnd(finish_reason=finish_reason, usage=usage)
        finally:
            await response.aclose()

    # -- helpers ---------------------------------------------------------------------------

    def _attempt_timeout(self, request: ProviderRequest) -> float:
        return min(request.timeout_s, self._timeout_s) if request.timeout_s > 0 else self._timeout_s

    def _httpx_timeout(self, limit: float) -> httpx.Timeout:
        return httpx.Timeout(limit, connect=min(self._connect_timeout_s, limit))

    @staticmethod
    def _body(request: ProviderRequest, *, stream: bool) -> bytes:
        body: dict[str, Any] = {
            "model": request.upstream_model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "max_tokens": request.max_tokens,
        }
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()

    @staticmethod
    def _request_headers(request: ProviderRequest) -> dict[str, str] | None:
        return {"x-request-id": request.request_id} if request.request_id else None

    def _error(
        self,
        kind: str,
        message: str,
        status_code: int | None = None,
        retry_after_s: float | None = None,
        details: Mapping[str, str] | None = None,
    ) -> ProviderError:
        return ProviderError(
            provider=self._name,
            kind=kind,
            message=self._scrub(message),
            status_code=status_code,
            retry_after_s=retry_after_s,
            details={k: self._scrub(v) for k, v in (details or {}).items()},
        )

    def _scrub(self, text: str) -> str:
        key = self._secret.reveal()
        if len(key) >= _MIN_REDACTED_KEY and key in text:
            text = text.replace(key, "[redacted]")
        return text

    def _transport_error(self, exc: httpx.HTTPError, limit: float) -> ProviderError:
        # httpx messages name the host and the failure, never headers: safe to quote.
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if isinstance(exc, httpx.TimeoutException):
            return self._error(ProviderErrorKind.TIMEOUT, f"no answer within {limit:g}s ({detail})")
        if isinstance(exc, httpx.LocalProtocolError):
            # The request itself cannot be sent (e.g. a bad header value): not the server's fault.
            return self._error(ProviderErrorKind.BAD_REQUEST, f"request not sendable ({detail})")
        if isinstance(exc, httpx.TransportError):
            return self._error(ProviderErrorKind.UNAVAILABLE, f"connection failed ({detail})")
        return self._error(ProviderErrorKind.PROTOCOL, f"bad response ({detail})")

    def _status_error(self, response: httpx.Response) -> ProviderError:
        status = response.status_code
        if status == 429:
            kind = ProviderErrorKind.RATE_LIMITED
        elif status in (401, 403):
            kind = ProviderErrorKind.AUTH
        elif status == 408:
            kind = ProviderErrorKind.TIMEOUT
        elif 400 <= status < 500:
            kind = ProviderErrorKind.BAD_REQUEST
        elif status >= 500:
            kind = ProviderErrorKind.UNAVAILABLE
        else:
            kind = ProviderErrorKind.PROTOCOL  # a redirect or other status outside the API
        details: dict[str, str] = {}
        upstream_message = ""
        try:
            error = json.loads(response.content)["error"]
            upstream_message = str(error.get("message") or "")
            for field in ("type", "code", "param"):
                if error.get(field) is not None:
                    details[field] = str(error[field])
        except (ValueError, KeyError, TypeError, AttributeError, httpx.ResponseNotRead):
            pass  # not OpenAI's error shape: the status says enough
        upstream_id = response.headers.get("x-request-id")
        if upstream_id:
            details["upstream_request_id"] = upstream_id
        if kind == ProviderErrorKind.AUTH:
            # Upstream auth messages quote (part of) the key: never pass them on.
            message = "authentication failed"
        else:
            message = upstream_message[:_MESSAGE_LIMIT] or f"HTTP {status}"
        return self._error(
            kind,
            message,
            status_code=status,
            retry_after_s=_retry_after(response.headers),
            details=details,
        )

    def _stream_error(self, error: object) -> ProviderError:
        # An error event after a 200: the server failed mid-answer.
        if not isinstance(error, dict):
            return self._error(ProviderErrorKind.PROTOCOL, "error event in stream")
        type_, code = str(error.get("type") or ""), str(error.get("code") or "")
        if "rate_limit" in code or type_ in ("requests", "tokens", "rate_limit_error"):
            kind = ProviderErrorKind.RATE_LIMITED
        elif type_ == "invalid_request_error":
            kind = ProviderErrorKind.BAD_REQUEST
        else:
            kind = ProviderErrorKind.UNAVAILABLE
        message = str(error.get("message") or "error event in stream")[:_MESSAGE_LIMIT]
        details = {k: v for k, v in (("type", type_), ("code", code)) if v}
        return self._error(kind, message, details=details)

    def _json(self, data: bytes) -> dict[str, Any]:
        try:
            value = json.loads(data)
        except ValueError:
            raise self._error(ProviderErrorKind.PROTOCOL, "malformed JSON from provider") from None
        if not isinstance(value, dict):
            raise self._error(ProviderErrorKind.PROTOCOL, "JSON from provider is not an object")
        return value

    def _parse_chunk(self, event: dict[str, Any]) -> tuple[list[str], str | None, TokenUsage | None]:
        """One `chat.completion.chunk`: its text pieces, finish reason and usage."""
        if event.get("error") is not None:
            raise self._stream_error(event["error"])
        texts: list[str] = []
        finish_reason: str | None = None
        try:
            for choice in event.get("choices") or ():
                if choice.get("index", 0) != 0:
                    continue  # n=1 is all we ask for
                text = (choice.get("delta") or {}).get("content")
                if isinstance(text, str) and text:
                    texts.append(text)
                if choice.get("finish_reason"):
                    finish_reason = str(choice["finish_reason"])
            usage = _usage(event["usage"]) if event.get("usage") else None
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise self._error(ProviderErrorKind.PROTOCOL, f"unexpected chunk shape: {exc!r}") from None
        return texts, finish_reason, usage


def _usage(usage: Any) -> TokenUsage:
    prompt, completion = usage["prompt_tokens"], usage["completion_tokens"]
    if not isinstance(prompt, int) or not isinstance(completion, int):
        raise ValueError("token counts are not integers")
    return TokenUsage(input_tokens=prompt, output_tokens=completion)


def _retry_after(headers: httpx.Headers) -> float | None:
    """Seconds to wait from `retry-after-ms` (OpenAI's) or `retry-after` (seconds or a date)."""
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, float(when.timestamp() - time.time()))


async def _drain(chunks: AsyncIterator[bytes], grace_s: float) -> None:
    """Read the rest of a finished body briefly, so httpx can pool the connection again."""
    if grace_s <= 0:
        return
    try:
        async with asyncio.timeout(grace_s):
            async for _ in chunks:
                pass
    except (TimeoutError, httpx.HTTPError):
        pass  # the connection is then closed instead of reused; the answer is complete


class _SSEDecoder:
    """Incremental server-sent-events parser: bytes in, `data` payloads of whole events out.

    Lines end in LF or CRLF; `event`, `id`, `retry` fields and comments are ignored, as
    OpenAI's chat stream puts everything in `data`.
    """

    __slots__ = ("_buffer", "_data")

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        lines = (self._buffer + chunk).split(b"\n")
        self._buffer = lines.pop()
        return self._lines(lines)

    def flush(self) -> list[bytes]:
        """At end of body: an event not closed by a blank line still counts."""
        lines = [self._buffer, b""] if self._buffer else [b""]
        self._buffer = b""
        return self._lines(lines)

    def _lines(self, lines: list[bytes]) -> list[bytes]:
        events: list[bytes] = []
        for raw in lines:
            line = raw[:-1] if raw.endswith(b"\r") else raw
            if not line:
                if self._data:
                    events.append(b"\n".join(self._data))
                    self._data.clear()
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
        return events
