"""Spans as trace-ingest stores them, trace id validation and secret redaction."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from interlock.errors import InvalidArgumentError

REDACTED = "[REDACTED]"

_TRACE_ID = re.compile(r"[0-9a-f]{32}")
# Matched against the lowercased key with `-` read as `_`, so `X-Api-Key` and
# `http.request.header.authorization` are caught; `gen_ai.usage.input_tokens` is not.
_SECRET_KEY_PARTS = (
    "authorization",
    "api_key",
    "apikey",
    "cookie",
    "password",
    "passwd",
    "secret",
    "access_token",
    "refresh_token",
    "id_token",
    "auth_token",
    "session_token",
    "private_key",
    "credential",
    "bearer",
)
# Keys whose last dotted part alone says credential (`github.token`, `x.auth`).
_SECRET_LAST_PARTS = ("token", "auth", "signature")
# Public identifiers named after a secret (the API key's public id) are not secrets.
_PUBLIC_SUFFIXES = ("_id", "_ids")
# A value that carries a credential whatever its key says: auth schemes and provider key shapes.
# Interlock keys (`il_<16 hex>_<secret>`) are caught too, though the router never records them.
_SECRET_VALUE = re.compile(
    r"(?i)^\s*bearer\s+\S|^\s*basic\s+[A-Za-z0-9+/=]{8,}\s*$|\bsk-[A-Za-z0-9_\-]{16,}"
    r"|\bil_[0-9a-f]{16}_[A-Za-z0-9_\-]{16,}"
)


@dataclass(frozen=True)
class SpanRecord:
    """One span, one row of `spans`. Ids are lowercase hex; times are Unix nanoseconds."""

    trace_id: str
    span_id: str
    parent_span_id: str
    service_name: str
    name: str
    kind: str
    """`INTERNAL`, `SERVER`, `CLIENT`, `PRODUCER`, `CONSUMER` or `UNSPECIFIED`."""
    start_time_ns: int
    end_time_ns: int
    status_code: str
    """`UNSET`, `OK` or `ERROR`."""
    status_message: str = ""
    scope_name: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)
    resource_attributes: Mapping[str, str] = field(default_factory=dict)


def parse_trace_id(value: str) -> str:
    """A W3C trace id as stored (32 lowercase hex, not all zero), or InvalidArgumentError."""
    if not _TRACE_ID.fullmatch(value) or value == "0" * 32:
        raise InvalidArgumentError("must be 32 lowercase hex characters, not all zero", field="trace_id")
    return value


def is_secret_key(key: str) -> bool:
    """Whether an attribute named `key` may hold a credential."""
    normalized = key.lower().replace("-", "_")
    if normalized.endswith(_PUBLIC_SUFFIXES):
        return False
    if normalized.rsplit(".", 1)[-1] in _SECRET_LAST_PARTS:
        return True
    return any(part in normalized for part in _SECRET_KEY_PARTS)


def is_secret_value(value: str) -> bool:
    """Whether `value` looks like a credential (an auth scheme or a provider key) whatever its key."""
    return _SECRET_VALUE.search(value) is not None


def redact_attributes(attributes: Mapping[str, str]) -> dict[str, str]:
    """`attributes` with every credential-looking value replaced by REDACTED.

    The key is kept so a reader sees that the attribute existed and was withheld.
    """
    return {
        key: REDACTED if is_secret_key(key) or is_secret_value(value) else value for key, value in attributes.items()
    }
