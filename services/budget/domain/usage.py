"""A settled call, as the ledger records it and the usage event carries it."""

from __future__ import annotations

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
    """config_version, cached_input_tokens, reasoning_tokens, cache_write_tokens, latency_ms."""


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
