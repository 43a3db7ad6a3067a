"""A settled call, as the ledger records it and the usage event carries it."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from interlock.services.budget.domain.model import Principal
from interlock.services.budget.domain.window import Window


@dataclass(frozen=True, slots=True)
class SettledUsage:
    """One committed request: who, what, how many tokens, what it cost."""

    request_id: str
    principal: Principal
    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    cost_nanos: int
    committed_at: float
    """Unix seconds."""
    trace_id: str = ""
    run_id: str = ""
    agent: str = ""
    details: Mapping[str, str | int] = field(default_factory=dict)
    """config_version, cached_input_tokens, reasoning_tokens, cache_write_tokens, latency_ms,
    attempt, provider_attempts, and event_id (fixed at commit, see `usage_event_id`)."""

    @property
    def event_id(self) -> str:
        """Id of this usage's event: the one fixed at commit; the ledger key for rows committed
        before event ids were UUIDv7 (so a re-send of such a row keeps the id it was sent with)."""
        return str(self.details.get("event_id") or self.request_id)


@dataclass(frozen=True, slots=True)
class BudgetAlert:
    """A budget's spend reached one of its alert thresholds in one window."""

    scope_key: str
    threshold_pct: int
    limit_nanos: int
    committed_nanos: int
    """Spend in the window after the commit that crossed the threshold."""
    window: Window
    window_start: float
    """Unix seconds; 0 without a window."""
    reset_at: float
    """Unix seconds; 0 without a window."""
    request_id: str
    occurred_at: float

    @property
    def alert_id(self) -> str:
        """One alert per budget, window and threshold, however often commits are replayed."""
        return f"{self.scope_key}@{int(self.window_start)}#{self.threshold_pct}"


def reservation_key(request_id: str, attempt: int) -> str:
    """Ledger key of one attempt of a request; the first attempt keeps the bare request id."""
    return request_id if attempt == 0 else f"{request_id}#{attempt}"


def usage_event_id(request_id: str, attempt: int, committed_at: float) -> str:
    """The UUIDv7 (RFC 9562) of one settled attempt of a request.

    The 48-bit time is the commit's Unix milliseconds, so ids sort by commit time (and
    ClickHouse keeps one project's rows in time order). The 74 bits RFC 9562 leaves random
    are the first bits of SHA-256 over (request id, attempt): deterministic, so whoever
    rebuilds the event from the ledger row gets the same id, and as collision-free as random
    bits between different requests or attempts.
    """
    millis = max(0, int(committed_at * 1000)) & ((1 << 48) - 1)
    digest = hashlib.sha256(f"{request_id}\x00{attempt:d}".encode()).digest()
    rand = int.from_bytes(digest[:10], "big") >> 6  # 74 bits
    value = (millis << 80) | (0x7 << 76) | ((rand >> 62) << 64) | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))
