"""A proxy on a PostgreSQL ledger end to end: a real mitmdump with `spendfuse_db=postgresql://…`,
a real OpenAI client, the fake upstream, and a real PostgreSQL server that the test stops and
starts again (tests/support/postgres.py)."""

from __future__ import annotations

import asyncio
import socket
import ssl
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
from tests.support.proxy import start_proxy
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
    proxy = start(
        rules=rules(
            tmp_path / "r.yaml", budgets=[{"id": "all", "max_usd": 1}], **{"global": {"budgets": ["all"]}}
        ),
        spendfuse_db=url,
    )
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


FLEET_KEYS = 8
FLEET_PROXIES = 4
FLEET_REQUESTS = 240


def fleet_rules(path: Path, team_cap_usd: Decimal | int) -> Path:
    """Eight keys of one team, each with a roomy budget of its own; the team's cap is the test's."""
    return team_rules(path, team_cap_usd, keys=FLEET_KEYS)


def test_a_fleet_of_proxies_sharing_one_database_never_passes_a_team_cap(
    start, upstream, tmp_path, pg_server: PgServer
):
    """Four proxies, each with its own confdir (its own CA), rules file and nothing else shared
    but the database, take many concurrent requests from eight keys of one team. Every answer
    costs exactly its reservation, so no settlement frees room: a cap of `admitted` reservations
    and less than one more admits exactly that many, whatever the timing and whichever proxy."""
    admitted = 20
    cost = bill_at_reservation(
        upstream,
        reserved_input_tokens(start, tmp_path, user="k0:s0", rules=fleet_rules(tmp_path / "cal.yaml", 10)),
    )
    cap = admitted * cost + cost - 1  # µ$: one more reservation would pass it by 1 µ$
    url = pg_server.create_db("fleet")
    proxies = []
    try:
        for i in range(FLEET_PROXIES):
            home = tmp_path / f"proxy{i}"
            confdir = home / "conf"
            confdir.mkdir(parents=True)
            addon.ensure_ca_bundle(confdir)
            sets = {
                "spendfuse_rules": str(fleet_rules(home / "rules.yaml", Decimal(cap) / 1_000_000)),
                "spendfuse_db": url,
            }
            proxies.append(start_proxy(home, confdir=confdir, sets=sets, redirect_port=upstream.port))
        results = asyncio.run(_fire(proxies))
    finally:
        for p in proxies:
            p.stop()
    ok = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert (len(ok), len(refused)) == (admitted, FLEET_REQUESTS - admitted), {
        type(r).__name__ for r in results
    }
    assert {r.response.headers["x-spendfuse-refused"] for r in refused} == {"budget:team-cap@team=research"}
    assert upstream.hits["/v1/chat/completions"] == admitted and fake_bill_micro(upstream) == admitted * cost
    store = PostgresStore.open(url)
    try:
        team = store.window_totals("team=research|team-cap", "")
        per_key = [store.window_totals(f"key=k{i}|roomy", "").settled for i in range(FLEET_KEYS)]
        by_state = {r["state"]: r["n"] for r in store.requests_by_state()}
    finally:
        store.close()
    assert team.held == 0 and team.settled == admitted * cost == cap - (cost - 1)
    assert sum(per_key) == fake_bill_micro(upstream)  # the ledger equals the provider's bill
    assert by_state == {"settled": admitted, "refused": FLEET_REQUESTS - admitted}


async def _fire(proxies: list) -> list:
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

    async def one(n: int):
        return await clients[n % len(clients)].chat.completions.create(
            model="gpt-4o", max_tokens=MAX_TOKENS, messages=PROMPT
        )

    try:
        return await asyncio.gather(*(one(n) for n in range(FLEET_REQUESTS)), return_exceptions=True)
    finally:
        for c in clients:
            await c.close()
