"""The provider interface every adapter implements, and the values it speaks in.

Pure types only: adapters in `services/router/adapters/` do the I/O.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A function the model may call."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)
    """JSON Schema of the arguments object."""


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call the model asked for."""

    id: str
    """Provider's call id (made up by the adapter when the provider has none)."""
    name: str
    arguments: str
    """Arguments as JSON text, exactly as the model wrote them."""


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One turn of a conversation."""

    role: str
    """`system`, `user`, `assistant` or `tool`."""
    content: str
    """Text of the turn."""
    tool_calls: tuple[ToolCall, ...] = ()
    """For `assistant` turns: the calls the model made."""
    tool_call_id: str = ""
    """For `tool` turns: the call this result answers."""
    name: str = ""
    """For `tool` turns: the tool's name (some providers need it)."""


@dataclass(frozen=True, slots=True)
class ProviderRequest:
    """What the router asks of one provider for one attempt."""

    upstream_model: str
    """The model id as the provider names it (e.g. `gpt-4o-mini-2024-07-18`)."""
    messages: Sequence[ChatMessage]
    """Conversation, oldest first."""
    max_tokens: int
    """Most output tokens to generate."""
    temperature: float | None = None
    """Sampling temperature; None means the provider default."""
    top_p: float | None = None
    """Nucleus sampling; None means the provider default."""
    stop: Sequence[str] = ()
    """Stop sequences."""
    tools: Sequence[ToolSpec] = ()
    """Functions the model may call."""
    tool_choice: str | None = None
    """`auto`, `none`, `required`, or a tool name to force; None means the provider default."""
    json_mode: bool = False
    """Ask for a JSON object answer where the provider offers it."""
    request_id: str = ""
    """Interlock request id, sent upstream as a header for correlation."""
    timeout_s: float = 60.0
    """Deadline for the whole attempt, in seconds."""


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Tokens the provider billed, normalised across providers.

    `input_tokens` counts every input token, cached or not (OpenAI's prompt_tokens;
    Anthropic's input + cache_read + cache_creation). `output_tokens` counts every
    generated token, reasoning included (Gemini's candidates + thoughts).
    """

    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0
    """Of input_tokens, those read from the provider's prompt cache (billed cheaper)."""
    cache_write_tokens: int = 0
    """Of input_tokens, those written to the prompt cache (billed dearer where priced)."""
    reasoning_tokens: int = 0
    """Of output_tokens, those spent on hidden reasoning."""


@dataclass(frozen=True, slots=True)
class ProviderResponse:
    """A whole answer."""

    text: str
    finish_reason: str
    """Canonical: `stop`, `length`, `tool_calls` or `content_filter`."""
    usage: TokenUsage
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True, slots=True)
class StreamDelta:
    """A piece of answer text from a stream."""

    text: str


@dataclass(frozen=True, slots=True)
class StreamToolCallDelta:
    """A piece of a tool call from a stream; pieces with one index make one call."""

    index: int
    id: str = ""
    """Set on the first piece of a call."""
    name: str = ""
    """Set on the first piece of a call."""
    arguments: str = ""
    """A fragment of the arguments' JSON text."""


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The last item of a stream: why it stopped, what it cost, and the whole tool calls."""

    finish_reason: str
    usage: TokenUsage
    tool_calls: tuple[ToolCall, ...] = ()


StreamItem = StreamDelta | StreamToolCallDelta | StreamEnd


class ProviderErrorKind:
    """Why a provider call failed, one canonical set for every provider; decides retry and fallback."""

    RATE_LIMITED = "rate_limited"
    """429 (or the provider's equivalent); `retry_after_s` when the provider said."""
    OVERLOADED = "overloaded"
    """The provider is over capacity (Anthropic 529, Gemini 503 UNAVAILABLE, ...)."""
    CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
    """Prompt plus max tokens do not fit the model's window."""
    CONTENT_FILTERED = "content_filtered"
    """The provider refused on content policy."""
    AUTH = "auth"
    """401/403: the provider key is wrong."""
    BAD_REQUEST = "bad_request"
    """Any other 4xx: the request itself is wrong; retrying will not help."""
    SERVER_ERROR = "server_error"
    """5xx, connection refused or reset."""
    TIMEOUT = "timeout"
    """No answer before the deadline."""
    PROTOCOL = "protocol"
    """The answer was not the provider's wire format, or a stream ended early."""
    UNAVAILABLE = SERVER_ERROR
    """Former name of SERVER_ERROR."""


@dataclass(slots=True)
class ProviderError(Exception):
    """A provider call failed. Never carries provider secrets."""

    provider: str
    kind: str
    message: str
    status_code: int | None = None
    retry_after_s: float | None = None
    details: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        code = f" (HTTP {self.status_code})" if self.status_code is not None else ""
        return f"{self.provider}: {self.kind}{code}: {self.message}"


class ChatProvider(Protocol):
    """One upstream LLM provider."""

    @property
    def name(self) -> str:
        """Provider id, e.g. `openai`."""
        ...

    async def chat(self, request: ProviderRequest) -> ProviderResponse:
        """Send a conversation and return the whole answer; raises ProviderError."""
        ...

    def stream(self, request: ProviderRequest) -> AsyncIterator[StreamItem]:
        """Send a conversation and yield deltas, then exactly one StreamEnd.

        Raises ProviderError, also mid-stream when the stream is cut short.
        """
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
