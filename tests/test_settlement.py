"""The engine's settlement verbs, from plain facts to money in the ledger (no mitmproxy)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from governance import policy
from governance.engine import Engine
from governance.ledger import Ledger, RequestRecord
from governance.settlement import ResponseFacts
from governance.types import Endpoint, Metering, Usage, to_micro

NOW = datetime(2026, 11, 22, tzinfo=UTC)
CHAT = Endpoint("openai", "chat", Metering.METERED, "api.openai.com", "/v1/chat/completions")
JSON = "application/json"


@pytest.fixture
def engine(tmp_path: Path):
    rules = {
        "multipliers": {"gpt-4o": 1},
        "model_limits": {"gpt-4o": 16384},
        "budgets": [{"limit_usd": 1}],
        "prices": {"gpt-4o": {"input_mtok": 1, "output_mtok": 10}},
        "estimate": {"input_margin": 1},
    }
    led = Ledger.open(tmp_path / "l.sqlite")
    yield Engine(policy.parse(rules, Path(".")), led)
    led.close()


def admitted(e: Engine, rid: str = "r1"):
    body = {"model": "gpt-4o", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    read = e.read_request(CHAT, body, principal="p", request_id=rid)
    d = e.admit(read.info, NOW)
    assert d.allowed
    return read.info, d


def row(e: Engine, rid: str = "r1") -> dict:
    [r] = e.ledger.query("SELECT * FROM requests WHERE id = ?", [rid])
    return r


def usage_body(prompt: int, completion: int) -> bytes:
    return json.dumps({"usage": {"prompt_tokens": prompt, "completion_tokens": completion}}).encode()


def test_a_json_answer_is_charged_its_usage(engine):
    info, _ = admitted(engine)
    s = engine.read_response(info, "openai", ResponseFacts(200, JSON, usage_body(1000, 100)))
    engine.settle(s, NOW)
    r = row(engine)
    # 1000 input at $1/M + 100 output at $10/M = $0.002
    assert r["state"] == "settled" and r["outcome"] == "usage" and r["cost_micro"] == 2000


def test_a_buffered_event_stream_is_read_for_its_usage(engine):
    info, _ = admitted(engine)
    events = (
        b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":2000,"completion_tokens":10}}\n\n'
        b"data: [DONE]\n\n"
    )
    engine.settle(engine.read_response(info, "openai", ResponseFacts(200, "text/event-stream", events)), NOW)
    assert row(engine)["cost_micro"] == 2000 + 100


def test_the_taps_usage_is_charged_for_a_streamed_answer(engine):
    info, _ = admitted(engine)
    facts = ResponseFacts(200, "text/event-stream", streamed=True, tapped=Usage(3000, 0))
    engine.settle(engine.read_response(info, "openai", facts), NOW)
    assert row(engine)["cost_micro"] == 3000


@pytest.mark.parametrize(
    "status,state,outcome", [(500, "released", "upstream_error_500"), (200, "settled", "no_usage")]
)
def test_an_answer_without_usage_is_released_on_error_and_charged_in_full_otherwise(
    engine, status, state, outcome
):
    info, d = admitted(engine)
    engine.settle(engine.read_response(info, "openai", ResponseFacts(status, JSON, b"{}")), NOW)
    r = row(engine)
    assert (r["state"], r["outcome"]) == (state, outcome)
    assert r["cost_micro"] == (to_micro(d.reserved) if state == "settled" else 0)


def test_a_replayed_answer_costs_nothing(engine):
    info, _ = admitted(engine)
    facts = ResponseFacts(200, JSON, usage_body(1000, 100), replayed=True)
    engine.settle(engine.read_response(info, "openai", facts), NOW)
    r = row(engine)
    assert (r["state"], r["outcome"], r["cost_micro"]) == ("released", "replayed", 0)


@pytest.mark.expect_errors("settling .* failed")
def test_an_unreadable_answer_or_a_failed_settle_charges_the_hold(engine, monkeypatch):
    info, d = admitted(engine)
    monkeypatch.setattr(
        "governance.wire.FAMILIES", {"openai": None}
    )  # no reader at all: reading the answer fails
    s = engine.read_response(info, "openai", ResponseFacts(200, JSON, usage_body(1, 1)))
    monkeypatch.undo()
    engine.settle(s, NOW)
    assert (row(engine)["state"], row(engine)["cost_micro"]) == ("settled", to_micro(d.reserved))
    info2, d2 = admitted(engine, "r2")

    def broken(*args, **kw):
        raise TypeError("bug")

    monkeypatch.setattr(engine, "finish", broken)
    engine.settle(engine.read_response(info2, "openai", ResponseFacts(200, JSON, usage_body(1, 1))), NOW)
    r = row(engine, "r2")
    assert (r["state"], r["outcome"], r["cost_micro"]) == ("settled", "settle failed", to_micro(d2.reserved))


@pytest.mark.parametrize("reached,state", [(True, "settled"), (False, "released")])
def test_a_failed_request_is_charged_only_if_the_upstream_was_reached(engine, reached, state):
    info, _ = admitted(engine)
    engine.settle(engine.read_error(info, None, reached=reached, error="peer closed\nmore"), NOW)
    r = row(engine)
    assert (r["state"], r["outcome"]) == (state, "error: peer closed")


def test_usage_seen_before_an_error_or_a_shutdown_is_what_is_charged(engine):
    info, _ = admitted(engine)
    engine.settle(engine.read_error(info, Usage(1000, 0), reached=True, error="cut"), NOW)
    assert (row(engine)["outcome"], row(engine)["cost_micro"]) == ("usage; then cut", 1000)
    info2, _ = admitted(engine, "r2")
    engine.settle(engine.read_shutdown(info2, Usage(2000, 0), reached=True), NOW)
    assert (row(engine, "r2")["outcome"], row(engine, "r2")["cost_micro"]) == (
        "proxy shut down; usage seen",
        2000,
    )


def test_release_reap_and_refusals_go_through_the_engine(engine, tmp_path):
    info, _ = admitted(engine)
    engine.release(info.request_id, NOW, outcome="not forwarded")
    assert row(engine)["state"] == "released"
    admitted(engine, "r2")
    assert engine.reap(datetime(2027, 1, 1, tzinfo=UTC)) == 1
    assert row(engine, "r2")["state"] == "expired"
    refusal = engine.screen_raw(["api.openai.com"], 443, "raw TCP")
    assert refusal is not None
    engine.record_refusal(RequestRecord("r3", "p"), refusal, NOW)
    assert (row(engine, "r3")["state"], row(engine, "r3")["decision"]) == ("refused", "refused")
