"""Redaction of recorded request and answer bodies, applied before anything leaves the router.

Two kinds of rule, from settings (`INTERLOCK_ROUTER_REDACT_PATTERNS`,
`INTERLOCK_ROUTER_REDACT_FIELDS`):

- patterns: regular expressions; every match in any recorded text is replaced.
- fields: names of JSON object keys (case-insensitive) whose whole value is replaced,
  wherever they occur: tool definitions, tool-call arguments, and message contents that
  are JSON documents.

Provider keys, Interlock keys and bearer credentials are always redacted, rules or not.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from interlock.services.router.domain.provider import ChatMessage, ToolCall, ToolSpec

REDACTED = "[REDACTED]"

# Shapes of credentials that must never be recorded, whatever the configured rules say:
# provider keys (`sk-...`, `sk-ant-...`, Google `AIza...`), Interlock keys, and auth headers.
BUILTIN_PATTERNS = (
    r"\bsk-[A-Za-z0-9_\-]{16,}",
    r"\bAIza[0-9A-Za-z_\-]{30,}",
    r"\bil_[0-9a-f]{16}_[A-Za-z0-9_\-]{16,}",
    r"(?i)\bbearer\s+[A-Za-z0-9._~+/=\-]{8,}",
)


class RedactionConfigError(ValueError):
    """A redaction rule is not valid; the message names it."""


@dataclass(frozen=True)
class RedactionRules:
    """Compiled rules; `RedactionRules.parse` builds them from settings text."""

    patterns: tuple[re.Pattern[str], ...] = field(default_factory=tuple)
    fields: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, patterns: Iterable[str], fields: Iterable[str]) -> RedactionRules:
        compiled = []
        for i, text in enumerate([*BUILTIN_PATTERNS, *patterns]):
            try:
                compiled.append(re.compile(text))
            except re.error as exc:
                raise RedactionConfigError(f"redaction pattern #{i - len(BUILTIN_PATTERNS)} {text!r}: {exc}") from None
        return cls(tuple(compiled), frozenset(f.strip().lower() for f in fields if f.strip()))

    @classmethod
    def from_settings(cls, patterns_json: str, fields_csv: str) -> RedactionRules:
        """Rules from the settings' text: a JSON array of regexes, and comma-separated field names."""
        patterns: object = []
        if patterns_json.strip():
            try:
                patterns = json.loads(patterns_json)
            except ValueError as exc:
                raise RedactionConfigError(f"redact_patterns must be a JSON array of strings: {exc}") from None
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise RedactionConfigError("redact_patterns must be a JSON array of strings")
        return cls.parse(patterns, fields_csv.split(","))

    def text(self, value: str) -> str:
        """`value` with named fields (when it is a JSON document) and pattern matches replaced."""
        stripped = value.lstrip()
        if self.fields and stripped[:1] in ("{", "["):
            try:
                parsed = json.loads(value)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict | list):
                redacted = self.value(parsed)
                if redacted != parsed:
                    return json.dumps(redacted, ensure_ascii=False, separators=(",", ":"))
                # Nothing to replace: keep the text byte for byte (replay serves it back).
        for pattern in self.patterns:
            value = pattern.sub(REDACTED, value)
        return value

    def value(self, value: Any) -> Any:
        """A JSON-like value with named fields and pattern matches replaced, recursively."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {str(k): REDACTED if str(k).lower() in self.fields else self.value(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.value(v) for v in value]
        return value


def input_messages(messages: Sequence[ChatMessage], rules: RedactionRules) -> list[dict[str, Any]]:
    """Messages in the OpenTelemetry GenAI shape (role + parts), redacted."""
    out: list[dict[str, Any]] = []
    for m in messages:
        parts: list[dict[str, Any]] = []
        if m.role == "tool":
            parts.append({"type": "tool_call_response", "id": m.tool_call_id, "response": rules.text(m.content)})
        elif m.content:
            parts.append({"type": "text", "content": rules.text(m.content)})
        parts.extend(_tool_call_part(c, rules) for c in m.tool_calls)
        item: dict[str, Any] = {"role": m.role, "parts": parts}
        if m.name:
            item["name"] = rules.text(m.name)
        out.append(item)
    return out


def output_messages(
    text: str, finish_reason: str, tool_calls: Sequence[ToolCall], rules: RedactionRules
) -> list[dict[str, Any]]:
    """The answer as one assistant message in the OpenTelemetry GenAI shape, redacted."""
    parts: list[dict[str, Any]] = []
    if text:
        parts.append({"type": "text", "content": rules.text(text)})
    parts.extend(_tool_call_part(c, rules) for c in tool_calls)
    return [{"role": "assistant", "parts": parts, "finish_reason": finish_reason}]


def _tool_call_part(call: ToolCall, rules: RedactionRules) -> dict[str, Any]:
    return {"type": "tool_call", "id": call.id, "name": call.name, "arguments": rules.text(call.arguments)}


def request_params(
    *,
    max_tokens: int,
    temperature: float | None,
    top_p: float | None,
    stop: Sequence[str],
    tools: Sequence[ToolSpec],
    tool_choice: str | None,
    json_mode: bool,
    rules: RedactionRules,
) -> dict[str, Any]:
    """The request's parameters other than messages, redacted."""
    return {
        "max_tokens": max_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "stop": [rules.text(s) for s in stop],
        "tools": [
            {"name": t.name, "description": rules.text(t.description), "parameters": rules.value(dict(t.parameters))}
            for t in tools
        ],
        "tool_choice": tool_choice or "",
        "json_mode": json_mode,
    }
