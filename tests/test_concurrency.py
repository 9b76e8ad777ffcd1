"""Never over the cap, for real: many simultaneous requests through one proxy, and through
several proxy processes sharing one ledger file."""

from __future__ import annotations

import asyncio
import ssl
from decimal import Decimal
from pathlib import Path

import openai
import pytest

from governance.ledger import Ledger
from tests.conftest import TEST_PRICES

REQUESTS = 64
MAX_TOKENS = 1000
# Worst case per request: 1000 output tokens at $10/M = $0.01 plus a few input tokens, so a
# $0.105 cap affords about ten reservations at once.
CAP = Decimal("0.105")


def served_cost_micro(prompt_tokens: int, completion_tokens: int) -> int:
    """The fake upstream's fixed usage priced here, independently of spendfuse's pricing code."""
    price = TEST_PRICES["gpt-4o"]
    usd = (
        Decimal(prompt_tokens) * Decimal(price["input_mtok"])
        + Decimal(completion_tokens) * Decimal(price["output_mtok"])
    ) / Decimal(1_000_000)
    return int((usd * 1_000_000).to_integral_value(rounding="ROUND_CEILING"))


async def fire(urls: list[str], ca: Path, n: int) -> tuple[int, int, list[openai.APIStatusError]]:
    """Send n chat requests at once, spread over the proxies; count 200s and refusals."""
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
        return await client.chat.completions.create(
            model="gpt-4o", max_tokens=MAX_TOKENS, messages=[{"role": "user", "content": f"request {i}"}]
        )

    results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    for c in clients:
        await c.close()
    ok = sum(1 for r in results if not isinstance(r, BaseException))
    refused = [r for r in results if isinstance(r, openai.APIStatusError)]
    others = [r for r in results if isinstance(r, BaseException) and not isinstance(r, openai.APIStatusError)]
    assert not others, others
    return ok, len(refused), refused


def check_ledger(db: Path, ok: int, upstream_hits: int) -> None:
    ledger = Ledger.open(db)
    try:
        rows = ledger.query("SELECT state, decision, cost_micro FROM requests")
        totals = ledger.window_totals("global", "")
        claims = ledger.query(
            "SELECT coalesce(sum(amount_micro), 0) AS s FROM claims WHERE state = 'settled'"
        )
    finally:
        ledger.close()
    settled = [r for r in rows if r["state"] == "settled"]
    cap_micro = int(CAP * 1_000_000)
    # Never over the cap: spend recorded is at most the cap, and nothing is left held.
    assert totals.held_micro == 0
    assert totals.settled_micro <= cap_micro
    # Every request the upstream served is in the ledger, priced independently.
    assert upstream_hits == ok == len(settled)
    assert totals.settled_micro == ok * served_cost_micro(11, 7)
    # The running totals reconcile with the claim rows they summarise.
    assert totals.settled_micro == claims[0]["s"]
    assert len(rows) == REQUESTS
    assert sum(1 for r in rows if r["decision"] == "refused") == REQUESTS - ok


@pytest.mark.parametrize("processes", [1, 3])
def test_simultaneous_requests_never_pass_the_cap(processes, start, upstream, tmp_path):
    upstream.knobs.delay_s = 0.5  # keep every granted request in flight while the rest arrive
    db = tmp_path / "shared.sqlite"
    proxies = [start(spendfuse_budget=str(CAP), db=db, launcher=(i == 1)) for i in range(processes)]
    ok, refused, errors = asyncio.run(fire([p.url for p in proxies], proxies[0].ca, REQUESTS))
    assert ok + refused == REQUESTS
    # About ten fit at once; a few more may get in as early ones settle at their real cost.
    assert 10 <= ok < REQUESTS
    for e in errors:
        assert e.status_code == 429 and e.code == "insufficient_quota"
        assert e.response.headers["x-should-retry"] == "false"
    check_ledger(db, ok, upstream.total_hits)
