"""Prices: genai-prices' bundled data, under the rules' overrides. Never auto-updated.

A price override matches the exact model first, then the longest prefix. A model that neither
the overrides nor genai-prices know is priced at `default_price` when the rules set one, and
otherwise raises `PricingError`: a request that cannot be priced is never reserved at zero.
"""

from __future__ import annotations

import functools
import importlib.metadata
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

import genai_prices
from genai_prices.types import TieredPrices

from governance.errors import PricingError
from governance.matching import lookup_model
from governance.policy import Policy, PriceOverride
from governance.types import USAGE_COUNTS, Priced, Usage

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


def _genai_usage(usage: Usage) -> genai_prices.Usage:
    # The four token counts always; the rest only when present, since genai-prices checks each
    # field it is given against the model's price card.
    fields = {name: getattr(usage, name) for name in USAGE_COUNTS if name in _ALWAYS or getattr(usage, name)}
    return genai_prices.Usage(**fields)


_ALWAYS = frozenset({"input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"})


_PROBE = 1000  # tokens per probe: small enough to stay below every tier cliff


@dataclass(frozen=True)
class RateCard:
    """A model's genai-prices price as exact per-token rates, valid while the total input stays
    below `below` tokens (where tiered prices jump for every token of the request).

    genai-prices decomposes usage into priced units on every call (~60 us); a card does the same
    arithmetic in ~3 us. Cards are derived by probing genai-prices itself and are only used
    after a mixed probe proved the price linear, so they can never disagree with it."""

    base: Decimal  # per-request fees
    uncached_input: Decimal
    cache_read: Decimal
    cache_write: Decimal
    cache_write_1h: Decimal
    output: Decimal
    below: int

    def price(self, usage: Usage) -> Decimal:
        uncached = usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens
        return (
            self.base
            + uncached * self.uncached_input
            + usage.cache_read_tokens * self.cache_read
            + (usage.cache_write_tokens - usage.cache_write_1h_tokens) * self.cache_write
            + usage.cache_write_1h_tokens * self.cache_write_1h
            + usage.output_tokens * self.output
        )


def _genai_cost(provider: str, model: str, usage: Usage, when: datetime) -> Decimal:
    """genai-prices' price of `usage`, with the prices in force at `when` (they are dated, and
    some depend on the time of day): the caller's time, never the clock's."""
    calc = genai_prices.calc_price(
        _genai_usage(usage),
        model,
        provider_id=provider,
        genai_request_timestamp=when,
        price_context=usage.price_context() or None,
    )
    return Decimal(calc.total_price)


def price_in_force(provider: str, model: str, when: datetime) -> object:
    """genai-prices' price object for `model` at `when`. Raises LookupError for an unknown model."""
    snapshot = genai_prices.data_snapshot.get_snapshot()
    _, info = snapshot.find_provider_model(model, None, provider, None)
    return info.get_prices(when)


@functools.cache
def context_window(provider: str, model: str) -> int | None:
    """genai-prices' context window for `model` (input plus output tokens), or None."""
    try:
        _, info = genai_prices.data_snapshot.get_snapshot().find_provider_model(model, None, provider, None)
    except LookupError:
        return None
    return info.context_window


@functools.cache
def tier_thresholds(provider: str, model: str) -> tuple[int, ...]:
    """The input sizes (tokens) at which any of genai-prices' prices of `model`, dated or not,
    changes tier; () for an unknown model or flat prices. A threshold of a price not in force
    only makes a caller ask the provider's counter once more than it had to."""
    try:
        _, info = genai_prices.data_snapshot.get_snapshot().find_provider_model(model, None, provider, None)
    except LookupError:
        return ()
    prices = info.prices if isinstance(info.prices, list) else [info.prices]
    cards = [getattr(p, "prices", p) for p in prices]
    return tuple(
        sorted(
            {t.start for c in cards for v in vars(c).values() if isinstance(v, TieredPrices) for t in v.tiers}
        )
    )


def derive_rate_card(provider: str, model: str, when: datetime) -> RateCard | None:
    """Probe genai-prices for `model`'s per-token rates at `when`. None when its price is not a
    plain linear function below a tier cliff (then every call goes to genai-prices). Raises
    LookupError for an unknown model."""
    calc = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=_PROBE, output_tokens=_PROBE),
        model,
        provider_id=provider,
        genai_request_timestamp=when,
    )
    below = 10**12
    for value in vars(calc.model_price).values():
        if isinstance(value, TieredPrices):
            below = min([below, *(t.start for t in value.tiers)])
        elif value is not None and not isinstance(value, Decimal):
            return None  # a price shape the card does not model
    if below <= 4 * _PROBE:
        return None

    def cost(i: int, o: int = 0, r: int = 0, w: int = 0, w1h: int = 0) -> Decimal:
        return _genai_cost(provider, model, Usage(i, o, r, w, cache_write_1h_tokens=w1h), when)

    base = cost(0)
    card = RateCard(
        base=base,
        uncached_input=(cost(_PROBE) - base) / _PROBE,
        cache_read=(cost(_PROBE, r=_PROBE) - base) / _PROBE,
        cache_write=(cost(_PROBE, w=_PROBE) - base) / _PROBE,
        cache_write_1h=(cost(_PROBE, w=_PROBE, w1h=_PROBE) - base) / _PROBE,
        output=(cost(0, _PROBE) - base) / _PROBE,
        below=below,
    )
    for mixed in (
        Usage(3 * _PROBE + 7, 2 * _PROBE + 3, _PROBE + 1, _PROBE // 2),
        Usage(3 * _PROBE + 7, 2 * _PROBE + 3, _PROBE + 1, _PROBE // 2, cache_write_1h_tokens=_PROBE // 4),
    ):
        if card.price(mixed) != _genai_cost(provider, model, mixed, when):
            return None
    return card


class Pricer:
    """Prices usage for the models of one policy. Thread-safe; caches per-model rate cards."""

    def __init__(self, policy: Policy, host_settings: Mapping[str, Any] | None = None) -> None:
        """Prices under `policy`. `host_settings` (an operator host entry's `prices` and
        `default_price`) win over the policy's own for requests to that host."""
        host = host_settings or {}
        self._overrides = {**policy.prices, **(host.get("prices") or {})}
        self._default = host.get("default_price") or policy.default_price
        # Keyed by genai-prices' own price object in force, so a dated or time-of-day price
        # change gives a new card at exactly the moment it takes effect.
        self._cards: dict[tuple[str, str, int], RateCard | None] = {}
        self._lock = threading.Lock()

    def _card(self, provider: str, model: str, when: datetime) -> RateCard | None:
        key = (provider, model.lower(), id(price_in_force(provider, model, when)))  # LookupError: unknown
        with self._lock:
            if key in self._cards:
                return self._cards[key]
        card = derive_rate_card(provider, model, when)
        with self._lock:
            if len(self._cards) > 4096:
                self._cards.clear()
            self._cards[key] = card
        return card

    def price(self, provider: str, model: str, usage: Usage, now: datetime) -> Priced:
        """The cost of `usage` on `model`, at the prices in force at `now`. Raises
        `PricingError` when the model has no price."""
        # A price names the model as its provider does: an override of `claude-sonnet-4-5` is
        # Anthropic's price, not Bedrock's (whose ids it must name: `us.anthropic.claude-...`).
        found = lookup_model(self._overrides, model, bedrock_names=False)
        if found is not None:
            key, override = found
            return Priced(_price_with_override(override, usage), f"override:{key}")
        try:
            card = self._card(provider, model, now)
            if card is not None and usage.plain and usage.input_tokens < card.below:
                return Priced(card.price(usage), genai_prices_version())
            return Priced(_genai_cost(provider, model, usage, now), genai_prices_version())
        except LookupError:
            if self._default is not None:
                return Priced(_price_with_override(self._default, usage), "default_price")
            raise PricingError(model, provider) from None

    def worst_case(
        self,
        provider: str,
        model: str,
        *,
        input_tokens: int,
        max_output_tokens: int,
        now: datetime,
        cache_write_hint: str | None = None,
        service_tier: str | None = None,
        speed: str | None = None,
        web_searches: int = 0,
        audio_output: bool = False,
        audio_input: bool = False,
    ) -> Priced:
        """The most a request can cost: every estimated input token at its dearest rate (a cache
        write when the prompt asks for caching), every allowed output token (as audio when the
        request may answer in audio; every input token as audio when the prompt carries audio),
        at the tier and speed it asks for, plus every server-side
        web search it allows. Each alternative is priced and the dearest wins, so a hint can
        only raise the bound."""
        base = Usage(
            input_tokens=input_tokens,
            output_tokens=max_output_tokens,
            web_searches=web_searches,
            service_tier=service_tier,
            speed=speed,
        )
        candidates = [base]
        if cache_write_hint:
            candidates.append(
                replace(
                    base,
                    cache_write_tokens=input_tokens,
                    cache_write_1h_tokens=input_tokens if cache_write_hint == "1h" else 0,
                )
            )
        if audio_output:
            candidates += [replace(c, output_audio_tokens=max_output_tokens) for c in candidates]
        if audio_input:
            # The input bound counts audio by its size, which is many times its audio tokens; but
            # audio tokens cost more than text, so the bound is priced as if all of it were audio.
            candidates += [replace(c, input_audio_tokens=input_tokens) for c in candidates]
        return max((self.price(provider, model, u, now) for u in candidates), key=lambda p: p.cost)
