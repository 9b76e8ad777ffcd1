"""Governance end to end through the engine and a real ledger file: a key under a team under a
customer, model and provider limits, rate limits with windows, requests in flight, and the
fixed order of checks. Time is injected; nothing sleeps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from governance import policy
from governance.engine import Engine
from governance.identity import Credentials, Identity
from governance.ledger import Ledger
from governance.scopes import secret_hash
from governance.types import Endpoint, Metering, RefusalKind, Usage

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
CHAT = Endpoint("openai", "chat", Metering.METERED, "api.openai.com", "/v1/chat/completions")

# gpt-4o at $1 / $10 per 1M tokens: a request with max_tokens=1000 reserves about $0.01.
BASE = {
    "version": 2,
    "multipliers": {"gpt-4o": 1, "gpt-4o-mini": 1, "claude-opus-4-1": 5},
    "model_limits": {"gpt-4o": 16384},
    "prices": {
        "gpt-4o": {"input_mtok": 1, "output_mtok": 10},
        "gpt-4o-mini": {"input_mtok": 1, "output_mtok": 10},
    },
    "estimate": {"input_margin": 1},
}


@pytest.fixture
def make(tmp_path: Path):
    ledgers: list[Ledger] = []

    def _make(**data) -> Engine:
        led = Ledger.open(tmp_path / f"l{len(ledgers)}.sqlite")
        ledgers.append(led)
        return Engine(policy.parse({**BASE, **data}, Path(".")), led, salt=led.salt())

    yield _make
    for led in ledgers:
        led.close()


def ask(e: Engine, rid: str, *, key: str | None = None, model: str = "gpt-4o", max_tokens: int = 1000):
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": max_tokens}
    return e.read_request(
        CHAT, body, principal=f"key:{key}" if key else "default", request_id=rid, key_id=key
    ).info


HIERARCHY = {
    "budgets": [
        {"id": "k", "max_usd": "0.05"},
        {"id": "t", "max_usd": "0.08"},
        {"id": "c", "max_usd": "0.11"},
        {"id": "m", "max_usd": "0.14"},
        {"id": "p", "max_usd": "0.17"},
        {"id": "g", "max_usd": "0.20"},
    ],
    "customers": [{"id": "acme", "budgets": ["c"]}],
    "teams": [{"id": "research", "customer": "acme", "budgets": ["t"]}],
    "keys": [
        {"id": "a", "team": "research", "secret_sha256": secret_hash("sa"), "budgets": ["k"]},
        {"id": "b", "team": "research", "secret_sha256": secret_hash("sb")},
        {"id": "c1", "customer": "acme", "secret_sha256": secret_hash("sc")},
        {"id": "d", "secret_sha256": secret_hash("sd")},
    ],
    "models": [{"model": "gpt-4o", "budgets": ["m"]}],
    "providers": [{"provider": "openai", "budgets": ["p"]}],
    "global": {"budgets": ["g"]},
}


def test_each_level_trips_in_turn_and_names_itself(make):
    """Every request costs about $0.0101 of each budget it counts against. Key a fills its own
    budget first; then key b (same team) the team's; then c1 (same customer) the customer's;
    then d (no team) the model's; then anonymous gpt-4o-mini requests the provider's; and the
    global budget last. Each refusal names the level that tripped."""
    e = make(**HIERARCHY)
    n = 0

    def until_refused(key: str | None, model: str = "gpt-4o"):
        nonlocal n
        while True:
            n += 1
            info = ask(e, f"r{n}", key=key, model=model)
            d = e.admit(info, T0)
            if not d.allowed:
                return d.refusal
            e.finish(info, Usage(10, 1000), T0, outcome="usage")  # settles at $0.01001

    expected = [
        ("a", "gpt-4o", "budget:k@key=a"),
        ("b", "gpt-4o", "budget:t@team=research"),
        ("c1", "gpt-4o", "budget:c@customer=acme"),
        ("d", "gpt-4o", "budget:m@model=gpt-4o"),
        (None, "gpt-4o-mini", "budget:p@provider=openai"),
    ]
    for key, model, rule in expected:
        r = until_refused(key, model)
        assert r.rule == rule and r.kind is RefusalKind.QUOTA
        scope = rule.split("@")[1]
        assert f"scope {scope}" in r.message and "never resets" in r.message
    # Totals reconcile: every level's spend is the sum of its requests' costs, all under its cap.
    caps = [
        ("key=a|k", 50_000),
        ("team=research|t", 80_000),
        ("customer=acme|c", 110_000),
        ("model=gpt-4o|m", 140_000),
        ("provider=openai|p", 170_000),
        ("global:g", 200_000),
    ]
    for counter, cap in caps:
        t = e.ledger.window_totals(counter, "")
        assert t.held == 0 and 0 < t.settled <= cap
        rows = e.ledger.query("SELECT sum(amount) AS s FROM claims WHERE scope = ?", [counter])
        assert rows[0]["s"] == t.settled


def test_the_same_counters_are_checked_charged_and_recorded(make):
    e = make(**HIERARCHY)
    info = ask(e, "r1", key="a")
    d = e.admit(info, T0)
    assert d.allowed and d.binding == "budget:k@key=a"
    row = e.ledger.request("r1")
    counters = row["counters"].split(",")
    assert counters == [
        "key=a|k",
        "team=research|t",
        "customer=acme|c",
        "model=gpt-4o|m",
        "provider=openai|p",
        "global:g",
    ]
    e.finish(info, Usage(10, 100), T0, outcome="usage")
    charged = e.ledger.query("SELECT scope, amount FROM claims WHERE request_id = 'r1'")
    assert sorted(c["scope"] for c in charged) == sorted(counters)
    assert {c["amount"] for c in charged} == {e.ledger.request("r1")["cost_micro"]}


def test_remaining_is_the_tightest_budget_after_the_hold(make):
    e = make(**HIERARCHY)
    d = e.admit(ask(e, "r1", key="a"), T0)
    assert d.binding == "budget:k@key=a" and d.remaining == Decimal("0.05") - d.reserved


TWO_WINDOWS = {
    "rate_limits": [
        {"id": "pace", "max_requests": 3, "requests_reset": "1m", "max_tokens": 5000, "tokens_reset": "1h"}
    ],
    "budgets": [{"id": "g", "max_usd": 100}],
    "global": {"budgets": ["g"], "rate_limits": ["pace"]},
}


def test_a_full_window_refuses_even_when_the_other_has_expired(make):
    """Requests per minute and tokens per hour, each on its own: when the minute rolls over, the
    full token hour still refuses; a fresh hour with a full minute refuses too."""
    e = make(**TWO_WINDOWS)
    # 4 requests of 1,005 worst-case tokens: the 4th is the 4th request in the minute.
    for i in range(3):
        info = ask(e, f"a{i}")
        assert e.admit(info, T0 + timedelta(seconds=i)).allowed
        e.finish(info, Usage(5, 1000), T0, outcome="usage")
    r = e.admit(ask(e, "a3"), T0 + timedelta(seconds=10)).refusal
    assert r.rule == "rate_limit:pace:requests" and r.kind is RefusalKind.RATE
    assert r.retry_after == 50 and "used 3" in r.message
    # A minute later the request window is new; 3,015 tokens used, one more 1,005 fits, then
    # the hour's 5,000 is full while the minute has room.
    info = ask(e, "b0")
    assert e.admit(info, T0 + timedelta(seconds=61)).allowed
    e.finish(info, Usage(5, 1000), T0, outcome="usage")
    r = e.admit(ask(e, "b1"), T0 + timedelta(seconds=62)).refusal
    assert r.rule == "rate_limit:pace:tokens" and r.unit == "tokens:total"
    assert r.retry_after == 3600 - 62
    # Once the hour rolls over both windows have room again.
    assert e.admit(ask(e, "c0"), T0 + timedelta(hours=1)).allowed


def test_tokens_settle_to_the_real_count(make):
    e = make(**TWO_WINDOWS)
    info = ask(e, "r1", max_tokens=4000)
    assert e.admit(info, T0).allowed
    window = e.ledger.query("SELECT window_start FROM claims WHERE request_id='r1' AND unit='tokens:total'")[
        0
    ]
    assert (
        e.ledger.window_totals("global|pace|tokens", window["window_start"]).held == info.input_tokens + 4000
    )
    e.finish(info, Usage(7, 20), T0, outcome="usage")
    t = e.ledger.window_totals("global|pace|tokens", window["window_start"])
    assert (t.settled, t.held) == (27, 0)


IN_FLIGHT = {
    "rate_limits": [{"id": "par", "max_in_flight": 2}],
    "budgets": [{"id": "g", "max_usd": 100}],
    "keys": [{"id": "a", "secret_sha256": secret_hash("s"), "rate_limits": ["par"]}],
    "global": {"budgets": ["g"]},
}


@pytest.mark.parametrize(
    "finish",
    [
        pytest.param(lambda e, i: e.finish(i, Usage(5, 5), T0, outcome="usage"), id="response"),
        pytest.param(lambda e, i: e.finish(i, None, T0, outcome="upstream_error_500"), id="error"),
        pytest.param(
            lambda e, i: e.finish(i, None, T0, outcome="disconnect", upstream_ran=False), id="disconnect"
        ),
        pytest.param(lambda e, i: e.ledger.release(i.request_id, T0, outcome="replayed"), id="replay"),
        pytest.param(lambda e, i: e.ledger.reap(T0 + timedelta(hours=3), 7200), id="crash-ttl"),
    ],
)
def test_in_flight_returns_to_zero_on_every_exit(make, finish):
    e = make(**IN_FLIGHT)
    infos = [ask(e, f"r{i}", key="a") for i in range(3)]
    assert e.admit(infos[0], T0).allowed and e.admit(infos[1], T0).allowed
    r = e.admit(infos[2], T0).refusal
    assert r.rule == "rate_limit:par:in_flight@key=a" and r.kind is RefusalKind.RATE and r.retry_after == 1
    for info in infos[:2]:
        finish(e, info)
    t = e.ledger.window_totals("key=a|par|in_flight", "")
    assert (t.settled, t.held) == (0, 0)
    assert e.admit(ask(e, "r9", key="a"), T0).allowed


ORDER = {
    "max_multiplier": 2,
    "rate_limits": [{"id": "one", "max_requests": 0, "requests_reset": "1m"}],
    "budgets": [{"id": "none", "max_usd": 0}],
    "keys": [
        {
            "id": "off",
            "active": False,
            "secret_sha256": secret_hash("x1"),
            "allowed_models": [],
            "max_multiplier": 0,
            "rate_limits": ["one"],
            "budgets": ["none"],
        },  # fmt: skip
        {
            "id": "old",
            "expires_at": "2026-01-01T00:00:00Z",
            "secret_sha256": secret_hash("x2"),
            "allowed_models": [],
        },
        {
            "id": "narrow",
            "secret_sha256": secret_hash("x3"),
            "allowed_models": ["gpt-4o-mini"],
            "rate_limits": ["one"],
            "budgets": ["none"],
        },  # fmt: skip
        {"id": "nomodels", "secret_sha256": secret_hash("x4"), "allowed_models": []},
        {"id": "noprov", "secret_sha256": secret_hash("x5"), "allowed_providers": ["anthropic"]},
        {"id": "denied", "secret_sha256": secret_hash("x6"), "denied_models": ["gpt-4o*"]},
        {"id": "cheap", "secret_sha256": secret_hash("x7"), "max_multiplier": "0.5", "rate_limits": ["one"]},
        {"id": "rated", "secret_sha256": secret_hash("x8"), "rate_limits": ["one"], "budgets": ["none"]},
        {"id": "poor", "secret_sha256": secret_hash("x9"), "budgets": ["none"]},
    ],
}


@pytest.mark.parametrize(
    "key,model,rule,kind",
    [
        ("off", "gpt-4o", "key_state@key=off", RefusalKind.AUTH),  # before access, multiplier, limits
        ("old", "gpt-4o", "key_state@key=old", RefusalKind.AUTH),
        ("narrow", "gpt-4o", "model_access@key=narrow", RefusalKind.INVALID),  # before limits
        ("nomodels", "gpt-4o", "model_access@key=nomodels", RefusalKind.INVALID),  # empty: nothing
        ("noprov", "gpt-4o", "model_access@key=noprov", RefusalKind.INVALID),
        ("denied", "gpt-4o-mini", "model_access@key=denied", RefusalKind.INVALID),
        ("cheap", "gpt-4o", "model_multiplier_cap", RefusalKind.INVALID),  # before rate limits
        # Before budgets. A limit of 0 can never take a request: refused for good, not "retry later".
        ("rated", "gpt-4o", "rate_limit:one:requests@key=rated", RefusalKind.QUOTA),
        ("poor", "gpt-4o", "budget:none@key=poor", RefusalKind.QUOTA),
        (None, "claude-opus-4-1", "model_multiplier_cap", RefusalKind.INVALID),  # the rules' own cap
    ],
)
def test_the_first_failure_in_the_fixed_order_wins(make, key, model, rule, kind):
    e = make(**ORDER)
    info = ask(e, "r", key=key, model=model) if model != "claude-opus-4-1" else None
    if info is None:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
        msgs = Endpoint(
            "anthropic", "messages", Metering.METERED, "api.anthropic.com", "/v1/messages", "anthropic"
        )
        info = e.read_request(msgs, body, principal="default", request_id="r").info
    d = e.admit(info, T0)
    assert not d.allowed and (d.refusal.rule, d.refusal.kind) == (rule, kind)
    assert e.ledger.request("r")["rule"] == rule


def test_unknown_model_fails_closed_under_an_allow_list(make):
    e = make(**ORDER)
    assert (
        e.admit(ask(e, "r", key="narrow", model="gpt-4o-mini-2099"), T0).refusal.rule
        == "model_access@key=narrow"
    )


def test_identity_proves_keys(make):
    e = make(**HIERARCHY)
    assert e.identify(Credentials(proxy_user="a", proxy_secret="sa")) == Identity("key:a", e.scopes.keys["a"])
    assert e.identify(Credentials(proxy_user="a", proxy_secret="nope")).kind is RefusalKind.PROXY_AUTH
    assert e.identify(Credentials(key_header="sb")).principal == "key:b"
    assert e.identify(Credentials(key_header="zz")).kind is RefusalKind.AUTH
    anon = e.identify(Credentials(api_key="sk-123"))
    assert anon.key is None and anon.principal.startswith("apikey:") and "sk-123" not in anon.principal


CALENDAR = {
    "budgets": [
        {"id": "day", "max_usd": "0.015", "reset": "1d", "calendar": True, "timezone": "Europe/Berlin"}
    ],
    "global": {"budgets": ["day"]},
}


def test_a_calendar_day_in_the_declared_zone_refuses_with_retry_after_then_resets(make):
    e = make(**CALENDAR)
    info = ask(e, "r1")
    assert e.admit(info, T0).allowed
    r = e.admit(ask(e, "r2"), T0).refusal
    # Berlin midnight is 23:00 UTC in November: 13 hours after 10:00 UTC.
    assert (
        r.kind is RefusalKind.RATE
        and r.resets == "2026-11-22T23:00:00.000000Z"
        and r.retry_after == 13 * 3600
    )
    assert e.admit(ask(e, "r3"), datetime(2026, 11, 22, 23, 0, tzinfo=UTC)).allowed


def test_reset_starts_a_new_window_and_topup_adds_for_good(make):
    e = make(budgets=[{"id": "run", "max_usd": "0.015"}], **{"global": {"budgets": ["run"]}})
    info = ask(e, "r1")
    assert e.admit(info, T0).allowed
    e.finish(info, Usage(5, 1000), T0, outcome="usage")
    assert not e.admit(ask(e, "r2"), T0).allowed
    e.ledger.topup("global:run", 10_000, T0, who="ops")
    assert e.admit(ask(e, "r3"), T0).allowed  # 0.01 spent + 0.0101 held <= 0.025
    e.ledger.reset(["global:run"], T0 + timedelta(seconds=1), who="ops")
    assert e.admit(
        ask(e, "r4"), T0 + timedelta(seconds=2)
    ).allowed  # a new window: the hold of r3 stays in the old
    adj = e.ledger.query("SELECT action, who, amount_micro FROM adjustments ORDER BY id")
    assert [(a["action"], a["who"], a["amount_micro"]) for a in adj] == [
        ("topup", "ops", 10_000),
        ("reset", "ops", 0),
    ]
    # History is kept: the first window's totals are still there.
    assert e.ledger.window_totals("global:run", "").settled == 10_005


def test_a_dated_snapshot_is_the_model_its_exact_rules_name(make):
    """`gpt-4o-2024-08-06` is billed as gpt-4o: a model budget and a denial for `gpt-4o` hold
    for it (and for a vendor-prefixed name), but not for gpt-4o-mini."""
    e = make(
        budgets=[{"id": "m", "max_usd": "0.001"}, {"id": "g", "max_usd": 1}],
        models=[{"model": "gpt-4o", "budgets": ["m"]}],
        keys=[{"id": "a", "secret_sha256": secret_hash("s"), "denied_models": ["gpt-4o"]}],
        prices={
            "gpt-4o": {"input_mtok": 1, "output_mtok": 10},
            "gpt-4o-mini": {"input_mtok": 1, "output_mtok": 10},
        },
        **{"global": {"budgets": ["g"]}},
    )
    for i, model in enumerate(["gpt-4o-2024-08-06", "GPT-4o-2024-11-20", "openai/gpt-4o"]):
        if "/" not in model:  # (a vendor-prefixed name has no price here; access is checked first)
            assert e.admit(ask(e, f"m{i}", model=model), T0).refusal.rule == "budget:m@model=gpt-4o"
        assert e.admit(ask(e, f"k{i}", key="a", model=model), T0).refusal.rule == "model_access@key=a"
    assert e.admit(ask(e, "mini", key="a", model="gpt-4o-mini"), T0).allowed


def test_a_request_larger_than_a_whole_window_is_refused_for_good(make):
    e = make(
        rate_limits=[{"id": "small", "max_tokens": 500, "tokens_reset": "1m"}],
        budgets=[{"id": "g", "max_usd": 1}],
        **{"global": {"budgets": ["g"], "rate_limits": ["small"]}},
    )
    r = e.admit(ask(e, "r", max_tokens=1000), T0).refusal
    assert (
        r.kind is RefusalKind.QUOTA and r.retry_after is None and "smaller than this one request" in r.message
    )


def test_a_rate_limit_refusal_never_asks_the_token_counter(make):
    e = make(
        rate_limits=[{"id": "one", "max_requests": 1, "requests_reset": "1m"}],
        budgets=[{"id": "g", "max_usd": 1}],
        **{"global": {"budgets": ["g"], "rate_limits": ["one"]}},
    )
    assert e.admit(ask(e, "a"), T0, count_may_help=True).allowed
    d = e.admit(ask(e, "b"), T0, count_may_help=True)
    assert not d.allowed and not d.hinges_on_count and e.ledger.request("b")["state"] == "refused"


@pytest.mark.parametrize(
    "before,after",
    [
        ({"reset": "1d", "calendar": True}, {"reset": "1w", "calendar": True}),
        ({"reset": "never"}, {"reset": "1d"}),
        ({"reset": "1h"}, {"reset": "1d", "calendar": True, "timezone": "Europe/Berlin"}),
    ],
)
def test_reshaping_a_window_in_the_rules_carries_its_spend(make, tmp_path, before, after):
    """A reload (or restart) that changes a budget's window must not forget what was spent."""
    e = make(budgets=[{"id": "b", "max_usd": "0.015", **before}], **{"global": {"budgets": ["b"]}})
    info = ask(e, "r1")
    assert e.admit(info, T0).allowed
    held = ask(e, "r2", max_tokens=100)
    assert e.admit(held, T0).allowed  # in flight across the change
    e.finish(info, Usage(5, 1000), T0, outcome="usage")
    assert not e.admit(ask(e, "r3"), T0).allowed
    reshaped = Engine(
        policy.parse(
            {**BASE, "budgets": [{"id": "b", "max_usd": "0.015", **after}], "global": {"budgets": ["b"]}},
            Path("."),
        ),
        e.ledger,
    )
    later = T0 + timedelta(minutes=1)
    assert not reshaped.admit(ask(reshaped, "r4"), later).allowed  # $0.01 spent still counts
    reshaped.finish(held, Usage(5, 10), later, outcome="usage")  # the hold moved with it, and settles there
    start = e.ledger.query("SELECT window_start FROM claims WHERE request_id = 'r2'")[0]["window_start"]
    t = e.ledger.window_totals("global:b", start)
    assert t.held == 0 and t.settled == 10_005 + 105


def test_reaped_in_flight_claims_match_their_totals(make):
    e = make(**IN_FLIGHT)
    info = ask(e, "r1", key="a")
    assert e.admit(info, T0).allowed
    assert e.ledger.reap(T0 + timedelta(hours=3), 7200) == 1
    claims = e.ledger.query("SELECT scope, amount FROM claims WHERE request_id = 'r1'")
    for c in claims:
        t = e.ledger.window_totals(c["scope"], "")
        assert t.settled + t.held == c["amount"]


def test_output_cap_injection_fits_a_request_to_a_token_limit(make):
    """A client that sends no output cap (Codex) under a token rate limit: its worst case is the
    model's whole output, more than the window holds. With clamp_output the cap written is what
    the window has left, and the next request waits for the window instead of failing for good."""
    e = make(
        clamp_output={"floor_tokens": 100},
        rate_limits=[{"id": "tpm", "max_tokens": 5000, "tokens_reset": "1m", "count_tokens": "total"}],
        budgets=[{"id": "g", "max_usd": 100}],
        **{"global": {"budgets": ["g"], "rate_limits": ["tpm"]}},
    )
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"}]}
    info = e.read_request(CHAT, body, principal="default", request_id="r1").info
    assert info.max_output_tokens == 16384 and info.requested_output_tokens is None
    d = e.admit(info, T0)
    assert d.allowed and d.output_cap == 5000 - info.input_tokens
    held = e.ledger.query("SELECT amount FROM claims WHERE request_id = 'r1' AND unit = 'tokens:total'")
    assert held[0]["amount"] == 5000
    e.finish(info, Usage(info.input_tokens, 3000), T0, outcome="usage")
    again = e.read_request(CHAT, body, principal="default", request_id="r2").info
    d2 = e.admit(again, T0)
    assert d2.allowed and d2.output_cap == 5000 - info.input_tokens - 3000 - again.input_tokens
    e.finish(again, Usage(again.input_tokens, d2.output_cap), T0, outcome="usage")
    r = e.admit(e.read_request(CHAT, body, principal="default", request_id="r3").info, T0).refusal
    assert r.kind is RefusalKind.RATE and r.rule == "rate_limit:tpm:tokens"  # full until the minute ends
