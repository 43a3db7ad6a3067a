"""Fakes of the other providers, each an ASGI app mounted under a path prefix.

The fake server serves OpenAI's format at `/v1/...` and every other provider's format under
its own prefix, e.g. `/anthropic/v1/messages`, so one process (one port) fakes them all and
each provider's official SDK is pointed at `http://host:port/<prefix>`. Each provider's
fake registers itself here with one line.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def provider_apps() -> dict[str, ASGIApp]:
    """Prefix (e.g. `/anthropic`) -> the ASGI app of that provider's fake."""
    apps: dict[str, ASGIApp] = {}
    from .gemini import GeminiFakeApp  # imported here: the fakes import the OpenAI app, which imports this

    apps["/gemini"] = GeminiFakeApp()
    from .ollama import OllamaFakeApp

    apps["/ollama"] = OllamaFakeApp()
    from .mistral import MistralFakeApp

    apps["/mistral"] = MistralFakeApp()
    from .anthropic import AnthropicFakeApp

    apps["/anthropic"] = AnthropicFakeApp()
    from .cohere import CohereFakeApp

    apps["/cohere"] = CohereFakeApp()
    from .azure import AzureFakeApp

    apps["/azure"] = AzureFakeApp()
    return apps
