from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from governance import policy
from governance.errors import PricingError
from governance.pricing import Pricer
from governance.types import USAGE_COUNTS, Usage

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def make(**data) -> policy.Policy:
    return policy.parse({"multipliers": {}, "model_limits": {}, **data}, Path("."))


def test_genai_prices_bundled_data():
    p = Pricer(make())
    assert p.price("openai", "gpt-4o", Usage(1_000_000, 1_000_000), NOW).cost == Decimal("12.5")
    priced = p.price("anthropic", "claude-sonnet-4-5-20250929", Usage(13_020, 400, 10_000, 3_000), NOW)
    assert priced.cost == Decimal("0.02031") and priced.source == "genai-prices 0.2.3"
    # The >200k-token tier applies to every token of the request.
    assert p.price("anthropic", "claude-sonnet-4-5", Usage(1_000_000, 1_000_000), NOW).cost == Decimal("28.5")


def test_one_hour_cache_writes_cost_more():
    p = Pricer(make())
    u = Usage(13_020, 400, 10_000, 3_000)
    one_hour = Usage(13_020, 400, 10_000, 3_000, cache_write_1h_tokens=3_000)
    assert (
        p.price("anthropic", "claude-sonnet-4-5", one_hour, NOW).cost
        > p.price("anthropic", "claude-sonnet-4-5", u, NOW).cost
    )


def test_overrides_exact_then_longest_prefix():
    p = Pricer(
        make(
            prices={
                "gpt-4o": {"input_mtok": 1, "output_mtok": 2},
                "gpt-4o-mini": {"input_mtok": 3, "output_mtok": 4, "cache_read_mtok": 0.5},
            }
        )
    )
    assert p.price("openai", "gpt-4o-2024-08-06", Usage(1_000_000, 0), NOW).source == "override:gpt-4o"
    mini = p.price("openai", "gpt-4o-mini-2024-07-18", Usage(1_000_000, 1_000_000, 500_000), NOW)
    assert (
        mini.cost == Decimal("1.5") + Decimal("0.25") + Decimal(4) and mini.source == "override:gpt-4o-mini"
    )


def test_unpriced_model_raises_unless_default_price():
    with pytest.raises(PricingError, match="gpt-nope"):
        Pricer(make()).price("openai", "gpt-nope", Usage(1, 1), NOW)
    p = Pricer(make(default_price={"input_mtok": 10, "output_mtok": 30}))
    priced = p.price("openai", "gpt-nope", Usage(1_000_000, 0), NOW)
    assert priced.cost == Decimal(10) and priced.source == "default_price"


def test_worst_case_prices_cache_writes_when_asked():
    p = Pricer(make())
    plain = p.worst_case(
        "anthropic", "claude-sonnet-4-5", input_tokens=100_000, max_output_tokens=1000, now=NOW
    )
    cached = p.worst_case(
        "anthropic",
        "claude-sonnet-4-5",
        input_tokens=100_000,
        max_output_tokens=1000,
        now=NOW,
        cache_write_hint="1h",
    )
    assert plain.cost == Decimal("0.315") and cached.cost == Decimal("0.615")


@pytest.mark.parametrize(
    "provider,model",
    [
        ("openai", "gpt-4o"),
        ("openai", "gpt-5"),
        ("openai", "o3"),
        ("anthropic", "claude-sonnet-4-5"),
        ("anthropic", "claude-opus-4-1"),
        ("anthropic", "claude-haiku-4-5"),
    ],
)
def test_rate_cards_agree_with_genai_prices_exactly(provider, model):
    import random

    from governance.pricing import _genai_cost, derive_rate_card

    card = derive_rate_card(provider, model, NOW)
    assert card is not None
    rng = random.Random(7)
    for _ in range(200):
        total = rng.randrange(0, min(card.below, 400_000))
        read = rng.randrange(0, total + 1)
        write = rng.randrange(0, total - read + 1)
        u = Usage(
            total,
            rng.randrange(0, 100_000),
            read,
            write,
            cache_write_1h_tokens=rng.choice([0, write, write // 3]),
        )
        expected = _genai_cost(provider, model, u, NOW)
        if total < card.below:
            assert card.price(u) == expected
        assert Pricer(make()).price(provider, model, u, NOW).cost == expected


@pytest.mark.parametrize(
    ("provider", "model", "before", "after"),
    [
        # A dated price change, and an off-peak price by time of day: the price is the one in force
        # at the `now` the caller passes, never the machine's clock.
        (
            "anthropic",
            "claude-sonnet-4-6",
            datetime(2026, 3, 12, 12, tzinfo=UTC),
            datetime(2026, 3, 13, 12, tzinfo=UTC),
        ),
        (
            "deepseek",
            "deepseek-chat",
            datetime(2026, 11, 22, 12, tzinfo=UTC),
            datetime(2026, 11, 22, 17, 0, tzinfo=UTC),
        ),
    ],
)
def test_prices_follow_the_time_passed_in(provider, model, before, after):
    import genai_prices

    usage = Usage(1_000_000, 1_000_000)
    p = Pricer(make())
    for when in (before, after, before):  # the card cache must follow the price, both ways
        expected = genai_prices.calc_price(
            genai_prices.Usage(input_tokens=1_000_000, output_tokens=1_000_000),
            model,
            provider_id=provider,
            genai_request_timestamp=when,
        ).total_price
        assert p.price(provider, model, usage, when).cost == expected
    assert p.price(provider, model, usage, before).cost != p.price(provider, model, usage, after).cost


def _multiplier_models() -> list[tuple[str, str]]:
    from governance import RULES_DIR

    table = yaml.safe_load((RULES_DIR / "multipliers.yaml").read_text())
    return [("anthropic" if m.startswith("claude") else "openai", m) for m in table if m != "default"]


MATRIX = [
    Usage(12_000, 800),
    Usage(30_000, 2_000, cache_read_tokens=20_000),  # cache reads
    Usage(30_000, 2_000, cache_write_tokens=25_000),  # 5-minute writes
    Usage(30_000, 2_000, cache_read_tokens=4_000, cache_write_tokens=25_000, cache_write_1h_tokens=25_000),
    Usage(250_000, 4_000, cache_read_tokens=100_000),  # past the 200k and 272k tier cliffs
    Usage(300_000, 20_000),
    Usage(5_000, 60_000),  # reasoning-heavy output
    Usage(5_000, 1_000, web_searches=4),  # server-side search fees
    Usage(5_000, 1_000, input_audio_tokens=2_000, output_audio_tokens=500),
    Usage(5_000, 1_000, service_tier="priority"),
    Usage(5_000, 1_000, service_tier="flex"),
    Usage(5_000, 1_000, speed="fast"),
]


@pytest.mark.parametrize(("provider", "model"), _multiplier_models())
def test_pricing_matrix_matches_genai_prices(provider, model):
    """Every model the multiplier table lists, priced by spendfuse (rate cards included) and by
    genai-prices' own calc_price, agree to the last digit for every kind of usage."""
    import genai_prices

    p = Pricer(make())
    for u in MATRIX:
        fields = {k: getattr(u, k) for k in USAGE_COUNTS if getattr(u, k)}
        expected = genai_prices.calc_price(
            genai_prices.Usage(**fields),
            model,
            provider_id=provider,
            genai_request_timestamp=NOW,
            price_context=u.price_context() or None,
        ).total_price
        assert p.price(provider, model, u, NOW).cost == expected, (model, u)


def test_a_worst_case_whose_input_reaches_a_tier_is_priced_at_the_tier_throughout():
    p = Pricer(make())
    below = p.worst_case(
        "anthropic", "claude-sonnet-4-5", input_tokens=199_999, max_output_tokens=10_000, now=NOW
    )
    above = p.worst_case(
        "anthropic", "claude-sonnet-4-5", input_tokens=200_001, max_output_tokens=10_000, now=NOW
    )
    # $3/$15 below 200k input tokens; $6/$22.50 for every token once the input passes it.
    assert below.cost == Decimal("0.749997")
    assert above.cost == Decimal("1.425006")


def test_audio_input_is_reserved_at_the_audio_price():
    """Audio tokens cost more than text (gpt-audio: $32 against $2.50 per 1M input tokens): a
    prompt with audio prices its whole input bound at the audio rate, so it never reserves low."""
    p = Pricer(make())
    text = p.worst_case("openai", "gpt-audio", input_tokens=1000, max_output_tokens=0, now=NOW)
    audio = p.worst_case(
        "openai", "gpt-audio", input_tokens=1000, max_output_tokens=0, now=NOW, audio_input=True
    )
    real = p.price("openai", "gpt-audio", Usage(input_tokens=1000, input_audio_tokens=1000), NOW)
    assert audio.cost == real.cost > text.cost


def test_tier_thresholds_are_genai_prices_tier_starts():
    from governance.pricing import tier_thresholds

    assert tier_thresholds("openai", "gpt-5.4") == (272_000,)  # OpenAI: long context from 272K
    assert tier_thresholds("anthropic", "claude-sonnet-4-5") == (200_000,)  # Anthropic: >200K
    # Opus 4.6 had a 200K tier until 2026-03-13: a dated price's threshold counts too.
    assert tier_thresholds("anthropic", "claude-opus-4-6") == (200_000,)
    assert tier_thresholds("openai", "gpt-4o") == ()
    assert tier_thresholds("openai", "no-such-model") == ()
