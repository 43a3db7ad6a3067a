"""What every HTTP provider adapter shares: the pooled client, deadlines, SSE, errors, secrets.

Each provider module (openai, anthropic, cohere, azure_openai) subclasses `HttpProvider` and
adds only its wire format: the request body, the answer and stream-event parsing, and how its
error bodies refine the canonical `ProviderErrorKind`.

One `HttpPool` per provider (`http_pool.py`: HTTP/1.1, pooled keep-alive connections on
asyncio protocols, httptools' parser), made on first use inside the router's event loop;
with it instead of aiohttp the router spends 1.37 rather than 1.59 ms of CPU a call at
100 calls/s (docs/BENCHMARKS.md).
Every request carries the W3C `traceparent` of its attempt; a sampled attempt also gets a
CLIENT span `POST` for the request (method, server, URL without its query, status), made
here rather than by an OpenTelemetry HTTP-client instrumentation, whose hooks cost the router
a tenth of its CPU per call whether the call is sampled or not.

`request.timeout_s` (capped by the provider's `timeout_s`) bounds the whole attempt, stream
included. The API key never appears in an error, a log line or a repr: upstream messages are
scrubbed of it, and AUTH errors do not quote the upstream message at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, StatusCode

from interlock import _json

from ..domain.provider import (
    ProviderError,
    ProviderErrorKind,
    ProviderRequest,
    ToolCall,
)
from .http_pool import ConnectFailed, ConnectionCut, HttpPool, HttpResponse, TransportError

_tracer = trace.get_tracer("interlock.router.http")

MESSAGE_LIMIT = 300
"""Longest upstream error text quoted in a ProviderError."""
_DRAIN_GRACE_S = 0.5
"""After a stream's last event, how long to wait for the body's end so the connection can be reused."""
_MIN_REDACTED_KEY = 8
"""Keys shorter than this are placeholders (`"x"` in tests), not secrets: scrubbing them
would mangle every message."""


class Secret:
    """Holds an API key so that neither repr nor vars() shows it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"


def status_kind(status: int) -> str:
    """The canonical kind an HTTP status means before the body is read; providers refine it."""
    if status == 429:
        return ProviderErrorKind.RATE_LIMITED
    if status in (401, 403):
        return ProviderErrorKind.AUTH
    if status == 408:
        return ProviderErrorKind.TIMEOUT
    if 400 <= status < 500:
        return ProviderErrorKind.BAD_REQUEST
    if status in (503, 529):
        # 503 is how OpenAI-style servers say "overloaded"; 529 is Anthropic's.
        return ProviderErrorKind.OVERLOADED
    if status >= 500:
        return ProviderErrorKind.SERVER_ERROR
    return ProviderErrorKind.PROTOCOL  # a redirect or other status outside the API


def retry_after_s(headers: Mapping[str, str]) -> float | None:
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


def token_count(value: Any) -> int:
    """A token count from JSON: an int, or a float with no fraction (Cohere sends `5.0`)."""
    if isinstance(value, bool):
        raise ValueError("token count is a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError(f"token count {value!r} is not an integer")


class HttpAnswer:
    """A provider's answer read whole: status, headers (case-insensitive) and body."""

    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status_code: int, headers: Mapping[str, str], content: bytes) -> None:
        self.status_code = status_code
        self.headers = headers
        self.content = content


class ToolCallAssembler:
    """Joins streamed tool-call pieces (by index) into whole `ToolCall`s."""

    __slots__ = ("_calls",)

    def __init__(self) -> None:
        self._calls: dict[int, list[str]] = {}

    def add(self, index: int, id_: str = "", name: str = "", arguments: str = "") -> None:
        call = self._calls.setdefault(index, ["", "", ""])
        call[0] = call[0] or id_
        call[1] = call[1] or name
        call[2] += arguments

    def __len__(self) -> int:
        return len(self._calls)

    def calls(self, empty_arguments: str = "") -> tuple[ToolCall, ...]:
        """The calls in index order; `empty_arguments` replaces an empty arguments text."""
        return tuple(
            ToolCall(id=id_, name=name, arguments=arguments or empty_arguments)
            for _, (id_, name, arguments) in sorted(self._calls.items())
        )


class SSEDecoder:
    """Incremental server-sent-events parser: bytes in, `data` payloads of whole events out.

    Lines end in LF or CRLF; `event`, `id`, `retry` fields and comments are ignored: every
    provider spoken here repeats the event type inside the JSON of `data`.
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


class EventStream:
    """The SSE payloads of one streamed answer, read under the attempt's deadline."""

    __slots__ = ("_body",)

    def __init__(self, body: BodyChunks) -> None:
        self._body = body

    async def payloads(self) -> AsyncIterator[bytes]:
        """Each event's `data`, until the body ends; raises TIMEOUT or PROTOCOL (network cut)."""
        decoder = SSEDecoder()
        while True:
            chunk = await self._body.next_chunk()
            for data in decoder.feed(chunk) if chunk else decoder.flush():
                yield data
            if not chunk:
                return

    async def drain(self) -> None:
        """Read the rest of a finished body briefly, so the connection can be pooled again."""
        await self._body.drain()


class BodyChunks:
    """The body of a streamed answer, chunk by chunk, each read under the attempt's deadline."""

    __slots__ = ("_deadline", "_limit", "_provider", "_response")

    def __init__(self, provider: HttpProvider, response: HttpResponse, deadline: float, limit: float) -> None:
        self._provider = provider
        self._response = response
        self._deadline = deadline
        self._limit = limit

    async def next_chunk(self) -> bytes:
        """The next bytes received; b"" once the body ended. Raises TIMEOUT or PROTOCOL (cut)."""
        # A timeout scope per read: one held across the caller's `yield` would cancel its consumer.
        try:
            async with asyncio.timeout_at(self._deadline):
                return await self._response.next_chunk()
        except TimeoutError:
            raise self._provider.error(ProviderErrorKind.TIMEOUT, f"stream not done within {self._limit:g}s") from None
        except TransportError as exc:
            raise self._provider.error(ProviderErrorKind.PROTOCOL, f"stream cut short: {type(exc).__name__}") from exc

    async def drain(self) -> None:
        grace_s = min(_DRAIN_GRACE_S, self._deadline - asyncio.get_running_loop().time())
        if grace_s <= 0:
            return
        try:
            async with asyncio.timeout(grace_s):
                while await self._response.next_chunk():
                    pass
        except (TimeoutError, TransportError):
            pass  # the connection is then closed instead of reused; the answer is complete


class HttpProvider:
    """Base of the HTTP adapters: client, deadlines, transport errors and secret scrubbing."""

    __slots__ = (
        "_base_url",
        "_connect_timeout_s",
        "_headers",
        "_max_connections",
        "_name",
        "_pool",
        "_secret",
        "_timeout_s",
    )

    _request_id_header = "x-request-id"
    """Response header carrying the provider's own request id (quoted in error details)."""

    def __init__(
        self,
        *,
        name: str,
        base_url: str,
        api_key: str,
        auth_headers: Mapping[str, str],
        timeout_s: float,
        connect_timeout_s: float,
        max_connections: int,
        headers: Mapping[str, str] | None,
    ) -> None:
        self._name = name
        self._base_url = base_url.rstrip("/")
        self._secret = Secret(api_key)
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._max_connections = max_connections
        self._headers = {
            **(headers or {}),
            "content-type": "application/json",
            "accept": "application/json",
            "user-agent": "interlock-router",
            **auth_headers,
        }
        self._pool: HttpPool | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self._name!r}, base_url={self._base_url!r})"

    @property
    def name(self) -> str:
        return self._name

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None

    def _client(self) -> HttpPool:
        if self._pool is None:
            # Deadlines are the attempt's own (asyncio.timeout around each await); the pool
            # only bounds the connect. Raises ValueError for a base URL it cannot serve.
            self._pool = HttpPool(
                self._base_url,
                max_connections=self._max_connections,
                connect_timeout_s=self._connect_timeout_s,
                headers=self._headers,
            )
        return self._pool

    # -- to be refined by each provider ----------------------------------------------------

    def _status_error(self, response: HttpAnswer) -> ProviderError:
        """A non-2xx answer as a ProviderError; providers override to read their error body."""
        return self.http_error(response, status_kind(response.status_code), "")

    # -- I/O -------------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return f"{self._base_url}/{path}"

    async def _send(
        self, path: str, body: Mapping[str, Any], headers: Mapping[str, str], params: Mapping[str, str] | None
    ) -> HttpResponse:
        target = f"{_target(path)}?{urlencode(params)}" if params else _target(path)
        return await self._client().request("POST", target, headers, _dumps(body))

    async def _post(
        self,
        path: str,
        body: Mapping[str, Any],
        request: ProviderRequest,
        params: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """POST a JSON body, return the JSON object answered; raises ProviderError."""
        limit = self._attempt_timeout(request)
        headers = self._request_headers(request)
        if trace.get_current_span().is_recording():
            with _http_span(self._url(path), headers) as span:
                answer = await self._exchange(path, body, headers, params, limit)
                _record_status(span, answer.status_code)
        else:
            # Not sampled: no span, only the trace context for the provider (the common case,
            # without the span's context manager on the hot path).
            propagate.inject(headers)
            answer = await self._exchange(path, body, headers, params, limit)
        if answer.status_code >= 300:
            raise self._status_error(answer)
        return self.json_object(answer.content)

    async def _exchange(
        self,
        path: str,
        body: Mapping[str, Any],
        headers: Mapping[str, str],
        params: Mapping[str, str] | None,
        limit: float,
    ) -> HttpAnswer:
        """Send the request and read the whole answer within `limit` seconds."""
        try:
            async with asyncio.timeout(limit):
                response = await self._send(path, body, headers, params)
                try:
                    return HttpAnswer(response.status, response.headers, await response.read())
                finally:
                    response.release()
        except TimeoutError:
            raise self.error(ProviderErrorKind.TIMEOUT, f"no answer within {limit:g}s") from None
        except (TransportError, ValueError) as exc:
            raise self._transport_error(exc, limit) from exc

    @contextlib.asynccontextmanager
    async def _open_body(
        self,
        path: str,
        body: Mapping[str, Any],
        request: ProviderRequest,
        accept: str,
        params: Mapping[str, str] | None = None,
    ) -> AsyncIterator[BodyChunks]:
        """POST a JSON body whose answer streams; yields its body once the status is 2xx."""
        limit = self._attempt_timeout(request)
        # One deadline for the whole stream, checked by every read.
        deadline = asyncio.get_running_loop().time() + limit
        url = self._url(path)
        headers = {**self._request_headers(request), "accept": accept}
        # The span lasts until the body is done with: a stream's request ends with its last byte.
        with _http_span(url, headers) as span:
            try:
                async with asyncio.timeout_at(deadline):
                    response = await self._send(path, body, headers, params)
            except TimeoutError:
                raise self.error(ProviderErrorKind.TIMEOUT, f"no answer within {limit:g}s") from None
            except (TransportError, ValueError) as exc:
                raise self._transport_error(exc, limit) from exc
            _record_status(span, response.status)
            try:
                if response.status >= 300:
                    content = b""
                    try:
                        async with asyncio.timeout_at(deadline):
                            content = await response.read()
                    except (TimeoutError, TransportError):
                        pass  # the status alone is enough to classify the failure
                    raise self._status_error(HttpAnswer(response.status, response.headers, content))
                yield BodyChunks(self, response, deadline, limit)
            finally:
                response.release()

    @contextlib.asynccontextmanager
    async def _open_stream(
        self,
        path: str,
        body: Mapping[str, Any],
        request: ProviderRequest,
        params: Mapping[str, str] | None = None,
    ) -> AsyncIterator[EventStream]:
        """POST a JSON body that asks for SSE; yields the event stream once the status is 2xx."""
        async with self._open_body(path, body, request, "text/event-stream", params) as chunks:
            yield EventStream(chunks)

    # -- errors ----------------------------------------------------------------------------

    def error(
        self,
        kind: str,
        message: str,
        status_code: int | None = None,
        retry_after_s: float | None = None,
        details: Mapping[str, str] | None = None,
    ) -> ProviderError:
        """A ProviderError of this provider, scrubbed of the key."""
        return ProviderError(
            provider=self._name,
            kind=kind,
            message=self._scrub(message),
            status_code=status_code,
            retry_after_s=retry_after_s,
            details={k: self._scrub(v) for k, v in (details or {}).items()},
        )

    def http_error(
        self,
        response: HttpAnswer,
        kind: str,
        upstream_message: str,
        details: Mapping[str, str] | None = None,
    ) -> ProviderError:
        """The error for a non-2xx answer, with the Retry-After and the upstream request id."""
        all_details = dict(details or {})
        upstream_id = response.headers.get(self._request_id_header)
        if upstream_id:
            all_details["upstream_request_id"] = upstream_id
        if kind == ProviderErrorKind.AUTH:
            # Upstream auth messages quote (part of) the key: never pass them on.
            message = "authentication failed"
        else:
            message = upstream_message[:MESSAGE_LIMIT] or f"HTTP {response.status_code}"
        return self.error(
            kind,
            message,
            status_code=response.status_code,
            retry_after_s=retry_after_s(response.headers),
            details=all_details,
        )

    def json_object(self, data: bytes) -> dict[str, Any]:
        """Parse a JSON object from the provider; malformed -> PROTOCOL."""
        try:
            value = _json.loads(data)
        except ValueError:
            raise self.error(ProviderErrorKind.PROTOCOL, "malformed JSON from provider") from None
        if not isinstance(value, dict):
            raise self.error(ProviderErrorKind.PROTOCOL, "JSON from provider is not an object")
        return value

    def _scrub(self, text: str) -> str:
        key = self._secret.reveal()
        if len(key) >= _MIN_REDACTED_KEY and key in text:
            text = text.replace(key, "[redacted]")
        return text

    def _transport_error(self, exc: TransportError | ValueError, limit: float) -> ProviderError:
        # Transport messages name the host and the failure, never headers: safe to quote.
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if isinstance(exc, ConnectFailed) and exc.timed_out:
            return self.error(ProviderErrorKind.TIMEOUT, f"no answer within {limit:g}s ({detail})")
        if isinstance(exc, ValueError):
            # The request itself cannot be sent (e.g. a bad header value): not the server's fault.
            return self.error(ProviderErrorKind.BAD_REQUEST, f"request not sendable ({detail})")
        if isinstance(exc, ConnectFailed | ConnectionCut):
            return self.error(ProviderErrorKind.SERVER_ERROR, f"connection failed ({detail})")
        return self.error(ProviderErrorKind.PROTOCOL, f"bad response ({detail})")

    # -- small parts -----------------------------------------------------------------------

    def _attempt_timeout(self, request: ProviderRequest) -> float:
        return min(request.timeout_s, self._timeout_s) if request.timeout_s > 0 else self._timeout_s

    @staticmethod
    def _request_headers(request: ProviderRequest) -> dict[str, str]:
        return {"x-request-id": request.request_id} if request.request_id else {}


@functools.lru_cache(maxsize=1024)
def _target(path: str) -> str:
    """`path` as a request target: percent-encoded where a URL needs it (a model name in the
    path may hold any character), existing escapes kept."""
    return "/" + quote(path, safe="/:@!$&'()*+,;=~%")


def _dumps(body: Mapping[str, Any]) -> bytes:
    return _json.dumps(body)


@contextlib.contextmanager
def _http_span(url: str, headers: dict[str, str]) -> Iterator[Span | None]:
    """Put the trace context in `headers` (always), under a CLIENT span for the request when
    the attempt is sampled; yields that span, or None."""
    if not trace.get_current_span().is_recording():
        propagate.inject(headers)
        yield None
        return
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    span = _tracer.start_span(
        "POST",
        kind=SpanKind.CLIENT,
        attributes={
            "http.request.method": "POST",
            "server.address": parts.hostname or "",
            "server.port": parts.port or (443 if secure else 80),
            # Scheme, host and path only: a query string may carry a credential.
            "url.full": f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}{parts.path}",
        },
    )
    with trace.use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
        propagate.inject(headers)
        try:
            yield span
        except BaseException as exc:
            # An HTTP error status is recorded already (`_record_status`).
            if not (isinstance(exc, ProviderError) and exc.status_code is not None):
                span.set_attribute("error.type", type(exc).__name__)
                span.set_status(StatusCode.ERROR, type(exc).__name__)
            raise


def _record_status(span: Span | None, status: int) -> None:
    if span is None:
        return
    span.set_attribute("http.response.status_code", status)
    if status >= 400:
        span.set_attribute("error.type", str(status))
        span.set_status(StatusCode.ERROR)
