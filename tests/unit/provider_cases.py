"""What the provider adapter tests share: the conversation they send, requests built from
it, and reading a stream to its end."""

from __future__ import annotations

from collections.abc import Callable

from interlock.services.router.domain.provider import ChatMessage, ChatProvider, ProviderRequest, StreamItem

MESSAGES = (
    ChatMessage("system", "Be brief."),
    ChatMessage("user", "Name three primary colours, please."),
)


def request_factory(default_model: str) -> Callable[..., ProviderRequest]:
    """`make_request(model=default_model, **overrides)`: MESSAGES, 64 tokens, a 5 s timeout."""

    def make_request(model: str = default_model, **overrides: object) -> ProviderRequest:
        fields: dict[str, object] = {
            "upstream_model": model,
            "messages": MESSAGES,
            "max_tokens": 64,
            "request_id": "req-123",
            "timeout_s": 5.0,
        }
        fields.update(overrides)
        return ProviderRequest(**fields)  # type: ignore[arg-type]

    return make_request


async def collect(provider: ChatProvider, request: ProviderRequest) -> list[StreamItem]:
    return [item async for item in provider.stream(request)]
