"""Governance end to end: a real mitmdump with spendfuse, real SDK clients through HTTPS_PROXY
(with proxy credentials or key headers), a fake upstream on loopback, and the ledger file."""

from __future__ import annotations

import asyncio
import ssl
import time
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from governance.ledger import Ledger
from governance.scopes import secret_hash
from tests.conftest import TEST_PRICES
from tests.support.at_reservation import (
    MAX_TOKENS,
    PROMPT,
    bill_at_reservation,
    fake_bill_micro,
    reserved_input_tokens,
)
from tests.support.proxy import Proxy

TABLES = {
    "multipliers": {"gpt-4o": 0.78, "claude-sonnet-4-5": 1},
    "model_limits": {"gpt-4o": 16384, "claude-sonnet-4-5": 64000},
    "prices": TEST_PRICES,
    "estimate": {"input_margin": 1},
}


def rules(path: Path, **data: object) -> Path:
    path.write_text(yaml.safe_dump({"version": 2, **TABLES, **data}))
    return path


def client(proxy: Proxy, *, user: str | None = None, secret: str | None = None, **kw) -> openai.OpenAI:
    host = proxy.url.removeprefix("http://")
    url = f"http://{user}:{secret}@{host}" if user else proxy.url
    return openai.OpenAI(
        api_key="sk-test-not-real",
        max_retries=0,
        http_client=httpx.Client(proxy=url, verify=ssl.create_default_context(cafile=str(proxy.ca))),
        **kw,
    )


def chat(c: openai.OpenAI, max_tokens: int = 100):
    return c.chat.completions.create(
        model="gpt-4o", max_tokens=max_tokens, messages=[{"role": "user", "content": "hi"}]
    )


def ledger_rows(db: Path, sql: str, params: list | None = None) -> list[dict]:
    deadline = time.monotonic() + 10
    while True:
        led = Ledger.open(db)
        try:
            held = led.query("SELECT count(*) AS n FROM requests WHERE state = 'held'")[0]["n"]
            found = led.query(sql, params or [])
        finally:
            led.close()
        if not held or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


KEYS = {
    "budgets": [{"id": "agent", "max_usd": "0.0025"}, {"id": "all", "max_usd": 1}],
    "global": {"budgets": ["all"]},
    "keys": [
        {"id": "alice", "secret_sha256": secret_hash("alice-secret"), "budgets": ["agent"]},
        {"id": "bob", "secret_sha256": secret_hash("bob-secret"), "budgets": ["agent"]},
    ],
}


def test_two_agents_with_proxy_credentials_get_separate_budgets(start, upstream, tmp_path):
    proxy = start(rules=rules(tmp_path / "r.yaml", **KEYS))
    alice = client(proxy, user="alice", secret="alice-secret")
    bob = client(proxy, user="bob", secret="bob-secret")
    chat(alice)  # settles 81 µ$ of alice's 2,500
    # 245 output tokens reserve about 2,458 µ$: alice has 2,419 left, bob all 2,500.
    with pytest.raises(openai.RateLimitError) as refused:
        chat(alice, max_tokens=245)
    assert refused.value.response.headers["x-spendfuse-refused"] == "budget:agent@key=alice"
    assert "scope key=alice" in refused.value.message
    ok = bob.chat.completions.with_raw_response.create(
        model="gpt-4o", max_tokens=245, messages=[{"role": "user", "content": "hi"}]
    )
    assert ok.http_response.headers["x-spendfuse-budget"] == "budget:agent@key=bob"
    remaining = Decimal(ok.http_response.headers["x-spendfuse-remaining-usd"])
    assert Decimal(0) <= remaining < Decimal("0.0001")
    assert upstream.hits["/v1/chat/completions"] == 2
    rows = ledger_rows(
        tmp_path / "ledger.sqlite", "SELECT principal, state, counters FROM requests ORDER BY created_at"
    )
    assert [(r["principal"], r["state"]) for r in rows] == [
        ("key:alice", "settled"),
        ("key:alice", "refused"),
        ("key:bob", "settled"),
    ]
    assert rows[2]["counters"] == "key=bob|agent,global:all"
    # Proxy credentials are the proxy's: the provider never sees them.
    assert all("proxy-authorization" not in h for h in upstream.headers)


def test_a_wrong_secret_is_refused_407_and_nothing_reaches_the_upstream(start, upstream, tmp_path):
    proxy = start(rules=rules(tmp_path / "r.yaml", **KEYS))
    for user, secret in [("alice", "bob-secret"), ("mallory", "x"), ("alice", "")]:
        with pytest.raises(openai.APIConnectionError) as failed:
            chat(client(proxy, user=user, secret=secret))
        assert "407" in repr(failed.value.__cause__)
    assert upstream.total_hits == 0
    rows = ledger_rows(tmp_path / "ledger.sqlite", "SELECT rule, state FROM requests")
    assert rows and {(r["rule"], r["state"]) for r in rows} == {("identity", "refused")}


def test_a_header_key_gets_its_own_budget_and_never_reaches_the_upstream(start, upstream, tmp_path):
    proxy = start(rules=rules(tmp_path / "r.yaml", **KEYS))
    c = client(proxy, default_headers={"x-spendfuse-key": "bob-secret"})
    chat(c)
    bifrost_style = client(proxy, default_headers={"x-bf-vk": "alice-secret"})
    chat(bifrost_style)
    with pytest.raises(openai.AuthenticationError) as wrong:
        chat(client(proxy, default_headers={"x-spendfuse-key": "guess"}))
    assert wrong.value.status_code == 401 and "unknown" in wrong.value.message
    assert upstream.hits["/v1/chat/completions"] == 2
    for h in upstream.headers:
        assert "x-spendfuse-key" not in h and "x-bf-vk" not in h
    rows = ledger_rows(
        tmp_path / "ledger.sqlite", "SELECT principal, counters FROM requests WHERE state='settled'"
    )
    assert [(r["principal"], r["counters"]) for r in rows] == [
        ("key:bob", "key=bob|agent,global:all"),
        ("key:alice", "key=alice|agent,global:all"),
    ]


def test_require_key_refuses_an_anonymous_client(start, upstream, tmp_path):
    proxy = start(rules=rules(tmp_path / "r.yaml", require_key=True, **KEYS))
    with pytest.raises(openai.AuthenticationError) as refused:
        chat(client(proxy))
    assert refused.value.status_code == 401 and "requires a key" in refused.value.message
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert upstream.total_hits == 0
    chat(client(proxy, user="bob", secret="bob-secret"))
    assert upstream.total_hits == 1


def test_a_windowed_limit_answers_429_with_retry_after_and_lets_the_client_retry(start, upstream, tmp_path):
    data = {
        "budgets": [{"id": "all", "max_usd": 1}],
        "rate_limits": [{"id": "pace", "max_requests": 2, "requests_reset": "1h"}],
        "global": {"budgets": ["all"], "rate_limits": ["pace"]},
    }
    proxy = start(rules=rules(tmp_path / "r.yaml", **data))
    c = client(proxy)
    chat(c)
    chat(c)
    with pytest.raises(openai.RateLimitError) as limited:
        chat(c)
    headers = limited.value.response.headers
    assert "x-should-retry" not in headers and 3500 < int(headers["retry-after"]) <= 3600
    assert limited.value.code == "rate_limit_exceeded"
    assert headers["x-spendfuse-refused"] == "rate_limit:pace:requests"
    assert upstream.hits["/v1/chat/completions"] == 2


@pytest.mark.expect_errors("edited rules were NOT applied")
def test_rules_reload_when_edited_and_a_bad_edit_keeps_the_old_rules(start, upstream, tmp_path):
    path = rules(
        tmp_path / "r.yaml", budgets=[{"id": "all", "max_usd": 1}], **{"global": {"budgets": ["all"]}}
    )
    proxy = start(rules=path)
    c = client(proxy)
    chat(c)

    def wait_for(predicate) -> None:
        deadline = time.monotonic() + 10
        while not predicate():
            assert time.monotonic() < deadline, proxy.output()
            time.sleep(0.1)

    # A bad edit: refused, logged, and the old $1 still enforced.
    path.write_text(path.read_text().replace("max_usd: 1", "max_usd: 1\n  reset: 5 minutes"))
    wait_for(lambda: "NOT applied" in proxy.output())
    assert "reset" in proxy.output()
    chat(c)
    # A good edit, at once, with no restart: $0.0011 affords one request (about $0.00101 reserved)
    # alone, but not on top of the $0.000162 the two served requests already spent.
    rules(
        tmp_path / "r.yaml", budgets=[{"id": "all", "max_usd": "0.0011"}], **{"global": {"budgets": ["all"]}}
    )
    wait_for(lambda: "reloaded" in proxy.output())
    with pytest.raises(openai.RateLimitError):
        chat(c)
    # The spend recorded under the old limit still counts under the new one.
    rows = ledger_rows(tmp_path / "ledger.sqlite", "SELECT state FROM requests ORDER BY created_at")
    assert [r["state"] for r in rows] == ["settled", "settled", "refused"]


def team_rules(path: Path, team_cap_usd: Decimal | int, keys: int = 4) -> Path:
    """`keys` keys of one team, each with a roomy budget of its own; the team's cap is the test's."""
    return rules(
        path,
        budgets=[{"id": "team-cap", "max_usd": str(team_cap_usd)}, {"id": "roomy", "max_usd": 10}],
        teams=[{"id": "research", "budgets": ["team-cap"]}],
        keys=[
            {"id": f"k{i}", "team": "research", "secret_sha256": secret_hash(f"s{i}"), "budgets": ["roomy"]}
            for i in range(keys)
        ],
    )


def test_sixty_four_requests_from_four_keys_of_one_team_through_two_proxies_never_pass_its_cap(
    start, upstream, tmp_path
):
    """Every answer costs exactly its reservation, so no settlement frees room: a team cap of ten
    reservations and less than an eleventh admits exactly ten, whatever the timing."""
    admitted = 10
    calibration = team_rules(tmp_path / "calibration.yaml", 10)
    cost = bill_at_reservation(
        upstream, reserved_input_tokens(start, tmp_path, user="k0:s0", rules=calibration)
    )
    cap = admitted * cost + cost - 1  # µ$: one more reservation would pass it by 1 µ$
    db = tmp_path / "shared.sqlite"
    path = team_rules(tmp_path / "r.yaml", Decimal(cap) / 1_000_000)
    proxies = [start(rules=path, db=db, launcher=(i == 1)) for i in range(2)]

    async def fire() -> list:
        clients = []
        for i in range(4):
            for p in proxies:
                host = p.url.removeprefix("http://")
                clients.append(
                    openai.AsyncOpenAI(
                        api_key="sk-test",
                        max_retries=0,
                        http_client=openai.DefaultAsyncHttpxClient(
                            proxy=f"http://k{i}:s{i}@{host}",
                            verify=ssl.create_default_context(cafile=str(p.ca)),
                            timeout=60,
                        ),
                    )
                )

        async def one(n: int):
            return await clients[n % len(clients)].chat.completions.create(
                model="gpt-4o", max_tokens=MAX_TOKENS, messages=PROMPT
            )

        results = await asyncio.gather(*(one(n) for n in range(64)), return_exceptions=True)
        for c in clients:
            await c.close()
        return results

    results = asyncio.run(fire())
    ok = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert (len(ok), len(refused)) == (admitted, 64 - admitted)
    assert {r.response.headers["x-spendfuse-refused"] for r in refused} == {"budget:team-cap@team=research"}
    assert upstream.hits["/v1/chat/completions"] == admitted and fake_bill_micro(upstream) == admitted * cost
    led = Ledger.open(db)
    try:
        team = led.window_totals("team=research|team-cap", "")
        per_key = [led.window_totals(f"key=k{i}|roomy", "").settled for i in range(4)]
        principals = {r["principal"] for r in led.query("SELECT principal FROM requests")}
    finally:
        led.close()
    assert team.held == 0 and team.settled == admitted * cost == cap - (cost - 1)
    assert sum(per_key) == admitted * cost
    assert principals == {f"key:k{i}" for i in range(4)}


def test_the_bifrost_example_enforces_its_keys_models_and_budgets(start, upstream, tmp_path):
    """`spendfuse import-bifrost` on the shipped Helm values, saved elsewhere, run as the rules:
    clients send their virtual key as x-bf-vk, as they did with Bifrost."""
    from datetime import UTC, datetime

    from governance import RULES_DIR, cli
    from governance.ledger import RequestRecord
    from governance.types import Claim

    out = tmp_path / "from-bifrost.yaml"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli.main(["import-bifrost", str(RULES_DIR / "examples" / "bifrost-values.yaml")]) == 0
    out.write_text(buf.getvalue())
    db = tmp_path / "ledger.sqlite"
    # The example's provider keys are custody credentials reading these (as Bifrost read them).
    keys = {"OPENAI_API_KEY": "sk-proj-example-openai", "ANTHROPIC_API_KEY": "sk-ant-example"}
    proxy = start(rules=out, db=db, env=keys)
    dev = client(proxy, default_headers={"x-bf-vk": "vk-dev-secret-token"})
    mini = dev.chat.completions.create(
        model="gpt-4o-mini", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
    )
    assert mini.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as not_allowed:
        chat(dev)  # gpt-4o: vk-dev may use gpt-4o-mini only
    assert not_allowed.value.response.headers["x-spendfuse-refused"] == "model_access@key=vk-dev"
    with pytest.raises(openai.AuthenticationError):
        chat(client(proxy))  # is_vk_mandatory
    # Spend the dev key's daily $10.50 (less 10 µ$) in the ledger: the next request is refused
    # by that budget, a window that resets, so a 429 the client may retry after the day.
    led = Ledger.open(db)
    try:
        spent = Claim(
            "key=vk-dev|budget-dev",
            "",
            "",
            10_500_000,
            10_499_990,
            "budget:budget-dev@key=vk-dev",
            reset="1d",
        )
        assert led.reserve(
            seed := RequestRecord("seed", "ops"), [spent], 10_499_990, datetime.now(UTC)
        ).granted
        led.settle(seed.request_id, 10_499_990, datetime.now(UTC), outcome="seeded")
    finally:
        led.close()
    with pytest.raises(openai.RateLimitError) as exhausted:
        dev.chat.completions.create(
            model="gpt-4o-mini", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        )
    headers = exhausted.value.response.headers
    assert headers["x-spendfuse-refused"] == "budget:budget-dev@key=vk-dev"
    assert 80_000 < int(headers["retry-after"]) <= 86_400 and "x-should-retry" not in headers
    assert upstream.hits["/v1/chat/completions"] == 1
