"""The provider interface every adapter implements, and the values it speaks in.

Pure types only: adapters in `services/router/adapters/` do the I/O.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One turn of a conversation."""

    role: str
    """`system`, `user`, `assistant` or `tool`."""
    content: str
    """Text of the turn."""


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
    request_id: str = ""
    """Interlock request id, sent upstream as a header for correlation."""
    timeout_s: float = 60.0
    """Deadline for the whole attempt, in seconds."""


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Tokens the provider billed."""

    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class ProviderResponse:
    """A whole answer."""

    text: str
    finish_reason: str
    usage: TokenUsage


@dataclass(frozen=True, slots=True)
class StreamDelta:
    """A piece of answer text from a stream."""

    text: str


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The last item of a stream: why it stopped and what it cost in tokens."""

    finish_reason: str
    usage: TokenUsage


StreamItem = StreamDelta | StreamEnd


class ProviderErrorKind:
    """Why a provider call failed; decides retry and fallback."""

    RATE_LIMITED = "rate_limited"
    """429 from the provider."""
    UNAVAILABLE = "unavailable"
    """5xx, connection refused or reset."""
    TIMEOUT = "timeout"
    """No answer before the deadline."""
    BAD_REQUEST = "bad_request"
    """4xx other than 429: the request itself is wrong; retrying will not help."""
    AUTH = "auth"
    """401/403: the provider key is wrong."""
    PROTOCOL = "protocol"
    """The answer was not the provider's wire format, or a stream ended early."""


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
