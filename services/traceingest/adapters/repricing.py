"""Recomputes the cost of stored usage from its tokens at current prices.

The raw events keep the cost billed when they happened (it is what the ledger charged);
new costs go to `usage_reprices`, one row per event, the newest winning, and queries
read them with `repriced`. Running it twice writes the same costs again: harmless.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

from interlock.pricing import ModelPricing, UnknownPriceError
from interlock.services.traceingest.adapters.store import RepriceInput, TraceStore

PriceOf = Callable[[RepriceInput], int | None]


class ListPrices:
    """Today's genai-prices list price of an event's tokens; None for a model it does not know."""

    source = "genai-prices"

    def __call__(self, usage: RepriceInput) -> int | None:
        pricing = _pricing(usage.provider, usage.model)
        if pricing is None:
            return None
        return pricing.cost_nanos(
            usage.input_tokens,
            usage.output_tokens,
            cached_input_tokens=usage.cached_input_tokens,
            cache_write_tokens=usage.cache_write_tokens,
        )


@lru_cache(maxsize=1024)
def _pricing(provider: str, model: str) -> ModelPricing | None:
    try:
        return ModelPricing.resolve(provider, model)
    except UnknownPriceError:
        return None


@dataclass
class RepriceReport:
    """What one repricing run did."""

    events: int = 0
    repriced: int = 0
    billed_nanos: int = 0
    """Sum of the billed cost of the repriced events."""
    repriced_nanos: int = 0
    """Sum of their new cost."""
    unpriced_models: list[str] = field(default_factory=list)
    """`provider/model` without a current price; their events keep the billed cost."""


async def reprice_usage(store: TraceStore, since_ms: int, price_of: PriceOf, *, page: int = 10_000) -> RepriceReport:
    """Reprice every stored event at or after `since_ms`, a page at a time, by event key."""
    report = RepriceReport()
    unpriced: set[str] = set()
    after = ("", "", "")
    source = str(getattr(price_of, "source", "custom"))
    while True:
        batch = await store.usage_to_reprice(since_ms, after, page)
        if not batch:
            break
        rows = []
        for key, usage in batch:
            report.events += 1
            cost = price_of(usage)
            if cost is None:
                unpriced.add(f"{usage.provider}/{usage.model}")
                continue
            rows.append((key, usage.occurred_at_ms, cost))
            report.repriced += 1
            report.repriced_nanos += cost
            report.billed_nanos += usage.billed_nanos
        await store.insert_reprices(rows, source)
        after = batch[-1][0]
    report.unpriced_models = sorted(unpriced)
    return report
