"""End to end, through a real mitmdump: the fees the price data lacks, regional prices and
server tool loops, each billed by the fake provider by its own book (tests/support/fake_upstream:
`_bill`, `_sampling_rounds`). Under a cap C, what the provider really billed stays <= C, and
the ledger records exactly what it billed."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import anthropic
import openai
import pytest

from tests.conftest import write_rules
from tests.test_e2e import micro, rows

TEXT = "word " * 900  # about 900 tokens: the fake bills 900 input tokens a round for it


def settled(tmp_path: Path) -> list[dict]:
    return [r for r in rows(tmp_path / "ledger.sqlite") if r["state"] == "settled"]


def check_bills(upstream, tmp_path: Path, cap: Decimal) -> list[dict]:
    """The provider's bill stays under the cap, the ledger equals it answer by answer, and the
    cap had no room left for one more reservation."""
    done = settled(tmp_path)
    bills = [b["usd"] for b in upstream.bills]
    assert len(done) == len(bills) >= 1
    assert sum(bills) <= cap
    assert [r["cost_micro"] for r in done] == [micro(b) for b in bills]
    assert micro(cap) - sum(r["cost_micro"] for r in done) < done[-1]["reserved_micro"]
    return done


def test_search_model_fees_are_reserved_and_settled(start, client_env, upstream, tmp_path):
    """gpt-5-search-api bills $0.01 a call that genai-prices does not carry."""
    cap = Decimal("0.05")
    proxy = start(spendfuse_budget=str(cap), rules=write_rules(tmp_path / "r.yaml", prices={}))
    client_env(proxy)
    upstream.knobs.prompt_tokens, upstream.knobs.completion_tokens = 16, 18
    client = openai.OpenAI(max_retries=0)
    with pytest.raises(openai.RateLimitError):
        for _ in range(20):
            client.chat.completions.create(
                model="gpt-5-search-api", max_tokens=50, messages=[{"role": "user", "content": "news?"}]
            )
    done = check_bills(upstream, tmp_path, cap)
    # $1.25/M input, $10/M output, $0.01 a call: four calls of $0.0102, a fifth would pass $0.05.
    assert len(done) == 4 and all("fees.yaml:gpt-5-search-api" in r["price_source"] for r in done)


def test_anthropic_us_inference_and_a_workspace_default_geo(start, client_env, upstream, tmp_path):
    """claude-opus-4-6 in the US geo costs 1.1x, whether the request asks for it or the
    workspace's default (reported only in the response's usage) puts it there."""
    cap = Decimal("0.05")
    proxy = start(spendfuse_budget=str(cap), rules=write_rules(tmp_path / "r.yaml", prices={}))
    client_env(proxy)
    upstream.knobs.prompt_tokens, upstream.knobs.completion_tokens = 900, 200
    upstream.knobs.default_geo = "us"
    client = anthropic.Anthropic(max_retries=0)
    with pytest.raises(anthropic.RateLimitError):
        for i in range(20):
            extra = {"extra_body": {"inference_geo": "us"}} if i % 2 else {}
            client.messages.create(
                model="claude-opus-4-6", max_tokens=200, messages=[{"role": "user", "content": TEXT}], **extra
            )
    done = check_bills(upstream, tmp_path, cap)
    # (900 x $5 + 200 x $25) / 1M x 1.1 = $0.01045 each: four fit under $0.05; at the plain price
    # ($0.0095) a fifth would have been admitted, and billed past the cap.
    assert len(done) == 4 and all(r["cost_micro"] == 10_450 for r in done)
    assert all("regional:anthropic-us-inference" in r["price_source"] for r in done)


def test_openai_residency_host_costs_more(start, client_env, upstream, tmp_path, monkeypatch):
    """gpt-5.4 on eu.api.openai.com costs 1.1x."""
    cap = Decimal("0.027")
    proxy = start(spendfuse_budget=str(cap), rules=write_rules(tmp_path / "r.yaml", prices={}))
    client_env(proxy)
    upstream.knobs.prompt_tokens, upstream.knobs.completion_tokens = 900, 200
    client = openai.OpenAI(max_retries=0, base_url="https://eu.api.openai.com/v1")
    with pytest.raises(openai.RateLimitError):
        for _ in range(20):
            client.chat.completions.create(
                model="gpt-5.4", max_tokens=200, messages=[{"role": "user", "content": TEXT}]
            )
    done = check_bills(upstream, tmp_path, cap)
    # (900 x $2.50 + 200 x $15) / 1M x 1.1 = $0.005775 each: four fit under $0.027; at the plain
    # price ($0.00525) a fifth would have been admitted, and billed $0.028875.
    assert len(done) == 4 and all(r["cost_micro"] == 5_775 for r in done)


def test_a_server_tool_loop_is_reserved_for_every_round(start, client_env, upstream, tmp_path):
    """A Responses request with an MCP tool and max_tool_calls 2 runs up to 3 rounds, each
    re-reading up to the 128,000-token window: one window is no bound."""
    cap = Decimal("1.25")
    proxy = start(spendfuse_budget=str(cap), rules=write_rules(tmp_path / "r.yaml", prices={}))
    client_env(proxy)
    upstream.knobs.prompt_tokens, upstream.knobs.completion_tokens, upstream.knobs.rounds = 120_000, 200, 5
    client = openai.OpenAI(max_retries=0)
    mcp = {
        "type": "mcp",
        "server_label": "docs",
        "server_url": "https://mcp.example",
        "require_approval": "never",
    }
    with pytest.raises(openai.RateLimitError):
        for _ in range(5):
            client.responses.create(
                model="gpt-4o", input="look it up", max_output_tokens=200, tools=[mcp], max_tool_calls=2
            )
    done = check_bills(upstream, tmp_path, cap)
    # 3 rounds x (120,000 x $2.50 + 200 x $10) / 1M = $0.906; a reservation of one window
    # ($0.322) would have admitted a second, billed $1.812 in all.
    assert len(done) == 1 and done[0]["cost_micro"] == 906_000
    assert (done[0]["input_tokens"], done[0]["output_tokens"]) == (360_000, 600)


def test_an_unbounded_loop_gets_the_bound_it_was_reserved_for(start, client_env, upstream, tmp_path):
    proxy = start(spendfuse_budget="100", rules=write_rules(tmp_path / "r.yaml", prices={}))
    client_env(proxy)
    upstream.knobs.web_searches, upstream.knobs.rounds = 50, 50
    anthropic.Anthropic(max_retries=0).messages.create(
        model="claude-sonnet-4-5",
        max_tokens=100,
        tools=[{"type": "web_search_20250305", "name": "web_search"}],
        messages=[{"role": "user", "content": "search"}],
    )
    # The rules' bound (10 calls) went into the request, and the provider kept to it.
    assert upstream.bodies[-1]["tools"][0]["max_uses"] == 10
    [row] = settled(tmp_path)
    assert row["cost_micro"] == micro(upstream.bills[0]["usd"])
    assert row["reserved_micro"] >= row["cost_micro"]


@pytest.mark.parametrize(
    ("count", "reserved"),
    [
        # 185,000 x 1.02 = 188,700 input tokens at $3/M, 100 output at $15/M: below the tier.
        (185_000, 188_700 * 3 + 100 * 15),
        # 197,000 x 1.02 = 200,940: past 200,000, so Sonnet 4.5's long-context price, $6/M and
        # $22.50/M, for every token: the counter's small error cannot slip under the tier.
        (197_000, 200_940 * 6 + 100 * 45 // 2),
    ],
)
def test_near_a_tier_threshold_the_counter_decides_with_its_margin(
    start, client_env, upstream, tmp_path, count, reserved
):
    """claude-sonnet-4-5's input price doubles past 200,000 tokens. An estimate whose range holds
    the threshold asks the provider's counter even with room to spare, and reserves its count
    with the 2% margin the README states."""
    proxy = start(spendfuse_budget="5", rules=write_rules(tmp_path / "r.yaml", prices={}))
    client_env(proxy)
    upstream.knobs.prompt_tokens, upstream.knobs.completion_tokens = count, 100
    text = "word " * 185_000  # estimated ~203,500 with the 1.1 margin; ~132,000 without margins
    anthropic.Anthropic(max_retries=0).messages.create(
        model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": text}]
    )
    assert upstream.hits["/v1/messages/count_tokens"] == 1 and upstream.hits["/v1/messages"] == 1
    [row] = settled(tmp_path)
    assert row["est_input_tokens"] == -(-count * 102 // 100)
    assert row["reserved_micro"] == reserved
    assert row["cost_micro"] == micro(upstream.bills[0]["usd"]) <= reserved
