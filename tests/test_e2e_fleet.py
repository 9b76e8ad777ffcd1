"""A proxy on a PostgreSQL ledger end to end: a real mitmdump with `spendfuse_db=postgresql://…`,
a real OpenAI client, the fake upstream, and a real PostgreSQL server that the test stops and
starts again (tests/support/postgres.py)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import openai
import pytest

import addon
from governance.store.postgres import PostgresStore
from tests.support.at_reservation import (
    MAX_TOKENS,
    PROMPT,
    bill_at_reservation,
    fake_bill_micro,
    reserved_input_tokens,
)
from tests.support.postgres import PgServer
from tests.support.proxy import Proxy, start_proxy
from tests.test_e2e_governance import chat, client, rules, team_rules


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.expect_errors(
    "LEDGER DATABASE",
    "ledger unavailable",
    "could not record refusal",
    "reconnection attempt",
    "error connecting",
)
def test_requests_are_refused_503_while_the_database_is_down_and_pass_when_it_is_back(
    start, upstream, tmp_path, pg_server: PgServer
):
    url = pg_server.create_db("fleet")
    proxy = one_dollar_proxy(start, tmp_path, url)
    c = client(proxy)
    assert chat(c).choices
    pg_server.stop()
    try:
        with pytest.raises(openai.APIStatusError) as refused:
            chat(c)
    finally:
        pg_server.start()
    assert refused.value.status_code == 503
    assert refused.value.response.json()["error"]["message"]  # the provider's own envelope
    assert sum(upstream.hits.values()) == 1  # the refused request never reached the provider
    assert chat(c).choices  # reconnected without a restart
    assert sum(upstream.hits.values()) == 2
    store = PostgresStore.open(url)
    try:
        by_state = {r["state"]: r["n"] for r in store.requests_by_state()}
    finally:
        store.close()
    assert by_state == {"settled": 2}


def test_a_database_that_is_down_at_start_stops_the_proxy(start, tmp_path):
    url = f"postgresql://postgres@127.0.0.1:{_closed_port()}/spend"
    with pytest.raises(RuntimeError, match="cannot open ledger 'postgresql://postgres@127.0.0.1"):
        start(spendfuse_db=url)
    assert not (tmp_path / "postgresql:").exists()


def one_dollar_proxy(start, tmp_path: Path, url: str) -> Proxy:
    """A proxy on the ledger at `url`, under one global budget of $1."""
    return start(
        rules=rules(
            tmp_path / "r.yaml", budgets=[{"id": "all", "max_usd": 1}], **{"global": {"budgets": ["all"]}}
        ),
        spendfuse_db=url,
    )


FLEET_KEYS = 8
FLEET_PROXIES = 4
FLEET_REQUESTS = 1000


def fleet_rules(path: Path, team_cap_usd: Decimal | int) -> Path:
    """Eight keys of one team, each with a roomy budget of its own; the team's cap is the test's."""
    return team_rules(path, team_cap_usd, keys=FLEET_KEYS)


def test_a_fleet_of_proxies_sharing_one_database_never_passes_a_team_cap_even_when_one_dies(
    start, upstream, tmp_path, pg_server: PgServer
):
    """Four proxies, each with its own confdir (its own CA), rules file and nothing else shared
    but the database, take 1,000 concurrent requests from eight keys of one team; one proxy is
    killed with -9 mid-run, while its admitted requests are at the provider. Every answer costs
    exactly its reservation, so no settlement frees room: a cap of `admitted` reservations and
    less than one more admits exactly that many, whatever the timing and whichever proxy. The
    dead proxy's holds are charged once by the reaper after their TTL, so the ledger equals the
    provider's bill (which bills every request it ran, whoever was left to read the answer)."""
    admitted = 10  # as the single-host concurrency tests: the provider sees few requests at once
    cost = bill_at_reservation(
        upstream,
        reserved_input_tokens(start, tmp_path, user="k0:s0", rules=fleet_rules(tmp_path / "cal.yaml", 10)),
    )
    cap = admitted * cost + cost - 1  # µ$: one more reservation would pass it by 1 µ$
    upstream.knobs.delay_s = 2  # admitted requests stay at the provider while a proxy dies
    url = pg_server.create_db("fleet")
    proxies: list[Proxy] = []
    t0 = time.monotonic()
    try:
        start_fleet(proxies, tmp_path, upstream, url, Decimal(cap) / 1_000_000, FLEET_PROXIES)
        results = asyncio.run(_fire_and_kill(proxies, upstream, admitted))
    finally:
        for p in proxies:
            p.stop()
    took = time.monotonic() - t0
    ok = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    lost = [i for i, r in enumerate(results) if isinstance(r, openai.APIConnectionError)]
    others = {str(r)[:300] for r in results if isinstance(r, BaseException) and r not in refused}
    assert len(ok) + len(refused) + len(lost) == FLEET_REQUESTS, others  # no 5xx, nothing else
    assert all(_proxy_of(i) == 0 for i in lost)  # only the dead proxy's clients lost answers
    assert {r.response.headers["x-spendfuse-refused"] for r in refused} == {"budget:team-cap@team=research"}
    assert upstream.hits["/v1/chat/completions"] == admitted and fake_bill_micro(upstream) == admitted * cost
    store = PostgresStore.open(url, db_clock=False)  # the test's reaper runs an hour later
    try:
        held = len(store.query("SELECT id FROM requests WHERE state = 'held'"))
        assert held == admitted - len(ok)  # the dead proxy's admitted requests, still held
        later = datetime.now(UTC) + timedelta(hours=1)  # past the rules' hold TTL
        assert store.reap(later, 3600) == held and store.reap(later, 3600) == 0  # once
        team = store.window_totals("team=research|team-cap", "")
        per_key = [store.window_totals(f"key=k{i}|roomy", "").settled for i in range(FLEET_KEYS)]
        by_state = {r["state"]: r["n"] for r in store.requests_by_state()}
    finally:
        store.close()
    assert team.held == 0 and team.settled == admitted * cost == cap - (cost - 1)  # spend <= cap
    assert sum(per_key) == fake_bill_micro(upstream)  # the ledger equals the provider's bill
    assert by_state.get("settled", 0) == len(ok) and by_state.get("expired", 0) == held
    assert by_state["refused"] >= len(refused)  # a refusal the dead proxy recorded never reached its client
    print(f"fleet: {FLEET_REQUESTS} requests, {len(lost)} lost with the killed proxy, {took:.0f}s")


def _proxy_of(i: int) -> int:
    """The proxy request `i` of `_fire` went through."""
    return (i % (FLEET_KEYS * FLEET_PROXIES)) % FLEET_PROXIES


async def _fire_and_kill(proxies: list[Proxy], upstream, admitted: int) -> list:
    """`_fire` every request; kill proxy 0 with -9 once every admitted request is at the provider."""
    fired = asyncio.ensure_future(_fire(proxies, FLEET_REQUESTS))
    deadline = time.monotonic() + 120
    while upstream.hits["/v1/chat/completions"] < admitted:
        assert time.monotonic() < deadline and not fired.done(), (
            "the admitted requests never reached the provider"
        )
        await asyncio.sleep(0.01)
    proxies[0].process.kill()  # SIGKILL: no shutdown, no settlement
    return await fired


def start_fleet(proxies: list[Proxy], tmp_path: Path, upstream, url: str, cap_usd: Decimal, n: int) -> None:
    """Start `n` proxies into `proxies`, each in a home of its own: its own confdir (and CA) and
    rules file; they share only the database at `url`."""
    for i in range(n):
        home = tmp_path / f"proxy{i}"
        confdir = home / "conf"
        confdir.mkdir(parents=True)
        addon.ensure_ca_bundle(confdir)
        sets = {"spendfuse_rules": str(fleet_rules(home / "rules.yaml", cap_usd)), "spendfuse_db": url}
        proxies.append(start_proxy(home, confdir=confdir, sets=sets, redirect_port=upstream.port))


async def _fire(proxies: list, n: int) -> list:
    clients = [
        openai.AsyncOpenAI(
            api_key="sk-test",
            max_retries=0,
            http_client=openai.DefaultAsyncHttpxClient(
                proxy=f"http://k{k}:s{k}@{p.url.removeprefix('http://')}",
                verify=ssl.create_default_context(cafile=str(p.ca)),
                timeout=120,
            ),
        )
        for k in range(FLEET_KEYS)
        for p in proxies
    ]

    async def one(i: int):
        return await clients[i % len(clients)].chat.completions.create(
            model="gpt-4o", max_tokens=MAX_TOKENS, messages=PROMPT
        )

    try:
        return await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    finally:
        for c in clients:
            await c.close()


def test_a_proxy_killed_mid_request_leaves_holds_that_any_proxy_reaps_once(
    start, upstream, tmp_path, pg_server: PgServer
):
    """One of two proxies is killed with -9 while its requests are at the provider. Its holds
    stay (the provider may bill them), the survivor's requests settle, and the reaper, run by any
    proxy after the TTL, charges each lost hold once at its reservation, never twice."""
    cost = bill_at_reservation(
        upstream,
        reserved_input_tokens(start, tmp_path, user="k0:s0", rules=fleet_rules(tmp_path / "cal.yaml", 10)),
    )
    upstream.knobs.delay_s = 4  # the requests stay in flight while a proxy dies
    url = pg_server.create_db("crash")
    proxies: list[Proxy] = []
    store = PostgresStore.open(url, db_clock=False)  # the test's reaper runs an hour later
    try:
        start_fleet(proxies, tmp_path, upstream, url, Decimal(10), 2)

        async def run() -> list:
            fired = asyncio.ensure_future(_fire(proxies, 16))  # 8 to each proxy
            deadline = time.monotonic() + 30
            while len(store.query("SELECT id FROM requests WHERE state = 'held'")) < 16:
                assert time.monotonic() < deadline, "the requests never all reached the provider"
                await asyncio.sleep(0.05)
            proxies[0].process.kill()  # SIGKILL: no shutdown, no settlement
            return await fired

        results = asyncio.run(run())
    finally:
        for p in proxies:
            p.stop()
    assert sum(1 for r in results if not isinstance(r, BaseException)) == 8  # the survivor's
    by_state = {r["state"]: r["n"] for r in store.requests_by_state()}
    assert by_state == {"settled": 8, "held": 8}
    later = datetime.now(UTC) + timedelta(hours=1)  # past the rules' hold TTL
    assert store.reap(later, 3600) == 8 and store.reap(later, 3600) == 0  # once
    team = store.window_totals("team=research|team-cap", "")
    rows = store.query("SELECT state, cost_micro FROM requests")
    store.close()
    assert team.held == 0 and team.settled == 16 * cost  # each charged once, at its reservation
    assert sorted(r["state"] for r in rows) == ["expired"] * 8 + ["settled"] * 8
    assert fake_bill_micro(upstream) <= team.settled  # never below what the provider billed
