"""The rules' fee table: per-call fees genai-prices does not carry, reserved and settled.

Oracles are OpenAI's published prices, written here: gpt-5-search-api $1.25 / 1M input,
$10 / 1M output, and $10 per 1,000 calls; the preview search models $25 per 1,000 calls."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from governance import fees, policy
from governance.engine import Engine
from governance.errors import PolicyError
from governance.ledger import Ledger
from governance.types import Endpoint, Metering, Usage

NOW = datetime(2026, 11, 22, tzinfo=UTC)
CHAT = Endpoint("openai", "chat", Metering.METERED, "api.openai.com", "/v1/chat/completions")


@pytest.fixture
def engine(tmp_path: Path):
    rules = {"budgets": [{"limit_usd": 100}], "estimate": {"input_margin": 1}, "allow_unlimited": True}
    led = Ledger.open(tmp_path / "l.sqlite")
    yield Engine(policy.parse(rules, Path(".")), led)
    led.close()


def test_the_shipped_table_names_the_search_models():
    table = fees.shipped()
    assert table.fee_for("openai", "gpt-5-search-api").per_call == Decimal("0.01")
    assert table.fee_for("openai", "gpt-5-search-api-2025-10-14").per_call == Decimal("0.01")
    assert table.fee_for("openai", "gpt-4o-mini-search-preview").per_call == Decimal("0.025")
    # A search model the table does not name is caught by its class, at the dearest fee.
    assert table.fee_for("openai", "gpt-9-search-preview").per_call == Decimal("0.025")
    assert table.fee_for("openai", "gpt-5") is None
    assert table.fee_for("anthropic", "gpt-5-search-api") is None


def test_a_bad_table_stops_startup(tmp_path: Path):
    bad = tmp_path / "fees.yaml"
    bad.write_text("fees:\n  - {provider: openai, model: x, per_call_usd: 1, per_1k_calls_usd: 2}\n")
    with pytest.raises(PolicyError, match="exactly one"):
        fees.load(bad)
    bad.write_text("fees:\n  - {provider: openai, model: x, per_call: 1}\n")
    with pytest.raises(PolicyError):
        fees.load(bad)


def test_the_fee_is_reserved_and_settled_and_named(engine):
    req = {
        "model": "gpt-5-search-api",
        "messages": [{"role": "user", "content": "news?"}],
        "max_tokens": 1000,
    }
    info = engine.read_request(CHAT, req, principal="p", request_id="s1").info
    d = engine.admit(info, NOW)
    est = engine.ledger.request("s1")["est_input_tokens"]
    # Every estimated input token at $1.25/M, 1,000 output tokens at $10/M, one call at $0.01.
    assert d.reserved == (Decimal(est) * Decimal("1.25") + 1000 * 10) / 1_000_000 + Decimal("0.01")
    engine.finish(info, Usage(1000, 100), NOW, outcome="usage")
    row = engine.ledger.request("s1")
    assert row["cost_micro"] == 1250 + 1000 + 10_000
    assert "fees.yaml:gpt-5-search-api" in row["price_source"]


def test_six_calls_cost_what_the_provider_bills(engine):
    """The issue's case: six calls billed their $0.06 of fees; the ledger must say the same."""
    for i in range(6):
        req = {"model": "gpt-5-search-api", "messages": [{"role": "user", "content": "q"}], "max_tokens": 50}
        info = engine.read_request(CHAT, req, principal="p", request_id=f"c{i}").info
        assert engine.admit(info, NOW).allowed
        engine.finish(info, Usage(16, 18), NOW, outcome="usage")  # 16 x 1.25 + 18 x 10 = 200 u$
    total = sum(engine.ledger.request(f"c{i}")["cost_micro"] for i in range(6))
    assert total == 6 * (10_000 + 200)  # $0.06 in fees, $0.0012 in tokens


def test_no_fee_for_a_call_that_never_ran(engine):
    req = {"model": "gpt-4o-search-preview", "messages": [{"role": "user", "content": "q"}], "max_tokens": 50}
    info = engine.read_request(CHAT, req, principal="p", request_id="n").info
    engine.admit(info, NOW)
    engine.finish(info, None, NOW, outcome="error", upstream_ran=False)
    assert engine.ledger.request("n")["cost_micro"] in (None, 0)
