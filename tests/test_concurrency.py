"""Never over the cap, for real: many simultaneous requests through one proxy, and through
several proxy processes sharing one ledger file or one PostgreSQL database.

Every answer costs exactly its reservation (the fake upstream writes the whole output cap and
bills the input the proxy reserved), so no settlement ever frees room: a cap of N reservations
plus less than one more admits exactly N requests, whatever the timing, and one admission too
many shows."""

from __future__ import annotations

import asyncio
import ssl
from decimal import Decimal
from pathlib import Path

import openai
import pytest

from governance.store.opening import open_store
from tests.support.at_reservation import (
    MAX_TOKENS,
    PROMPT,
    bill_at_reservation,
    fake_bill_micro,
    reserved_input_tokens,
)

REQUESTS = 64
ADMITTED = 10  # the cap holds this many reservations, and less than one more


async def fire(urls: list[str], ca: Path, n: int) -> tuple[int, list[openai.APIStatusError]]:
    """Send n identical chat requests at once, spread over the proxy URLs; count 200s and refusals."""
    clients = [
        openai.AsyncOpenAI(
            api_key="sk-test",
            max_retries=0,
            http_client=openai.DefaultAsyncHttpxClient(
                proxy=url, verify=ssl.create_default_context(cafile=str(ca)), timeout=60
            ),
        )
        for url in urls
    ]

    async def one(i: int):
        client = clients[i % len(clients)]
        return await client.chat.completions.create(model="gpt-4o", max_tokens=MAX_TOKENS, messages=PROMPT)

    results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    for c in clients:
        await c.close()
    ok = sum(1 for r in results if not isinstance(r, BaseException))
    refused = [r for r in results if isinstance(r, openai.APIStatusError)]
    others = [r for r in results if isinstance(r, BaseException) and not isinstance(r, openai.APIStatusError)]
    assert not others, others
    return ok, refused


@pytest.mark.parametrize(("processes", "kind"), [(1, "sqlite"), (3, "sqlite"), (3, "postgresql")])
def test_simultaneous_requests_never_pass_the_cap(processes, kind, start, upstream, tmp_path, request):
    cost = bill_at_reservation(upstream, reserved_input_tokens(start, tmp_path))
    cap = ADMITTED * cost + cost - 1  # µ$: one more reservation would pass it by 1 µ$
    db = tmp_path / "shared.sqlite"
    if kind == "postgresql":  # the same ledger in a PostgreSQL database the proxies share
        db = request.getfixturevalue("pg_server").create_db("concurrency")
    budget = str(Decimal(cap) / 1_000_000)
    proxies = [start(spendfuse_budget=budget, db=db, launcher=(i == 1)) for i in range(processes)]
    ok, refused = asyncio.run(fire([p.url for p in proxies], proxies[0].ca, REQUESTS))
    assert (ok, len(refused)) == (ADMITTED, REQUESTS - ADMITTED)
    for e in refused:
        assert e.status_code == 429 and e.code == "insufficient_quota"
        assert e.response.headers["x-should-retry"] == "false"
    assert upstream.hits["/v1/chat/completions"] == ADMITTED
    assert len(upstream.billed) == ADMITTED and fake_bill_micro(upstream) == ADMITTED * cost
    ledger = open_store(str(db))
    try:
        rows = ledger.query("SELECT state, decision, reserved_micro, cost_micro FROM requests")
        totals = ledger.window_totals("global", "")
        claims = ledger.query("SELECT coalesce(sum(amount), 0) AS s FROM claims WHERE state = 'settled'")
    finally:
        ledger.close()
    settled = [r for r in rows if r["state"] == "settled"]
    assert totals.held == 0
    assert totals.settled == ADMITTED * cost == cap - (cost - 1)
    assert [(r["reserved_micro"], r["cost_micro"]) for r in settled] == [(cost, cost)] * ADMITTED
    assert totals.settled == claims[0]["s"]  # the running totals reconcile with their claims
    assert len(rows) == REQUESTS
    assert sum(1 for r in rows if r["decision"] == "refused") == REQUESTS - ADMITTED
