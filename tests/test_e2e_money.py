"""End to end: many small requests through a real mitmdump; the ledger records exactly what the
fake provider bills, not each request's cost rounded up to a micro-dollar."""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal

import openai

from governance import cli, money
from governance.ledger import Ledger
from tests.conftest import write_rules
from tests.test_e2e import rows

MILLION = Decimal(1_000_000)
# Published-style prices with sub-micro-dollar token costs: $0.15 and $0.60 per million.
PRICES = {"gpt-4o": {"input_mtok": "0.15", "output_mtok": "0.6"}}
REQUESTS = 90


def bill(billed: list[dict]) -> Decimal:
    """The fake provider's own bill: its usage counts at the prices above, summed exactly."""
    price = PRICES["gpt-4o"]
    return sum(
        (
            Decimal(b["input_tokens"]) * Decimal(price["input_mtok"])
            + Decimal(b["output_tokens"]) * Decimal(price["output_mtok"])
        )
        / MILLION
        for b in billed
    )


def test_many_small_requests_record_the_providers_bill(start, client_env, upstream, tmp_path, capsys):
    proxy = start(rules=write_rules(tmp_path / "rules.yaml", prices=PRICES))
    client_env(proxy)
    client = openai.OpenAI(max_retries=0)
    for i in range(REQUESTS):
        # Varied usage, so each cost has its own rest below a micro-dollar (1.65 µ$ to 7.5 µ$).
        upstream.knobs.prompt_tokens, upstream.knobs.completion_tokens = 11 + i % 7, 7 + i % 5
        kind = i % 3
        if kind == 0:
            client.chat.completions.create(
                model="gpt-4o", max_tokens=20, messages=[{"role": "user", "content": "hi"}]
            )
        elif kind == 1:
            for _ in client.chat.completions.create(
                model="gpt-4o", max_tokens=20, stream=True, messages=[{"role": "user", "content": "hi"}]
            ):
                pass
        else:
            client.responses.create(model="gpt-4o", input="hi", max_output_tokens=20)
    billed = list(upstream.billed)
    assert len(billed) == upstream.total_hits == REQUESTS
    expected = bill(billed)
    rounded_up = sum((bill([b]) * MILLION).to_integral_value(ROUND_CEILING) / MILLION for b in billed)
    assert rounded_up - expected > Decimal("0.00003")  # what rounding each cost up would record

    db = tmp_path / "ledger.sqlite"
    recorded = rows(db)
    assert len(recorded) == REQUESTS and {r["state"] for r in recorded} == {"settled"}
    led = Ledger.open(db)
    try:
        t = led.window_totals("global", "")
        [by_rows] = led.query(f"SELECT {money.sum_sql('cost_micro', 'cost_submicro', 'c')} FROM requests")
    finally:
        led.close()
    assert t.held == 0
    counter = money.to_usd(t.settled, t.settled_rest)
    assert abs(counter - expected) <= Decimal("0.000001") and counter == expected
    assert money.summed(by_rows, "c") == expected
    # What the operator sees: the spend as billed (to the micro-dollar shown).
    assert cli.main(["status", "--db", str(db), "--rules", str(tmp_path / "rules.yaml")]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("global"))
    assert Decimal(line.split()[5].lstrip("$")) == expected.quantize(Decimal("0.000001"))
