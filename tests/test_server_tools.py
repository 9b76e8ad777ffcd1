"""Server-side tool loops: (allowed calls + 1) rounds, each up to a context window of input and
the output cap of output; an unbounded loop is bounded by the rules and the bound is written
into the forwarded request, or refused.

Oracles are published facts written here: gpt-4o $2.50 / 1M input, $10 / 1M output, a 128,000
token window; o4-mini-deep-research a 200,000 token window."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from governance import policy, server_tools
from governance.engine import Engine
from governance.ledger import Ledger
from governance.types import Endpoint, Metering, RequestInfo, Usage

NOW = datetime(2026, 11, 22, tzinfo=UTC)
RESPONSES = Endpoint("openai", "responses", Metering.METERED, "api.openai.com", "/v1/responses")
MESSAGES = Endpoint(
    "anthropic", "messages", Metering.METERED, "api.anthropic.com", "/v1/messages", "anthropic"
)
MCP = {"type": "mcp", "server_label": "docs", "server_url": "https://mcp.example"}


@pytest.fixture
def make(tmp_path: Path):
    ledgers = []

    def _make(**estimate) -> Engine:
        rules = {"budgets": [{"limit_usd": 1000}], "estimate": {"input_margin": 1, **estimate}}
        led = Ledger.open(tmp_path / f"l{len(ledgers)}.sqlite")
        ledgers.append(led)
        return Engine(policy.parse(rules, Path(".")), led)

    yield _make
    for led in ledgers:
        led.close()


def read(e: Engine, endpoint: Endpoint, body: dict, rid: str = "r"):
    return e.read_request(endpoint, body, principal="p", request_id=rid)


def test_a_bounded_loop_reserves_every_round(make):
    e = make()
    r = read(
        e,
        RESPONSES,
        {"model": "gpt-4o", "input": "hi", "max_output_tokens": 100, "tools": [MCP], "max_tool_calls": 2},
    )
    assert (r.info.tool_calls, r.info.tool_rounds) == (2, 3)
    assert r.forward_body is None  # its own bound: nothing to write
    d = e.admit(r.info, NOW)
    # 3 rounds, each up to 128,000 tokens of input and 100 of output.
    assert d.reserved == (Decimal(3 * 128_000) * Decimal("2.5") + 3 * 100 * 10) / 1_000_000
    assert e.ledger.request("r")["est_input_tokens"] == 3 * 128_000


def test_usage_summed_over_rounds_settles_as_billed(make):
    e = make()
    r = read(
        e,
        RESPONSES,
        {"model": "gpt-4o", "input": "hi", "max_output_tokens": 100, "tools": [MCP], "max_tool_calls": 2},
    )
    e.admit(r.info, NOW)
    e.finish(r.info, Usage(3 * 20_000, 3 * 90), NOW, outcome="usage")
    assert e.ledger.request("r")["cost_micro"] == 3 * 20_000 * 2.5 + 3 * 90 * 10


def test_an_unbounded_loop_is_bounded_by_the_rules_and_the_bound_is_written(make):
    e = make(server_tool_uses=4)
    r = read(
        e,
        RESPONSES,
        {"model": "gpt-4o", "input": "hi", "max_output_tokens": 10, "tools": [{"type": "web_search"}]},
    )
    assert (r.info.tool_calls, r.info.tool_rounds, r.info.web_searches) == (4, 5, 4)
    assert r.forward_body["max_tool_calls"] == 4
    tools = [
        {"type": "web_search_20250305", "name": "web_search"},
        {"type": "web_fetch_20250910", "name": "web_fetch", "max_uses": 2},
    ]
    a = read(
        e, MESSAGES, {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [], "tools": tools}, "a"
    )
    assert (a.info.tool_calls, a.info.tool_rounds) == (4 + 2, 7)
    assert [t.get("max_uses") for t in a.forward_body["tools"]] == [4, 2]
    assert a.info.web_searches == 6  # at most every call of the loop is a search


def test_or_refused_when_the_rules_say_so(make):
    e = make(unbounded_tool_calls="refuse")
    r = read(e, RESPONSES, {"model": "gpt-4o", "input": "hi", "max_output_tokens": 10, "tools": [MCP]})
    d = e.admit(r.info, NOW)
    assert not d.allowed and d.refusal.rule == "server_tools" and "max_tool_calls" in d.refusal.message
    ok = read(
        e,
        RESPONSES,
        {"model": "gpt-4o", "input": "hi", "max_output_tokens": 10, "tools": [MCP], "max_tool_calls": 1},
        "ok",
    )
    assert e.admit(ok.info, NOW).allowed


def test_deep_research_models_loop_by_design(make):
    e = make()
    body = {
        "model": "o4-mini-deep-research",
        "input": "study",
        "max_output_tokens": 100,
        "tools": [{"type": "web_search_preview"}],
    }
    r = read(e, RESPONSES, body)
    assert r.info.tool_rounds == 11 and r.forward_body["max_tool_calls"] == 10
    e.admit(r.info, NOW)
    assert e.ledger.request("r")["est_input_tokens"] == 11 * 200_000
    # Without any tool listed, too (the loop is the model's).
    assert (
        server_tools.tool_loop(
            "openai", "responses", {}, "o3-deep-research", assume=3, looping=["*-deep-research*"]
        ).rounds
        == 4
    )


def test_no_loop_without_server_tools(make):
    e = make()
    r = read(
        e,
        RESPONSES,
        {
            "model": "gpt-4o",
            "input": "hi",
            "max_output_tokens": 10,
            "tools": [{"type": "function", "name": "f"}],
        },
    )
    assert (r.info.tool_calls, r.info.tool_rounds) == (None, 1)


def test_the_mcp_connector_cannot_take_a_bound():
    """Nothing in the request can hold the provider to an assumed number of calls: Anthropic's
    own loop limit does (10 sampling iterations, then `pause_turn`), so an operator's smaller
    assumption is not the bound."""
    for assume, calls in ((5, 10), (15, 15)):
        for body in ({"mcp_servers": [{"url": "u"}]}, {"tools": [{"type": "code_execution_20250825"}]}):
            loop = server_tools.tool_loop(
                "anthropic", "messages", body, "claude-sonnet-4-5", assume=assume, looping=[]
            )
            assert loop.calls == calls and loop.assumed and not loop.enforced, body


def test_bound_input_keeps_plain_requests():
    info = RequestInfo("r", "openai", "chat", "gpt-4o", "p", False, 10, 10, "request")
    assert server_tools.bound_input(info, {}, refuse=False) is info


@pytest.mark.parametrize("tools", [5, "web_search", {"type": "web_search"}, None])
def test_odd_tool_lists_are_left_alone(tools):
    body = {"model": "claude-sonnet-4-5", "mcp_servers": [{"url": "u"}], "tools": tools}
    assert server_tools.with_bound("anthropic", "messages", body, 3) is None
    assert (
        server_tools.tool_loop("anthropic", "messages", body, "claude-sonnet-4-5", assume=3, looping=[]).calls
        == 10  # the MCP connector takes no bound: Anthropic's own loop limit, not the 3 assumed
    )


def test_output_token_limits_count_every_round(tmp_path: Path):
    """A limit on output tokens sees the loop's whole output: 3 rounds of a 100-token cap."""
    rules = {
        "version": 2,
        "rate_limits": [{"id": "out", "max_tokens": 299, "tokens_reset": "1h", "count_tokens": "output"}],
        "budgets": [{"id": "g", "max_usd": 1000}],
        "global": {"budgets": ["g"], "rate_limits": ["out"]},
        "clamp_output": None,
    }
    led = Ledger.open(tmp_path / "l.sqlite")
    try:
        e = Engine(policy.parse(rules, Path(".")), led)
        body = {
            "model": "gpt-4o",
            "input": "hi",
            "max_output_tokens": 100,
            "tools": [MCP],
            "max_tool_calls": 2,
        }
        d = e.admit(read(e, RESPONSES, body).info, NOW)
        assert not d.allowed and d.refusal.rule == "rate_limit:out:tokens"
        d = e.admit(read(e, RESPONSES, {**body, "max_tool_calls": 1}, "two").info, NOW)
        assert d.allowed  # 2 rounds x 100 fit under 299
    finally:
        led.close()
