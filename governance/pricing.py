"""Prices: genai-prices' bundled data, under the rules' overrides. Never auto-updated.

A price override matches the exact model first, then the longest prefix. A model that neither
the overrides nor genai-prices know is priced at `default_price` when the rules set one, and
otherwise raises `PricingError`: a request that cannot be priced is never reserved at zero.
"""

from __future__ import annotations

import functools
import importlib.metadata
from decimal import Decimal

import genai_prices

from governance.errors import PricingError
from governance.matching import lookup_model
from governance.policy import Policy, PriceOverride
from governance.types import Priced, Usage

MILLION = Decimal(1_000_000)


@functools.cache
def genai_prices_version() -> str:
    return f"genai-prices {importlib.metadata.version('genai-prices')}"


def _price_with_override(price: PriceOverride, usage: Usage) -> Decimal:
    cache_read = price.cache_read_mtok if price.cache_read_mtok is not None else price.input_mtok
    cache_write = price.cache_write_mtok if price.cache_write_mtok is not None else price.input_mtok
    uncached = usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens
    total = (
        uncached * price.input_mtok
        + usage.cache_read_tokens * cache_read
        + usage.cache_write_tokens * cache_write
        + usage.output_tokens * price.output_mtok
    )
    return total / MILLION


def _genai_usage(usage: Usage, cache_write_ttl: str | None) -> genai_prices.Usage:
    fields = {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
    }
    if cache_write_ttl == "1h" and usage.cache_write_tokens:
        # Anthropic's one-hour cache writes cost 2x input, against 1.25x for five minutes.
        fields["cache_write_1h_tokens"] = usage.cache_write_tokens
    return genai_prices.Usage(**fields)


class Pricer:
    """Prices usage for the models of one policy. Stateless apart from the policy it was built on."""

    def __init__(self, policy: Policy) -> None:
        self._overrides = dict(policy.prices)
        self._default = policy.default_price

    def price(
        self, provider: str, model: str, usage: Usage, *, cache_write_ttl: str | None = None
    ) -> Priced:
        """The cost of `usage` on `model`. Raises `PricingError` when the model has no price."""
        found = lookup_model(self._overrides, model)
        if found is not None:
            key, override = found
            return Priced(_price_with_override(override, usage), f"override:{key}")
        try:
            calc = genai_prices.calc_price(
                _genai_usage(usage, cache_write_ttl), model, provider_id=provider
            )
        except LookupError:
            if self._default is not None:
                return Priced(_price_with_override(self._default, usage), "default_price")
            raise PricingError(model, provider) from None
        return Priced(Decimal(calc.total_price), genai_prices_version())

    def worst_case(
        self,
        provider: str,
        model: str,
        *,
        input_tokens: int,
        max_output_tokens: int,
        cache_write_hint: str | None = None,
    ) -> Priced:
        """The most a request can cost: every estimated input token at its dearest rate (a cache
        write when the prompt asks for caching) and every allowed output token."""
        usage = Usage(
            input_tokens=input_tokens,
            output_tokens=max_output_tokens,
            cache_write_tokens=input_tokens if cache_write_hint else 0,
        )
        priced = self.price(provider, model, usage, cache_write_ttl=cache_write_hint)
        if cache_write_hint:
            # Some models price cache writes below input; never let the hint lower the bound.
            plain = self.price(provider, model, Usage(input_tokens=input_tokens, output_tokens=max_output_tokens))
            if plain.cost > priced.cost:
                return plain
        return priced
