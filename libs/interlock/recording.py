"""How a recorded LLM call is fingerprinted, the same way in the router and in the client.

The router records each call of a run with its request and answer after redaction, plus
SHA-256 digests of the unredacted request: one per message and one for the whole request.
A client replaying a run computes the same digests from the request its agent code makes
now and compares them with the recording, so a diverging agent is caught at the message
that changed without the recording ever holding a redacted value.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

RUN_ID_ATTRIBUTE = "interlock.run_id"
AGENT_ATTRIBUTE = "gen_ai.agent.name"
STEP_ATTRIBUTE = "interlock.step"
INPUT_MESSAGES_ATTRIBUTE = "gen_ai.input.messages"
"""OpenTelemetry GenAI: the request's messages, as JSON (recorded redacted)."""
OUTPUT_MESSAGES_ATTRIBUTE = "gen_ai.output.messages"
"""OpenTelemetry GenAI: the answer's messages, as JSON (recorded redacted)."""
REQUEST_PARAMS_ATTRIBUTE = "interlock.request.params"
"""The request's other parameters (max_tokens, tools, ...) as JSON (recorded redacted)."""
REQUEST_DIGEST_ATTRIBUTE = "interlock.request.digest"
MESSAGE_DIGESTS_ATTRIBUTE = "interlock.request.message_digests"
BODY_ATTRIBUTES = (INPUT_MESSAGES_ATTRIBUTE, OUTPUT_MESSAGES_ATTRIBUTE, REQUEST_PARAMS_ATTRIBUTE)
"""Attributes that carry request or answer bodies."""


def _canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def message_digest(
    role: str,
    content: str,
    tool_calls: Sequence[tuple[str, str, str]] = (),
    tool_call_id: str = "",
    name: str = "",
) -> str:
    """SHA-256 of one message; `tool_calls` as (id, name, arguments)."""
    doc = {
        "role": role,
        "content": content,
        "tool_calls": [list(c) for c in tool_calls],
        "tool_call_id": tool_call_id,
        "name": name,
    }
    return hashlib.sha256(_canonical(doc)).hexdigest()


def request_digest(
    model: str,
    message_digests: Sequence[str],
    max_tokens: int,
    tools: Sequence[tuple[str, str, Mapping[str, Any]]] = (),
    tool_choice: str = "",
    temperature: float | None = None,
) -> str:
    """SHA-256 of a whole request; `tools` as (name, description, parameters schema)."""
    doc = {
        "model": model,
        "messages": list(message_digests),
        "max_tokens": max_tokens,
        "tools": [[n, d, dict(p)] for n, d, p in tools],
        "tool_choice": tool_choice,
        "temperature": temperature,
    }
    return hashlib.sha256(_canonical(doc)).hexdigest()
