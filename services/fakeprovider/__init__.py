"""Interlock's built-in fake provider: an OpenAI-compatible HTTP server for tests and benchmarks.

Run it with `python -m interlock.services.fakeprovider --host 127.0.0.1 --port 8089`
(SIGINT/SIGTERM stop it gracefully), or in-process with
`async with serve_fake_provider() as base_url: ...` (base_url is `http://127.0.0.1:<port>/v1`).

Endpoints (OpenAI's wire format, close enough for the official `openai` SDK):
- `POST /v1/chat/completions`: unary, or SSE with `"stream": true`: a role chunk, one chunk
  per token, a chunk with `finish_reason`, a usage chunk with empty `choices` when
  `stream_options.include_usage` is true, then `data: [DONE]`.
- `GET /v1/models`: lists the configured model ids (default `fake-echo`).
- `GET /health`: `{"status":"ok"}`, no key needed.

Both `/v1` endpoints need `Authorization: Bearer <anything non-empty>`, else 401. Errors use
OpenAI's shape `{"error": {"message", "type", "param", "code"}}`; bodies are validated as
OpenAI does (missing `model`/`messages`, wrong types, empty messages, unknown role,
`max_tokens` < 1, `temperature` outside 0..2, `stream_options` without `stream`) -> 400.
Any model id is accepted.

Answers are deterministic: "Echo: <words of the last user message>" (of the tool result,
when the last message is one), cut to
`max_completion_tokens` (else `max_tokens`) tokens, `finish_reason` "length" when cut,
else "stop". A token is a whitespace-separated word: prompt_tokens is the number of words
in all messages' text (at least 1), completion_tokens the number of words in the answer
("Echo:" included), so it never exceeds the limit.

Fault injection, per request: header `x-fake-fault: key=value; key=value`, or the same
directives after an `@` in the model id (`"model": "fake-echo@status=429;delay_ms=50"`,
answered as model `fake-echo`); the header wins where both set a key. Directives:
- `status=<400..599>`: answer with that status and an OpenAI error body (429 also sends
  `Retry-After`, default 1, and `x-ratelimit-*` headers with no requests remaining).
- `code=<code>`: the error code (a bare `code=` is a 400): `context_length_exceeded`,
  `content_filter` (Azure's wording) and `content_policy_violation` get OpenAI's messages.
- `tool_call=<name>`: answer with one call of that tool (it must be among `tools` when any
  are given), arguments `{"text": "<last user message>"}`, finish_reason `tool_calls`;
  streamed as tool-call deltas of 8 characters. A request whose last message is a tool
  result gets the echo of that result instead.
- `cached_tokens=<n>` / `reasoning_tokens=<n>`: report them in `prompt_tokens_details` /
  `completion_tokens_details` (reasoning is added to completion_tokens).
- `finish=<reason>`: report this finish_reason (e.g. `content_filter`).
- `error_after=<n>`: streaming: after n chunks send an error event and end the body.
- `retry_after=<seconds>`: the `Retry-After` value to send with `status`.
- `message=<text>`: the error message for `status` (no `;` inside).
- `delay_ms=<n>`: wait before answering (ends early if the client disconnects).
- `chunk_delay_ms=<n>`: streaming only, wait between token chunks.
- `truncate_after=<n>`: streaming: stop after n token chunks with no finish chunk, usage or
  `[DONE]`; unary: send only the first n bytes of the JSON body (malformed on purpose).
An unknown or malformed directive is answered 400. Other providers' fakes are mounted under
path prefixes (see `mounts.py`) and take the same directives, each in its own format.
"""

from __future__ import annotations

from .app import DEFAULT_MODELS, FAULT_HEADER, FakeProviderApp, count_tokens
from .server import FakeProviderServer, run_until_signalled, serve_fake_provider

__all__ = [
    "DEFAULT_MODELS",
    "FAULT_HEADER",
    "FakeProviderApp",
    "FakeProviderServer",
    "count_tokens",
    "run_until_signalled",
    "serve_fake_provider",
]
