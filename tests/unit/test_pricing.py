"""Integer pricing on the hot path equals genai-prices' own arithmetic to the nano-dollar."""

from __future__ import annotations

import random
from decimal import Decimal

from genai_prices import data

from interlock.pricing import ModelPricing


def _every_priced_model() -> list[ModelPricing]:
    found = []
    for provider in data.providers:
        for model in provider.models:
            try:
                found.append(ModelPricing.resolve(provider.id, model.id))
            except LookupError:
                continue
    return found


def test_fast_cost_equals_genai_prices_for_every_model_and_many_usages() -> None:
    rng = random.Random(7)
    models = _every_priced_model()
    linear = [m for m in models if m._linear is not None]
    # Nearly every listed price is flat; the fast path must cover them, not fall back.
    assert len(linear) > 0.8 * len(models) > 1000
    checked = 0
    for pricing in models:
        for _ in range(4):
            input_tokens = rng.randint(0, 400_000)
            cached = rng.choice([0, rng.randint(0, input_tokens)])
            written = rng.choice([0, rng.randint(0, input_tokens - cached)])
            output_tokens = rng.randint(0, 120_000)
            kwargs = {"cached_input_tokens": cached, "cache_write_tokens": written}
            try:
                expected = pricing.calc_cost_nanos(input_tokens, output_tokens, **kwargs)
            except (ValueError, LookupError):
                continue  # a usage the model's price cannot take (e.g. cache writes without a price)
            assert pricing.cost_nanos(input_tokens, output_tokens, **kwargs) == expected, (pricing, kwargs)
            checked += 1
    assert checked > 4_000


def test_tiered_prices_keep_genai_prices_arithmetic() -> None:
    tiered = [m for m in _every_priced_model() if m._linear is None]
    assert tiered, "genai-prices lists tiered prices (e.g. long-context tiers)"
    pricing = tiered[0]
    for input_tokens in (0, 1_000, 150_000, 250_000, 1_000_000):
        assert pricing.cost_nanos(input_tokens, 500) == pricing.calc_cost_nanos(input_tokens, 500)


def test_cost_is_rounded_up_to_the_next_nano_dollar() -> None:
    # $0.0015 / $0.0001 per million tokens: 1.5 and 0.1 nano-dollars a token.
    pricing = ModelPricing.custom("tiny", Decimal("0.0015"), Decimal("0.0001"))
    assert pricing._linear is not None
    assert pricing.cost_nanos(1, 0) == 2
    assert pricing.cost_nanos(1, 3) == 2  # 1.8
    assert pricing.cost_nanos(2, 0) == 3
    assert pricing.cost_nanos(2, 10) == 4  # 3 + 1, exact
    assert [pricing.cost_nanos(i, o) for i, o in ((1, 3), (2, 10))] == [
        pricing.calc_cost_nanos(i, o) for i, o in ((1, 3), (2, 10))
    ]
