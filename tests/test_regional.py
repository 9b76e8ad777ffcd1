"""Regional prices: Anthropic's US-only inference (1.1x on Opus 4.6 and later) and OpenAI's
data-residency hosts (1.1x on models from 2026-03-05), reserved and settled.

Oracles are the published prices, written here: claude-opus-4-6 $5 / 1M input, $25 / 1M output,
$10 per 1,000 web searches; gpt-5.4 $2.50 / $15; gpt-5 $1.25 / $10."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from governance import policy, regional
from governance.engine import Engine
from governance.errors import PolicyError
from governance.ledger import Ledger
from governance.types import Endpoint, Metering, Usage

NOW = datetime(2026, 11, 22, tzinfo=UTC)
MESSAGES = Endpoint(
    "anthropic", "messages", Metering.METERED, "api.anthropic.com", "/v1/messages", "anthropic"
)


def chat_at(host: str) -> Endpoint:
    return Endpoint("openai", "chat", Metering.METERED, host, "/v1/chat/completions")


@pytest.fixture
def engine(tmp_path: Path):
    rules = {"budgets": [{"limit_usd": 100}], "estimate": {"input_margin": 1}}
    led = Ledger.open(tmp_path / "l.sqlite")
    yield Engine(policy.parse(rules, Path(".")), led)
    led.close()


def message(model: str = "claude-opus-4-6", **kw):
    return {"model": model, "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}], **kw}


def settle(engine, endpoint, body, usage, rid):
    info = engine.read_request(endpoint, body, principal="p", request_id=rid).info
    engine.admit(info, NOW)
    engine.finish(info, usage, NOW, outcome="usage")
    return engine.ledger.request(rid)


PLAIN = 1000 * 5 + 100 * 25  # micro-USD of 1,000 input and 100 output tokens on claude-opus-4-6


@pytest.mark.parametrize(
    ("request_geo", "reported_geo", "expected"),
    [
        ("us", "us", PLAIN * 11 // 10),
        ("us", None, PLAIN * 11 // 10),  # the request's own geo when the response says none
        (None, "us", PLAIN * 11 // 10),  # the workspace default, reported only in the usage
        (None, "global", PLAIN),
        ("global", "global", PLAIN),
        (None, None, PLAIN),
    ],
)
def test_anthropic_us_inference_settles_at_the_uplift(engine, request_geo, reported_geo, expected):
    body = message(**({"inference_geo": request_geo} if request_geo else {}))
    row = settle(engine, MESSAGES, body, Usage(1000, 100, inference_geo=reported_geo), "r")
    assert row["cost_micro"] == expected
    assert ("regional:anthropic-us-inference x1.1" in row["price_source"]) == (expected != PLAIN)


def test_the_reservation_assumes_the_uplift_unless_the_request_rules_it_out(engine):
    reserved = {}
    for geo in (None, "us", "global"):
        info = engine.read_request(
            MESSAGES, message(**({"inference_geo": geo} if geo else {})), principal="p", request_id=str(geo)
        ).info
        reserved[geo] = engine.admit(info, NOW).reserved
    assert reserved[None] == reserved["us"] > reserved["global"]
    est = engine.ledger.request("global")["est_input_tokens"]
    exact = (Decimal(est) * 5 + 100 * 25) / 1_000_000  # no cache writes asked: plain input
    assert reserved["global"] == exact
    # 1.1x, rounded up to the micro-dollar.
    assert reserved["us"] == (exact * Decimal("1.1")).quantize(Decimal("0.000001"), rounding="ROUND_CEILING")


def test_older_models_and_search_fees_are_not_uplifted(engine):
    old = settle(engine, MESSAGES, message("claude-sonnet-4-5", inference_geo="us"), Usage(1000, 100), "o")
    assert old["cost_micro"] == 1000 * 3 + 100 * 15
    searched = settle(engine, MESSAGES, message(inference_geo="us"), Usage(1000, 100, web_searches=2), "s")
    assert searched["cost_micro"] == PLAIN * 11 // 10 + 2 * 10_000


def test_openai_residency_hosts_cost_more_for_new_models(engine):
    body = {"model": "gpt-5.4", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}
    eu = settle(engine, chat_at("eu.api.openai.com"), body, Usage(1000, 100), "eu")
    plain = settle(engine, chat_at("api.openai.com"), body, Usage(1000, 100), "plain")
    older = settle(engine, chat_at("us.api.openai.com"), {**body, "model": "gpt-5"}, Usage(1000, 100), "old")
    assert plain["cost_micro"] == 1000 * 2.5 + 100 * 15
    assert eu["cost_micro"] == (1000 * 2.5 + 100 * 15) * 1.1
    assert older["cost_micro"] == 1000 * 1.25 + 100 * 10
    assert "regional:openai-data-residency" in eu["price_source"]


def test_a_bad_table_stops_startup(tmp_path: Path):
    bad = tmp_path / "r.yaml"
    bad.write_text("uplifts:\n  - {name: x, provider: openai, factor: 1.1}\n")
    with pytest.raises(PolicyError, match="exactly one"):
        regional.load(bad)


def test_inference_geo_must_be_a_string(engine):
    from governance.errors import RequestParseError

    with pytest.raises(RequestParseError, match="inference_geo"):
        engine.read_request(MESSAGES, message(inference_geo=["us"]), principal="p", request_id="x")
