"""What the Gemini, Ollama and Mistral fakes share: the echo answer, tool calls, streaming.

Each of those fakes speaks its provider's wire format but answers alike, so tests can
predict every answer and token count:
- Text: "Echo: <words of the last user or tool turn>", one token per word, cut to the
  request's output limit (the provider's own "length" reason when cut). In JSON mode the
  answer is the JSON object `{"echo": "<that text>"}`, sent as one piece.
- Tool calls: with the directive `tool_call=<name>`, or when the request forces a tool, the
  answer is one call of that tool (the first offered one when only "any tool" is forced),
  unless the last turn is a tool result. Its arguments set the tool schema's first property
  (else `input`) to the last user text; its output tokens are the words of the arguments' JSON.
- Prompt tokens: words of every turn's text (tool calls' and results' JSON included), at least 1.

Directives are the shared `Fault` ones (header `x-fake-fault` or `model@...`, see
`interlock.services.fakeprovider`); each fake documents which provider fields
`cached_tokens`, `reasoning_tokens`, `finish` and `error_after` turn into.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from .app import Fault, _sleep_unless_disconnected, count_tokens, parse_fault

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]


def fault_for(model: str, header: bytes) -> Fault:
    """Directives from the model id's `@` suffix, then the header (which wins); ValueError if bad."""
    fault = Fault()
    if "@" in model:
        fault = parse_fault(model.partition("@")[2], fault)
    if header:
        fault = parse_fault(header.decode("latin-1"), fault)
    return fault


@dataclass(frozen=True, slots=True)
class Turn:
    """One turn of a conversation in any provider's format, as the echo logic needs it."""

    role: str
    """`system`, `user`, `assistant` or `tool`."""
    text: str


@dataclass(frozen=True, slots=True)
class EchoTool:
    """An offered tool: its name and the name of its first argument."""

    name: str
    first_argument: str


def first_property(schema: object) -> str:
    """The first property of a JSON Schema object, else `input`."""
    if isinstance(schema, Mapping):
        properties = schema.get("properties")
        if isinstance(properties, Mapping) and properties:
            return str(next(iter(properties)))
    return "input"


@dataclass(frozen=True, slots=True)
class EchoAnswer:
    """What the fake answers: text pieces, or one tool call."""

    pieces: list[str]
    truncated: bool
    """Cut at the output limit."""
    tool_name: str | None
    tool_arguments: dict[str, Any]
    prompt_tokens: int
    output_tokens: int
    """Visible output tokens (reasoning not included)."""


def echo_answer(
    turns: Sequence[Turn],
    max_tokens: int | None,
    fault: Fault,
    *,
    tools: Sequence[EchoTool] = (),
    forced_tool: str | None = None,
    json_mode: bool = False,
) -> EchoAnswer:
    """The scripted answer to a conversation (see the module docstring).

    `forced_tool`: a tool name the request forces, or `*` when it forces any tool.
    """
    prompt_tokens = max(1, sum(count_tokens(t.text) for t in turns))
    last = next((t for t in reversed(turns) if t.role in ("user", "tool")), None)
    text = last.text if last is not None else ""
    wanted = fault.tool_call or forced_tool
    if wanted and tools and last is not None and last.role == "user":
        tool = next((t for t in tools if t.name == wanted), tools[0])
        arguments = {tool.first_argument: text}
        return EchoAnswer(
            pieces=[],
            truncated=False,
            tool_name=tool.name,
            tool_arguments=arguments,
            prompt_tokens=prompt_tokens,
            output_tokens=max(1, count_tokens(json.dumps(arguments))),
        )
    words = ["Echo:", *text.split()]
    truncated = max_tokens is not None and len(words) > max_tokens
    if truncated:
        words = words[:max_tokens]
    pieces = [words[0], *(" " + w for w in words[1:])]
    output_tokens = len(pieces)
    if json_mode:
        pieces = [json.dumps({"echo": "".join(pieces)})]
    return EchoAnswer(
        pieces=pieces,
        truncated=truncated,
        tool_name=None,
        tool_arguments={},
        prompt_tokens=prompt_tokens,
        output_tokens=output_tokens,
    )


def dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


async def send_stream(
    send: Send,
    receive: Receive,
    *,
    content_type: bytes,
    headers: Headers,
    head: Sequence[bytes],
    pieces: Sequence[bytes],
    tail: Sequence[bytes],
    fault: Fault,
    error_event: bytes,
) -> None:
    """Send a 200 stream: `head` events, one event per piece, then `tail`.

    `truncate_after` ends the body after that many pieces (no tail); `error_after` sends the
    provider's in-stream `error_event` instead of the rest; `chunk_delay_ms` spaces the pieces out.
    """
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", content_type), (b"cache-control", b"no-cache"), *headers],
        }
    )
    delay = fault.chunk_delay_ms / 1000
    events = list(head)
    for sent, piece in enumerate(pieces):
        cut = fault.truncate_after is not None and sent >= fault.truncate_after
        failed = fault.error_after is not None and sent >= fault.error_after
        if cut or failed:
            if failed:
                events.append(error_event)
            await send({"type": "http.response.body", "body": b"".join(events), "more_body": False})
            return
        events.append(piece)
        if delay:
            await send({"type": "http.response.body", "body": b"".join(events), "more_body": True})
            events.clear()
            if not await _sleep_unless_disconnected(delay, receive):
                return
    if fault.error_after is not None:
        events.append(error_event)  # asked to fail after more pieces than there are: fail at the end
        await send({"type": "http.response.body", "body": b"".join(events), "more_body": False})
        return
    events.extend(tail)
    # Without chunk delays everything goes in one write: clients still parse incrementally.
    await send({"type": "http.response.body", "body": b"".join(events), "more_body": False})
