"""A chat call as the router's domain sees it, its validation and its worst-case size."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from interlock.errors import InvalidArgumentError
from interlock.services.router.domain.provider import ChatMessage, ToolSpec
from interlock.services.router.domain.routing import ModelRoute, RoutingConfig

ROLES = ("system", "user", "assistant", "tool")
MAX_PROMPT_BYTES = 1_000_000
"""Largest prompt (all message contents, UTF-8) a request may carry."""
MAX_MESSAGES = 1024
MAX_OUTPUT_TOKENS = 1_000_000
_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_STOP = 16
MAX_TOOLS = 128
# Chat formats wrap each message in a few tokens of framing, and the reply in a few more.
_TOKENS_PER_MESSAGE = 4
_TOKENS_PER_REPLY = 3


@dataclass(frozen=True, slots=True)
class ChatCall:
    """A validated chat request."""

    route: ModelRoute
    messages: tuple[ChatMessage, ...]
    max_tokens: int
    temperature: float | None
    request_id: str
    run_id: str
    agent: str
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str | None = None
    json_mode: bool = False
    config_version: str = ""
    """The routing config version this call was validated against and is served by."""
    started_at: float = 0.0
    """Monotonic time the router received the call (0 when unknown), for latency."""
    step: str = ""
    """Step of the agent this call belongs to, for traces and replay."""


def new_request_id() -> str:
    """A request id for a call that brought none: `req_` and 128 random bits in hex."""
    return f"req_{os.urandom(16).hex()}"


def validate_chat(
    config: RoutingConfig,
    *,
    model: str,
    messages: Sequence[ChatMessage],
    max_tokens: int | None,
    temperature: float | None,
    request_id: str,
    run_id: str,
    agent: str,
    top_p: float | None = None,
    stop: Sequence[str] = (),
    tools: Sequence[ToolSpec] = (),
    tool_choice: str | None = None,
    json_mode: bool = False,
    field_prefix: str = "params.",
    step: str = "",
    started_at: float = 0.0,
) -> ChatCall:
    """Check every field; raise InvalidArgumentError naming the first bad one.

    `max_tokens` None (an HTTP caller that gave none) takes the model's maximum output, so
    the budget reserves what the model may really produce."""
    f = field_prefix
    if not model:
        raise InvalidArgumentError("is required", field=f"{f}model")
    route = config.models.get(model)
    if route is None:
        known = ", ".join(sorted(config.models)[:20])
        raise InvalidArgumentError(f"unknown model {model[:100]!r}; known models: {known}", field=f"{f}model")
    if max_tokens is None:
        max_tokens = route.max_output_tokens
    if not messages:
        raise InvalidArgumentError("must hold at least one message", field=f"{f}messages")
    if len(messages) > MAX_MESSAGES:
        raise InvalidArgumentError(f"must hold at most {MAX_MESSAGES} messages", field=f"{f}messages")
    total = 0
    for i, m in enumerate(messages):
        if m.role not in ROLES:
            raise InvalidArgumentError(f"must be one of {', '.join(ROLES)}", field=f"{f}messages[{i}].role")
        if m.role == "tool" and not m.tool_call_id:
            raise InvalidArgumentError(
                "a tool message must name the call it answers", field=f"{f}messages[{i}].tool_call_id"
            )
        size = len(m.content.encode("utf-8", "surrogatepass"))
        total += size
        if total > MAX_PROMPT_BYTES:
            raise InvalidArgumentError(
                f"prompt exceeds {MAX_PROMPT_BYTES} bytes in total", field=f"{f}messages[{i}].content"
            )
    if max_tokens <= 0:
        raise InvalidArgumentError("must be a positive number of tokens", field=f"{f}max_tokens")
    if max_tokens > MAX_OUTPUT_TOKENS:
        raise InvalidArgumentError(f"must be at most {MAX_OUTPUT_TOKENS}", field=f"{f}max_tokens")
    if temperature is not None and not 0.0 <= temperature <= 2.0:
        raise InvalidArgumentError("must be between 0 and 2", field=f"{f}temperature")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise InvalidArgumentError("must be in (0, 1]", field=f"{f}top_p")
    if len(stop) > MAX_STOP:
        raise InvalidArgumentError(f"must hold at most {MAX_STOP} sequences", field=f"{f}stop")
    for i, seq in enumerate(stop):
        if not seq:
            raise InvalidArgumentError("must not be empty", field=f"{f}stop[{i}]")
    if len(tools) > MAX_TOOLS:
        raise InvalidArgumentError(f"must hold at most {MAX_TOOLS} tools", field=f"{f}tools")
    names = set()
    for i, tool in enumerate(tools):
        if not _TOOL_NAME.match(tool.name):
            raise InvalidArgumentError("must be 1-64 of letters, digits, '_' or '-'", field=f"{f}tools[{i}].name")
        if tool.name in names:
            raise InvalidArgumentError(f"tool {tool.name!r} appears twice", field=f"{f}tools[{i}].name")
        names.add(tool.name)
    if tool_choice is not None and tool_choice not in ("auto", "none", "required") and tool_choice not in names:
        raise InvalidArgumentError("must be auto, none, required or the name of a tool", field=f"{f}tool_choice")
    for name, value in (("request_id", request_id), ("run_id", run_id), ("agent", agent), ("step", step)):
        if value and not _ID.match(value):
            raise InvalidArgumentError("must be 1-128 of letters, digits, '.', '_', ':' or '-'", field=f"{f}{name}")
    return ChatCall(
        route,
        tuple(messages),
        max_tokens,
        temperature,
        request_id,
        run_id,
        agent,
        top_p=top_p,
        stop=tuple(stop),
        tools=tuple(tools),
        tool_choice=tool_choice,
        json_mode=json_mode,
        config_version=config.version,
        started_at=started_at,
        step=step,
    )


def input_token_bound(messages: Sequence[ChatMessage]) -> int:
    """An upper bound on the input tokens any tokenizer bills for these messages.

    Every BPE token covers at least one byte, so UTF-8 length bounds the content tokens;
    framing adds a fixed few per message. The bound is loose (about 4x for English) and
    is only used to reserve budget; commits use the provider's billed count.
    """
    return _TOKENS_PER_REPLY + sum(
        _TOKENS_PER_MESSAGE
        + len(m.role)
        + len(m.content.encode("utf-8", "surrogatepass"))
        + (
            sum(len(c.name) + len(c.arguments.encode("utf-8", "surrogatepass")) for c in m.tool_calls)
            if m.tool_calls
            else 0
        )
        for m in messages
    )


def tools_token_bound(tools: Sequence[ToolSpec]) -> int:
    """Upper bound on the tokens the tool definitions add to the prompt (their JSON bytes)."""
    if not tools:
        return 0
    return sum(
        len(json.dumps({"name": t.name, "description": t.description, "parameters": t.parameters}).encode())
        for t in tools
    )
