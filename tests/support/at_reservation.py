"""Answers that cost exactly their reservation, for tests that size a cap to a number of requests.

With every answer billed at its worst case (the whole output cap, and the input the proxy
reserved), no settlement frees room: a cap of N reservations plus less than one more admits
exactly N requests, whatever the timing."""

from __future__ import annotations

import ssl
from decimal import Decimal
from pathlib import Path

import openai

from governance.ledger import Ledger
from tests.conftest import TEST_PRICES
from tests.support.fake_upstream import Upstream

MAX_TOKENS = 1000
PROMPT = [{"role": "user", "content": "one of many identical requests"}]


def served_cost_micro(prompt_tokens: int, completion_tokens: int) -> int:
    """Usage priced here at the tests' gpt-4o prices, independently of spendfuse's pricing code."""
    price = TEST_PRICES["gpt-4o"]
    usd = (
        Decimal(prompt_tokens) * Decimal(price["input_mtok"])
        + Decimal(completion_tokens) * Decimal(price["output_mtok"])
    ) / Decimal(1_000_000)
    return int((usd * 1_000_000).to_integral_value(rounding="ROUND_CEILING"))


def reserved_input_tokens(start, tmp_path: Path, *, user: str | None = None, **sets) -> int:
    """The input tokens a proxy reserves for one request of the test's shape, measured through a
    proxy of its own on a ledger of its own (as `user:user-secret` when given). Its reservation
    must be that input plus the whole output cap, at the test's prices."""
    db = tmp_path / "calibration.sqlite"
    proxy = start(db=db, **sets)
    host = proxy.url.removeprefix("http://")
    client = openai.OpenAI(
        api_key="sk-test",
        max_retries=0,
        http_client=openai.DefaultHttpxClient(
            proxy=f"http://{user}@{host}" if user else proxy.url,
            verify=ssl.create_default_context(cafile=str(proxy.ca)),
        ),
    )
    client.chat.completions.create(model="gpt-4o", max_tokens=MAX_TOKENS, messages=PROMPT)
    client.close()
    proxy.stop()
    ledger = Ledger.open(db)
    try:
        [row] = ledger.query("SELECT est_input_tokens, reserved_micro FROM requests")
    finally:
        ledger.close()
    assert row["reserved_micro"] == served_cost_micro(row["est_input_tokens"], MAX_TOKENS)
    return row["est_input_tokens"]


def bill_at_reservation(upstream: Upstream, input_tokens: int) -> int:
    """Make every answer cost exactly its reservation; return that cost in µ$."""
    upstream.reset()
    upstream.knobs.prompt_tokens = input_tokens
    upstream.knobs.output_at_cap = True
    upstream.knobs.delay_s = 0.5  # keep every granted request in flight while the rest arrive
    return served_cost_micro(input_tokens, MAX_TOKENS)


def fake_bill_micro(upstream: Upstream) -> int:
    """What the fake upstream billed, priced here."""
    return sum(served_cost_micro(b["input_tokens"], b["output_tokens"]) for b in upstream.billed)
