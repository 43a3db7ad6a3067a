"""Model prices from the maintained genai-prices table, in integer nano-dollars.

Costs are integers of 1e-9 USD so that ledger, Kafka and ClickHouse totals add up exactly;
a price is rounded up to the next nano-dollar, never down.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

from genai_prices import Usage, calc_price
from genai_prices.types import ModelPrice

NANOS_PER_USD = 1_000_000_000


class UnknownPriceError(LookupError):
    """genai-prices has no price for this provider and model."""


def usd_to_nanos(usd: Decimal) -> int:
    """Whole nano-dollars, rounded up."""
    return math.ceil(usd * NANOS_PER_USD)


def nanos_to_usd(nanos: int) -> Decimal:
    return Decimal(nanos) / NANOS_PER_USD


@dataclass(frozen=True)
class ModelPricing:
    """The price of one model at one provider, resolved once when routing config loads."""

    provider_id: str
    """genai-prices provider id, e.g. `openai`; `custom` for prices given in config."""
    model_ref: str
    """genai-prices model reference, e.g. `gpt-4o-mini`."""
    price: ModelPrice
    context_window: int | None = None
    """Input + output tokens the model takes, when known."""

    @classmethod
    def resolve(cls, provider_id: str, model_ref: str, context_window: int | None = None) -> ModelPricing:
        try:
            found = calc_price(Usage(input_tokens=0, output_tokens=0), model_ref=model_ref, provider_id=provider_id)
        except LookupError as exc:
            raise UnknownPriceError(f"no price for model {model_ref!r} at provider {provider_id!r}") from exc
        window = context_window or found.model.context_window
        return cls(provider_id=provider_id, model_ref=model_ref, price=found.model_price, context_window=window)

    @classmethod
    def custom(
        cls,
        model_ref: str,
        input_usd_per_mtok: Decimal,
        output_usd_per_mtok: Decimal,
        cached_input_usd_per_mtok: Decimal | None = None,
        context_window: int | None = None,
    ) -> ModelPricing:
        """Prices for private or self-hosted models that no public table lists."""
        price = ModelPrice(
            input_mtok=input_usd_per_mtok, output_mtok=output_usd_per_mtok, cache_read_mtok=cached_input_usd_per_mtok
        )
        return cls(provider_id="custom", model_ref=model_ref, price=price, context_window=context_window)

    def usd_per_mtok(self) -> tuple[Decimal | None, Decimal | None, Decimal | None]:
        """(input, output, cached input) list prices per million tokens; None when tiered or absent."""

        def flat(value: object) -> Decimal | None:
            return value if isinstance(value, Decimal) else None

        return flat(self.price.input_mtok), flat(self.price.output_mtok), flat(self.price.cache_read_mtok)

    def cost_nanos(
        self, input_tokens: int, output_tokens: int, *, cached_input_tokens: int = 0, cache_write_tokens: int = 0
    ) -> int:
        """Cost of a call in nano-dollars, rounded up.

        `input_tokens` counts all input, cached or not; the cached and cache-write parts are
        priced at the model's cache rates where genai-prices has them.
        """
        usage = Usage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_tokens=cached_input_tokens or None,
            cache_write_tokens=cache_write_tokens or None,
        )
        return usd_to_nanos(self.price.calc_price(usage)["total_price"])
