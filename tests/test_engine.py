from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from governance import money, policy
from governance.engine import Engine
from governance.errors import RequestParseError
from governance.ledger import Ledger
from governance.types import Endpoint, Metering, RefusalKind, Usage, to_micro

NOW = datetime(2026, 11, 22, tzinfo=UTC)
CHAT = Endpoint("openai", "chat", Metering.METERED, "api.openai.com", "/v1/chat/completions")
MESSAGES = Endpoint(
    "anthropic", "messages", Metering.METERED, "api.anthropic.com", "/v1/messages", "anthropic"
)


@pytest.fixture
def make(tmp_path: Path):
    ledgers = []

    def _make(dry_run: bool = False, **data) -> Engine:
        rules = {
            "multipliers": {"gpt-4o": 1, "claude-opus-4-1": 5},
            "model_limits": {"gpt-4o": 16384},
            "budgets": [{"limit_usd": 1}],
            "prices": {"gpt-4o": {"input_mtok": 1, "output_mtok": 10}},
            "estimate": {"input_margin": 1},
            **data,
        }
        led = Ledger.open(tmp_path / f"l{len(ledgers)}.sqlite")
        ledgers.append(led)
        return Engine(policy.parse(rules, Path(".")), led, dry_run=dry_run)

    yield _make
    for led in ledgers:
        led.close()


def body(**kw):
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello world"}], **kw}


def test_read_request_worst_case(make):
    e = make()
    r = e.read_request(CHAT, body(max_tokens=100, n=2), principal="p", request_id="r1")
    assert r.info.max_output_tokens == 200 and r.info.output_cap_source == "request"
    assert 5 < r.info.input_tokens < 40 and r.forward_body is None
    r2 = e.read_request(CHAT, body(), principal="p", request_id="r2")
    assert (r2.info.max_output_tokens, r2.info.output_cap_source) == (16384, "model_table")


def test_no_cap_and_no_table_entry_is_refused_unless_default(make):
    with pytest.raises(RequestParseError, match="output cap"):
        make().read_request(CHAT, body(model="gpt-9"), principal="p", request_id="r")
    e = make(estimate={"default_max_output_tokens": 777})
    assert (
        e.read_request(CHAT, body(model="gpt-9"), principal="p", request_id="r").info.max_output_tokens == 777
    )


def test_admit_reserves_then_finish_settles(make):
    e = make()
    info = e.read_request(CHAT, body(max_tokens=1000), principal="p", request_id="r1").info
    d = e.admit(info, NOW)
    assert d.allowed and Decimal("0.01") < d.reserved < Decimal("0.0101")
    e.finish(info, Usage(11, 7), NOW, outcome="usage")
    row = e.ledger.request("r1")
    assert row["state"] == "settled" and row["cost_micro"] == 81


def test_admit_refuses_over_budget(make):
    e = make(budgets=[{"limit_usd": "0.005"}])
    info = e.read_request(CHAT, body(max_tokens=1000), principal="p", request_id="r1").info
    d = e.admit(info, NOW)
    assert not d.allowed and d.refusal.kind is RefusalKind.QUOTA and d.refusal.rule == "budget:global"


def test_admit_refuses_multiplier_and_unpriced(make):
    e = make(max_multiplier=2)
    opus = e.read_request(
        MESSAGES,
        {"model": "claude-opus-4-1", "max_tokens": 10, "messages": []},
        principal="p",
        request_id="o",
    ).info
    assert e.admit(opus, NOW).refusal.code == "model_multiplier_cap_exceeded"
    e2 = make()
    odd = e2.read_request(CHAT, body(model="gpt-odd", max_tokens=5), principal="p", request_id="x").info
    d = e2.admit(odd, NOW)
    assert not d.allowed and d.refusal.code == "model_not_priced"
    assert e2.ledger.request("x")["state"] == "refused"


def test_dry_run_allows_and_records(make):
    e = make(dry_run=True, budgets=[{"limit_usd": "0.001"}], max_multiplier=0.5)
    info = e.read_request(CHAT, body(max_tokens=1000), principal="p", request_id="r").info
    d = e.admit(info, NOW)
    assert d.allowed and d.refusal is not None
    assert e.ledger.request("r")["decision"] == "dry_run"


def test_finish_without_usage(make):
    e = make()
    a = e.read_request(CHAT, body(max_tokens=100), principal="p", request_id="a").info
    b = e.read_request(CHAT, body(max_tokens=100), principal="p", request_id="b").info
    e.admit(a, NOW), e.admit(b, NOW)
    e.finish(a, None, NOW, outcome="upstream_error_500", upstream_ran=False)
    e.finish(b, None, NOW, outcome="no_usage")
    assert e.ledger.request("a")["cost_micro"] == 0
    assert e.ledger.request("b")["cost_micro"] == e.ledger.request("b")["reserved_micro"] > 0


def test_usage_is_priced_by_the_model_the_upstream_ran(make):
    e = make(
        prices={
            "gpt-4o": {"input_mtok": 1, "output_mtok": 10},
            "gpt-4o-big": {"input_mtok": 100, "output_mtok": 100},
        }
    )
    info = e.read_request(CHAT, body(max_tokens=100), principal="p", request_id="r").info
    e.admit(info, NOW)
    e.finish(info, Usage(1000, 0, model="gpt-4o-big"), NOW, outcome="usage")
    assert e.ledger.request("r")["cost_micro"] == 100_000


RESPONSES = Endpoint("openai", "responses", Metering.METERED, "api.openai.com", "/v1/responses")


def test_no_cap_and_no_table_entry_is_bounded_by_the_context_window(make):
    from governance.pricing import context_window

    e = make(model_limits={}, prices={})
    r = e.read_request(CHAT, body(), principal="p", request_id="r")
    window = context_window("openai", "gpt-4o")
    assert window and r.info.output_cap_source == "context_window"
    assert r.info.max_output_tokens == window - r.info.input_tokens


class TestOutputCapInjection:
    """`clamp_output`: a request that sets no cap gets the one it is reserved for; one whose cap the
    room left cannot afford gets the largest that fits, down to the floor."""

    def clamped(self, make, limit: str, **extra):
        return make(clamp_output={"floor_tokens": 100}, budgets=[{"limit_usd": limit}], **extra)

    def test_a_request_without_a_cap_gets_the_reserved_one(self, make):
        e = self.clamped(make, "1")
        read = e.read_request(RESPONSES, {"model": "gpt-4o", "input": "hi"}, principal="p", request_id="r")
        d = e.admit(read.info, NOW)
        assert d.allowed and d.output_cap == 16384
        assert e.forward_body(read, d, "openai")["max_output_tokens"] == 16384
        row = e.ledger.request("r")
        assert row["requested_output_tokens"] is None and row["injected_output_tokens"] == 16384

    @pytest.mark.parametrize("api,field", [(CHAT, "max_completion_tokens"), (RESPONSES, "max_output_tokens")])
    def test_a_cap_the_budget_cannot_afford_is_lowered_to_what_fits(self, make, api, field):
        e = self.clamped(make, "0.05")  # $10/M output: 0.05 USD affords just under 5,000 tokens
        req = {
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": "hi"}],
            "input": "hi",
            field: 16000,
        }
        read = e.read_request(api, req, principal="p", request_id="r")
        d = e.admit(read.info, NOW)
        assert d.allowed and 4000 < d.output_cap < 5000
        assert to_micro_cost(d) <= 50_000  # the reservation fits the room
        # one more output token would not have fitted
        input_cost = read.info.input_tokens * 1
        assert input_cost + (d.output_cap + 1) * 10 > 50_000
        forwarded = e.forward_body(read, d, "openai")
        assert forwarded[field] == d.output_cap
        row = e.ledger.request("r")
        assert row["requested_output_tokens"] == 16000 and row["injected_output_tokens"] == d.output_cap

    def test_below_the_floor_it_is_refused(self, make):
        e = self.clamped(make, "0.0005")  # affords fewer than 100 output tokens
        read = e.read_request(CHAT, body(max_tokens=16000), principal="p", request_id="r")
        d = e.admit(read.info, NOW)
        assert not d.allowed and d.refusal.kind is RefusalKind.QUOTA and d.output_cap is None
        assert e.ledger.request("r")["state"] == "refused"

    def test_a_cap_that_fits_is_left_alone(self, make):
        e = self.clamped(make, "1")
        read = e.read_request(CHAT, body(max_tokens=50), principal="p", request_id="r")
        d = e.admit(read.info, NOW)
        assert d.allowed and d.output_cap is None and e.forward_body(read, d, "openai") is None

    def test_anthropic_max_tokens_is_clamped(self, make):
        e = self.clamped(make, "0.05", prices={"claude-sonnet-4-5": {"input_mtok": 1, "output_mtok": 10}})
        req = {
            "model": "claude-sonnet-4-5",
            "max_tokens": 64000,
            "messages": [{"role": "user", "content": "hi"}],
        }
        read = e.read_request(MESSAGES, req, principal="p", request_id="r")
        d = e.admit(read.info, NOW)
        assert d.allowed and 4000 < d.output_cap < 5000
        assert e.forward_body(read, d, "anthropic")["max_tokens"] == d.output_cap


def to_micro_cost(decision) -> int:
    return int(decision.reserved * 1_000_000)


class TestServerSideInput:
    """Input the provider keeps on its side is reserved: what this ledger saw settle, else the
    model's context window (or a refusal)."""

    def test_a_follow_up_reserves_the_context_its_previous_response_ended_with(self, make):
        e = make(budgets=[{"limit_usd": 100}])
        first = e.read_request(
            RESPONSES,
            {"model": "gpt-4o", "input": "hi", "max_output_tokens": 10},
            principal="p",
            request_id="a",
        )
        assert e.admit(first.info, NOW).allowed
        e.finish(first.info, Usage(50_000, 2_000, response_id="resp_abc"), NOW, outcome="usage")
        follow = e.read_request(
            RESPONSES,
            {
                "model": "gpt-4o",
                "input": "and then?",
                "max_output_tokens": 10,
                "previous_response_id": "resp_abc",
            },
            principal="p",
            request_id="b",
        )
        e.admit(follow.info, NOW)
        row = e.ledger.request("b")
        assert row["est_input_tokens"] == follow.info.input_tokens + 52_000

    def test_a_conversation_reserves_its_running_size(self, make):
        e = make(budgets=[{"limit_usd": 100}])
        for i, size in enumerate((1_000, 30_000)):
            r = e.read_request(
                RESPONSES,
                {"model": "gpt-4o", "input": "x", "max_output_tokens": 5, "conversation": "conv_1"},
                principal="p",
                request_id=f"r{i}",
            )
            e.admit(r.info, NOW)
            e.finish(r.info, Usage(size, 100, conversation_id="conv_1"), NOW, outcome="usage")
        r = e.read_request(
            RESPONSES,
            {"model": "gpt-4o", "input": "x", "max_output_tokens": 5, "conversation": {"id": "conv_1"}},
            principal="p",
            request_id="next",
        )
        e.admit(r.info, NOW)
        assert e.ledger.request("next")["est_input_tokens"] == r.info.input_tokens + 30_100

    @pytest.mark.parametrize(
        ("api", "extra"),
        [
            (RESPONSES, {"previous_response_id": "resp_never_seen"}),
            (RESPONSES, {"prompt": {"id": "pmpt_1"}}),
            (
                RESPONSES,
                {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]},
            ),
            (RESPONSES, {"tools": [{"type": "web_search"}]}),
            (
                RESPONSES,
                {"tools": [{"type": "mcp", "server_label": "docs", "server_url": "https://mcp.example"}]},
            ),
        ],
    )
    def test_what_cannot_be_counted_is_reserved_at_the_context_window(self, make, api, extra):
        from governance.pricing import context_window

        e = make(budgets=[{"limit_usd": 100}])
        req = {"model": "gpt-4o", "input": "hi", "max_output_tokens": 10, **extra}
        r = e.read_request(api, req, principal="p", request_id="r")
        assert e.admit(r.info, NOW).allowed
        # A server tool loops: each of its (10 assumed calls + 1) rounds re-reads the window.
        rounds = 11 if "tools" in extra else 1
        assert e.ledger.request("r")["est_input_tokens"] == context_window("openai", "gpt-4o") * rounds

    def test_or_refused_when_the_rules_say_so(self, make):
        e = make(budgets=[{"limit_usd": 100}], estimate={"input_margin": 1, "server_input": "refuse"})
        r = e.read_request(
            RESPONSES,
            {"model": "gpt-4o", "input": "hi", "max_output_tokens": 10, "previous_response_id": "resp_x"},
            principal="p",
            request_id="r",
        )
        d = e.admit(r.info, NOW)
        assert not d.allowed and d.refusal.rule == "server_input" and "resp_x" in d.refusal.message

    def test_anthropic_documents_by_file_id_and_web_search(self, make):
        e = make(budgets=[{"limit_usd": 1000}])
        doc = {"type": "document", "source": {"type": "file", "file_id": "file_1"}}
        r = e.read_request(
            MESSAGES,
            {
                "model": "claude-sonnet-4-5",
                "max_tokens": 10,
                "messages": [{"role": "user", "content": [doc]}],
            },
            principal="p",
            request_id="doc",
        )
        assert r.info.server_input == "a file by id or URL"
        r = e.read_request(
            MESSAGES,
            {
                "model": "claude-sonnet-4-5",
                "max_tokens": 10,
                "messages": [],
                "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}],
            },
            principal="p",
            request_id="ws",
        )
        assert r.info.web_searches == 3 and "web_search" in r.info.server_input
        r = e.read_request(
            MESSAGES,
            {
                "model": "claude-sonnet-4-5",
                "max_tokens": 10,
                "messages": [],
                "tools": [{"type": "web_search_20250305", "name": "web_search"}],
            },
            principal="p",
            request_id="ws2",
        )
        assert r.info.web_searches == 10  # the rules' bound


class TestPriceModifiers:
    def test_service_tier_is_reserved_and_settled_at_its_price(self, make):
        e = make(prices={}, budgets=[{"limit_usd": 100}])
        plain = e.read_request(CHAT, body(model="gpt-5", max_tokens=1000), principal="p", request_id="a")
        fast = e.read_request(
            CHAT, body(model="gpt-5", max_tokens=1000, service_tier="priority"), principal="p", request_id="b"
        )
        d_plain, d_fast = e.admit(plain.info, NOW), e.admit(fast.info, NOW)
        assert d_fast.reserved == 2 * d_plain.reserved
        e.finish(fast.info, Usage(1000, 1000, service_tier="priority"), NOW, outcome="usage")
        e.finish(plain.info, Usage(1000, 1000, service_tier="default"), NOW, outcome="usage")
        assert e.ledger.request("b")["cost_micro"] == 2 * e.ledger.request("a")["cost_micro"]

    def test_web_searches_are_reserved_and_charged(self, make):
        e = make(prices={}, budgets=[{"limit_usd": 1000}])
        tools = [{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}]
        r = e.read_request(
            MESSAGES,
            {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [], "tools": tools},
            principal="p",
            request_id="ws",
        )
        e.admit(r.info, NOW)
        e.finish(r.info, Usage(1000, 100, web_searches=3), NOW, outcome="usage")
        row = e.ledger.request("ws")
        assert row["cost_micro"] == 34_500  # $3/M in, $15/M out, $10 per 1,000 searches


class TestImages:
    def test_high_detail_urls_on_gpt_4o_mini_reserve_what_openai_bills(self, make):
        e = make(prices={}, budgets=[{"limit_usd": "0.005"}])
        parts = [
            {"type": "image_url", "image_url": {"url": f"https://img.example/{i}.png", "detail": "high"}}
            for i in range(8)
        ]
        r = e.read_request(
            CHAT,
            body(model="gpt-4o-mini", max_tokens=10, messages=[{"role": "user", "content": parts}]),
            principal="p",
            request_id="r",
        )
        assert r.info.input_tokens >= 8 * (2833 + 5667 * 8)
        d = e.admit(r.info, NOW)
        assert not d.allowed and d.refusal.kind is RefusalKind.QUOTA  # 6x the cap: refused, not overspent

    def test_an_inline_anthropic_image_counts_its_pixels(self, make):
        import base64 as b64

        from tests.test_media import png

        e = make(prices={}, budgets=[{"limit_usd": 100}])
        small = {
            "type": "image",
            "source": {
                "type": "base64",
                "media_type": "image/png",
                "data": b64.b64encode(png(200, 200)).decode(),
            },
        }
        big = {
            "type": "image",
            "source": {
                "type": "base64",
                "media_type": "image/png",
                "data": b64.b64encode(png(1092, 1092)).decode(),
            },
        }

        def estimate(part):
            req = {
                "model": "claude-sonnet-4-5",
                "max_tokens": 10,
                "messages": [{"role": "user", "content": [part]}],
            }
            return e.read_request(MESSAGES, req, principal="p", request_id="x").info.input_tokens

        assert estimate(big) - estimate(small) >= (1590 - 54)


def test_clamping_prices_every_modifier_of_the_worst_case(make):
    """A clamped cap is chosen at the request's own tier, not at plain prices."""
    e = make(prices={}, budgets=[{"limit_usd": "0.05"}], clamp_output={"floor_tokens": 100})
    req = {"model": "gpt-5", "input": "hi", "max_output_tokens": 100_000, "service_tier": "priority"}
    r = e.read_request(RESPONSES, req, principal="p", request_id="r")
    d = e.admit(r.info, NOW)
    assert d.allowed and d.output_cap < 2_500  # gpt-5 priority output: $20/M, so $0.05 buys < 2,500
    worst = e._worst_case(r.info, d.output_cap * r.info.choices, NOW)
    assert to_micro(worst.cost) <= 50_000 and to_micro(worst.cost) == e.ledger.request("r")["reserved_micro"]


def test_a_conversation_size_never_shrinks_when_turns_settle_out_of_order(make):
    e = make(budgets=[{"limit_usd": 100}])
    for i, size in enumerate((30_000, 1_000)):  # the later, bigger turn settles first
        r = e.read_request(
            RESPONSES,
            {"model": "gpt-4o", "input": "x", "max_output_tokens": 5, "conversation": "conv_9"},
            principal="p",
            request_id=f"r{i}",
        )
        e.admit(r.info, NOW)
        e.finish(r.info, Usage(size, 0, conversation_id="conv_9"), NOW, outcome="usage")
    assert e.ledger.context_tokens(["conversation:conv_9"]) == {"conversation:conv_9": 30_000}


def test_documents_by_url_and_stored_items_are_server_input(make):
    e = make(budgets=[{"limit_usd": 1000}])
    doc = {"type": "document", "source": {"type": "url", "url": "https://example.com/big.pdf"}}
    r = e.read_request(
        MESSAGES,
        {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": [doc]}]},
        principal="p",
        request_id="a",
    )
    assert r.info.server_input == "a file by id or URL"
    for part in (
        {"type": "input_file", "file_url": "https://example.com/x.pdf"},
        {"type": "item_reference", "id": "msg_1"},
    ):
        r = e.read_request(
            RESPONSES,
            {"model": "gpt-4o", "max_output_tokens": 10, "input": [part]},
            principal="p",
            request_id="b",
        )
        assert r.info.server_input == "a file by id or URL, or a stored item"


def test_a_plain_text_document_is_tokenized_as_text(make):
    e = make(budgets=[{"limit_usd": 1000}])
    text = "这是一段很长的中文文本，用来检查计数。" * 500
    doc = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": text}}
    as_doc = e.read_request(
        MESSAGES,
        {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": [doc]}]},
        principal="p",
        request_id="a",
    )
    as_text = e.read_request(
        MESSAGES,
        {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": text}]},
        principal="p",
        request_id="b",
    )
    assert as_doc.info.input_tokens >= as_text.info.input_tokens


def test_the_counter_is_asked_only_when_a_refusal_hinges_on_it(make):
    prices = {"claude-sonnet-4-5": {"input_mtok": 1, "output_mtok": 10}}
    text = "🎉🚀👍🏽❤️🔥✨🙏😂 " * 300
    probe = make(prices=prices).read_request(
        MESSAGES,
        {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": text}]},
        principal="p",
        request_id="x",
    )
    # Room for the estimate's lower end (no margins) but not for the estimate itself.
    limit = Decimal(probe.info.input_tokens * 8 // 10 + 100) / 1_000_000
    e = make(budgets=[{"limit_usd": str(limit)}], prices=prices)
    near = e.read_request(
        MESSAGES,
        {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": text}]},
        principal="p",
        request_id="a",
    )
    far = e.read_request(
        MESSAGES,
        {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
        principal="p",
        request_id="b",
    )
    hinging = e.admit(near.info, NOW, count_may_help=True)
    assert (
        not hinging.allowed and hinging.hinges_on_count and e.ledger.request("a") is None
    )  # not recorded yet
    assert e.admit(far.info, NOW, count_may_help=True).allowed  # fits: no counter asked
    path, body = e.counter_request(near, "anthropic")
    assert path == "/count_tokens" and set(body) == {"model", "messages"}
    assert (
        e.counter_request(e.read_request(CHAT, body_of_chat(), principal="p", request_id="c"), "openai")
        is None
    )
    # The counter's answer is itself an estimate: reserved with the rules' margin (1.02), rounded up.
    assert e.with_counted_input(near.info, 123).input_tokens == 126
    # A request that would not fit even at its lower end is refused, and recorded, at once.
    hopeless = e.read_request(
        MESSAGES,
        {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": text * 3}]},
        principal="p",
        request_id="d",
    )
    d = e.admit(hopeless.info, NOW, count_may_help=True)
    assert not d.allowed and not d.hinges_on_count and e.ledger.request("d")["state"] == "refused"


def body_of_chat():
    return body(max_tokens=5)


@pytest.mark.parametrize(
    ("api", "model", "tools"),
    [
        (RESPONSES, "gpt-4o", [{"type": "code_interpreter", "container": {"type": "auto"}}]),
        (RESPONSES, "gpt-4o", [{"type": "file_search", "vector_store_ids": ["vs_1"]}]),
        (RESPONSES, "gpt-4o", [{"type": "image_generation"}]),
        (MESSAGES, "claude-sonnet-4-5", [{"type": "code_execution_20250825", "name": "code_execution"}]),
    ],
)
def test_tools_with_unpriced_fees_are_refused_unless_allowed(make, api, model, tools):
    req = {
        "model": model,
        "max_tokens": 10,
        "max_output_tokens": 10,
        "input": "hi",
        "messages": [],
        "tools": tools,
    }
    e = make(budgets=[{"limit_usd": 1000}])
    d = e.admit(e.read_request(api, req, principal="p", request_id="r").info, NOW)
    assert not d.allowed and d.refusal.rule == "unpriced_tool"
    e = make(budgets=[{"limit_usd": 1000}], estimate={"input_margin": 1, "unpriced_tool_fees": "allow"})
    assert e.admit(e.read_request(api, req, principal="p", request_id="r").info, NOW).allowed


def test_the_1m_context_beta_widens_the_bound_for_server_input(make):
    e = make(budgets=[{"limit_usd": 1000}])
    req = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 10,
        "messages": [],
        "tools": [{"type": "web_fetch_20250910", "name": "web_fetch"}],
    }
    plain = e.read_request(MESSAGES, req, principal="p", request_id="a")
    wide = e.read_request(
        MESSAGES, req, principal="p", request_id="b", betas=["files-api-2025-04-14", " context-1m-2025-08-07"]
    )
    e.admit(plain.info, NOW)
    e.admit(wide.info, NOW)
    # web fetch sets no max_uses: 10 assumed calls, 11 rounds, each up to the window.
    assert e.ledger.request("a")["est_input_tokens"] == 200_000 * 11
    assert e.ledger.request("b")["est_input_tokens"] == 1_000_000 * 11


def test_tiny_requests_record_their_exact_bill_and_a_budget_of_that_size_admits_what_fits(make):
    """2,000 requests of 1.3 µ$ each ($0.10 per million tokens, 10 in and 3 out) are billed
    $0.0026; the ledger records exactly that, not each cost rounded up ($0.004)."""
    tiny = {"gpt-4o": {"input_mtok": "0.1", "output_mtok": "0.1"}}
    e = make(prices=tiny, budgets=[{"limit_usd": 100}])
    for i in range(2000):
        info = e.read_request(CHAT, body(max_tokens=3), principal="p", request_id=f"r{i}").info
        d = e.admit(info, NOW)
        assert d.allowed
        e.finish(info, Usage(10, 3), NOW, outcome="usage")
    bill = 2000 * (10 * Decimal("0.1") + 3 * Decimal("0.1")) / 1_000_000
    assert bill == Decimal("0.0026")
    t = e.ledger.window_totals("global", "")
    assert money.to_usd(t.settled, t.settled_rest) == bill
    # A budget of exactly the bill plus one more request's reservation admits that request,
    # and the refusal of the next one shows the spend as billed.
    sized = Engine(
        policy.parse(
            {
                "multipliers": {"gpt-4o": 1},
                "prices": tiny,
                "budgets": [{"limit_usd": str(bill + d.reserved)}],
                "estimate": {"input_margin": 1},
            },
            Path("."),
        ),
        e.ledger,
    )
    fits = sized.read_request(CHAT, body(max_tokens=3), principal="p", request_id="fits").info
    admitted = sized.admit(fits, NOW)
    assert admitted.allowed and admitted.remaining == 0
    over = sized.read_request(CHAT, body(max_tokens=3), principal="p", request_id="over").info
    refused = sized.admit(over, NOW)
    assert not refused.allowed and refused.refusal.spent == bill and refused.refusal.reserved == d.reserved
    assert "spent $0.0026," in refused.refusal.message


def test_an_estimate_straddling_a_tier_threshold_asks_the_counter(make):
    """gpt-5.4's price doubles its input rate from 272,000 input tokens (OpenAI's pricing): an
    estimate whose range holds that threshold hinges on the exact count; one wholly above it
    does not (it is reserved at the tier's price)."""
    from dataclasses import replace

    e = make(prices={}, budgets=[{"limit_usd": 1000}])
    r = e.read_request(
        RESPONSES, {"model": "gpt-5.4", "input": "hi", "max_output_tokens": 10}, principal="p", request_id="t"
    )
    near = replace(r.info, input_tokens=280_000)  # lower end 280,000 / (1 x 1.4) is below 272,000
    d = e.admit(near, NOW, count_may_help=True)
    assert not d.allowed and d.hinges_on_count and e.ledger.request("t") is None
    assert e.admit(near, NOW).allowed  # no counter: the estimate stands, priced at the tier
    far = replace(r.info, request_id="u", input_tokens=400_000)  # lower end above the threshold
    assert e.admit(far, NOW, count_may_help=True).allowed
    below = replace(r.info, request_id="v", input_tokens=200_000)
    assert e.admit(below, NOW, count_may_help=True).allowed


class TestDocumentsAndProviderPrompts:
    """PDFs count per page; a PDF that cannot be read is bounded by the context window (or
    refused); Anthropic's tool-use prompt is counted."""

    @staticmethod
    def _pdf_part(data: bytes) -> dict:
        import base64

        url = "data:application/pdf;base64," + base64.b64encode(data).decode()
        return {"role": "user", "content": [{"type": "input_file", "filename": "a.pdf", "file_data": url}]}

    def test_a_hundred_page_pdf_reserves_every_page(self, make):
        from tests.support.pdfs import build_pdf

        e = make(budgets=[{"limit_usd": 100}])
        req = {"model": "gpt-4o", "input": [self._pdf_part(build_pdf(100))], "max_output_tokens": 10}
        r = e.read_request(RESPONSES, req, principal="p", request_id="r")
        # gpt-4o: 3,000 text tokens and at most 85 + 8 x 170 image tokens a page.
        assert r.info.input_tokens >= 100 * (3000 + 85 + 8 * 170) and r.info.server_input is None
        d = e.admit(r.info, NOW)
        assert d.allowed and to_micro_cost(d) >= 100 * (3000 + 1445) * 1 + 10 * 10

    def test_an_unreadable_pdf_is_reserved_at_the_context_window_or_refused(self, make):
        from governance.pricing import context_window
        from tests.support.pdfs import build_pdf

        req = {"model": "gpt-4o", "input": [self._pdf_part(build_pdf(9)[:-150])], "max_output_tokens": 10}
        e = make(budgets=[{"limit_usd": 100}])
        r = e.read_request(RESPONSES, req, principal="p", request_id="r")
        assert "cannot be read" in r.info.server_input
        assert e.admit(r.info, NOW).allowed
        assert e.ledger.request("r")["est_input_tokens"] == context_window("openai", "gpt-4o")
        strict = make(budgets=[{"limit_usd": 100}], estimate={"input_margin": 1, "server_input": "refuse"})
        r = strict.read_request(RESPONSES, req, principal="p", request_id="r")
        d = strict.admit(r.info, NOW)
        assert not d.allowed and d.refusal.rule == "server_input" and "cannot be read" in d.refusal.message

    def test_anthropics_tool_use_prompt_is_reserved(self, make):
        e = make(prices={"claude-sonnet-4-5": {"input_mtok": 2, "output_mtok": 20}})
        plain = {
            "model": "claude-sonnet-4-5",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}],
        }
        tool = {"name": "t", "input_schema": {"type": "object"}}
        without = e.read_request(MESSAGES, {**plain, "tools": [tool]}, principal="p", request_id="a").info
        bash = {**plain, "tools": [tool, {"type": "bash_20250124", "name": "bash"}]}
        with_bash = e.read_request(MESSAGES, bash, principal="p", request_id="b").info
        base = e.read_request(MESSAGES, plain, principal="p", request_id="c").info
        assert without.input_tokens >= base.input_tokens + 346
        assert with_bash.input_tokens >= without.input_tokens + 245
