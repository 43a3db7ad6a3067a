"""One routing config with one OpenAI model, a caller, and validated chat calls on it: what
the router's unit and integration tests admit, reserve and correct."""

from __future__ import annotations

import uuid

from interlock.services.router.domain.chat import ChatCall, validate_chat
from interlock.services.router.domain.flow import Caller
from interlock.services.router.domain.provider import ChatMessage
from interlock.services.router.domain.routing import parse_routing_config

ROUTING = parse_routing_config(
    {
        "providers": [{"name": "openai", "kind": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key_env": ""}],
        "models": [{"name": "gpt-4o-mini", "provider": "openai"}],
    },
    "test",
)
CALLER = Caller("default", "search", "alice", "key-1")


def chat_call(prompt: str = "hello there world", max_tokens: int = 100) -> ChatCall:
    return validate_chat(
        ROUTING,
        model="gpt-4o-mini",
        messages=[ChatMessage("user", prompt)],
        max_tokens=max_tokens,
        temperature=None,
        request_id=uuid.uuid4().hex,
        run_id="",
        agent="",
    )
