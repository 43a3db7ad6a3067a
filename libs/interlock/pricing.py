"""Model prices from the maintained genai-prices table, in integer nano-dollars.

Costs are integers of 1e-9 USD so that ledger, Kafka and ClickHouse totals add up exactly;
a price is rounded up to the next nano-dollar, never down.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import Decimal

from genai_prices import Usage, calc_price
from genai_prices.types import ModelPrice, TieredPrices

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
    _linear: tuple[int, int, int, int, int, int] | None = field(default=None, init=False, repr=False, compare=False)
    """(scale, base, input, output, cached input, cache write) as integers of nano-dollars x
    scale per token, when the price is linear in the token counts; None otherwise."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "_linear", _linear_coefficients(self.price))

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
        priced at the model's cache rates where genai-prices has them. A flat price (no
        tiers) is linear in the counts: its per-token rates, taken from genai-prices once, are
        applied in integer arithmetic on the hot path, to the same nano-dollar.
        """
        linear = self._linear
        if (
            linear is None
            or min(input_tokens, output_tokens, cached_input_tokens, cache_write_tokens) < 0
            or cached_input_tokens + cache_write_tokens > input_tokens
        ):
            return self.calc_cost_nanos(
                input_tokens,
                output_tokens,
                cached_input_tokens=cached_input_tokens,
                cache_write_tokens=cache_write_tokens,
            )
        scale, base, per_input, per_output, per_cached, per_write = linear
        scaled = (
            base
            + per_input * input_tokens
            + per_output * output_tokens
            + per_cached * cached_input_tokens
            + per_write * cache_write_tokens
        )
        return -(-scaled // scale)  # ceil

    def calc_cost_nanos(
        self, input_tokens: int, output_tokens: int, *, cached_input_tokens: int = 0, cache_write_tokens: int = 0
    ) -> int:
        """`cost_nanos` computed by genai-prices itself (the reference of the fast path)."""
        usage = Usage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_tokens=cached_input_tokens or None,
            cache_write_tokens=cache_write_tokens or None,
        )
        return usd_to_nanos(self.price.calc_price(usage)["total_price"])


def _linear_coefficients(price: ModelPrice) -> tuple[int, int, int, int, int, int] | None:
    """Integer per-token rates of a flat price, probed through genai-prices; None if tiered."""
    if any(isinstance(value, TieredPrices) for value in vars(price).values()):
        return None
    million = 1_000_000

    def total(input_tokens: int, output_tokens: int, cached: int = 0, written: int = 0) -> Decimal:
        usage = Usage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_tokens=cached or None,
            cache_write_tokens=written or None,
        )
        return Decimal(price.calc_price(usage)["total_price"])

    try:
        base = total(0, 0)
        per_input = (total(million, 0) - base) / million
        per_output = (total(0, million) - base) / million
        # Cached and written tokens are part of input_tokens: their rate is on top of it.
        per_cached = (total(million, 0, cached=million) - base) / million - per_input
        per_write = (total(million, 0, written=million) - base) / million - per_input
    except (LookupError, ValueError, ArithmeticError):
        return None
    rates = [value * NANOS_PER_USD for value in (base, per_input, per_output, per_cached, per_write)]
    places = max(0, *(-int(rate.as_tuple().exponent) for rate in rates))
    scale = 10**places
    scaled = [int(rate * scale) for rate in rates]
    if any(Decimal(n) != rate * scale for n, rate in zip(scaled, rates, strict=True)):
        return None  # not exactly representable: keep genai-prices' own arithmetic
    return scale, scaled[0], scaled[1], scaled[2], scaled[3], scaled[4]
