"""A settled call, as the ledger records it and the usage event carries it."""

from __future__ import annotations

from dataclasses import dataclass

from interlock.services.budget.domain.model import Principal


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
