"""End to end: the Prometheus endpoint of a real mitmdump, scraped during a session, shows the
figures the ledger holds: requests by decision, spend and reservations in USD, reservations open
while a stream is in flight, refusals by kind, ledger latency, rules reloads. Exposed beyond
loopback, it needs a bearer token, and refuses a scrape without it."""

from __future__ import annotations

import time
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from governance import money
from governance.ledger import Ledger
from tests.support.gateway import free_port
from tests.test_e2e_decision_log import session
from tests.test_e2e_flowmarks import CHAT, REAL_AN, REAL_OA, VIRTUAL, marked_rules
from tests.test_e2e_governance import ledger_rows

TOKEN = "scrape-token-7f3a"


def scrape(port: int, token: str | None = None) -> dict[str, dict[tuple, float]]:
    """name -> {sorted label items: value} of every sample."""
    headers = {"authorization": f"Bearer {token}"} if token else {}
    r = httpx.get(f"http://127.0.0.1:{port}/metrics", headers=headers, timeout=10)
    r.raise_for_status()
    out: dict[str, dict[tuple, float]] = defaultdict(dict)
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[s.name][tuple(sorted(s.labels.items()))] = s.value
    return out


def total(samples: dict[tuple, float], **match: str) -> float:
    return sum(v for labels, v in samples.items() if set(match.items()) <= set(labels))


def close(a: float, b: Decimal) -> bool:
    return abs(Decimal(repr(a)) - b) <= Decimal("1e-12")


def wait_for(port: int, name: str, want: float, **match: str) -> dict:
    deadline = time.monotonic() + 10
    while True:
        found = scrape(port)
        if total(found.get(name, {}), **match) >= want or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@pytest.mark.expect_errors("the edited rules were NOT applied")
def test_a_scrape_during_a_session_matches_the_ledger(start, upstream, client_env, monkeypatch, tmp_path):
    port = free_port()
    upstream.knobs.accepted_keys = frozenset({REAL_OA, REAL_AN})
    rules_file = marked_rules(tmp_path)
    proxy = start(
        rules=rules_file,
        env={"OA_REAL": REAL_OA, "AN_REAL": REAL_AN},
        spendfuse_metrics=str(port),
    )
    client_env(proxy)
    monkeypatch.setenv("OPENAI_API_KEY", VIRTUAL)
    oa = openai.OpenAI(max_retries=0)
    db = tmp_path / "ledger.sqlite"

    # A stream in flight: its reservation is open, and the ledger holds the same amount.
    upstream.knobs.chunk_delay_s = 0.3
    stream = oa.chat.completions.create(**CHAT, stream=True)
    next(iter(stream))
    during = scrape(port)
    led = Ledger.open(db)
    try:  # not `ledger_rows`, which waits for holds to settle
        [held] = led.query("SELECT reserved_micro FROM requests WHERE state = 'held'")
    finally:
        led.close()
    assert during["spendfuse_reservations_open"][()] == 1
    assert close(during["spendfuse_reservations_open_usd"][()], Decimal(held["reserved_micro"]) / 1_000_000)
    for _ in stream:
        pass
    upstream.knobs.chunk_delay_s = 0.0

    session(oa, upstream)
    after = scrape(port)
    ledger = ledger_rows(
        db, "SELECT state, reserved_micro, cost_micro, cost_submicro, rule, model, principal FROM requests"
    )
    admitted = [r for r in ledger if r["state"] in ("settled", "released")]
    assert len(admitted) == 4 and len([r for r in ledger if r["state"] == "refused"]) == 2
    spent = sum((money.to_usd(r["cost_micro"] or 0, r["cost_submicro"] or 0) for r in admitted), Decimal(0))
    reserved = sum((Decimal(r["reserved_micro"]) / 1_000_000 for r in admitted), Decimal(0))
    assert spent == sum((Decimal(b["usd"]) for b in upstream.bills), Decimal(0))
    assert close(total(after["spendfuse_spend_usd_total"]), spent)
    assert close(total(after["spendfuse_reserved_usd_total"]), reserved)
    assert after["spendfuse_reservations_open"][()] == 0 and close(
        after["spendfuse_reservations_open_usd"][()], Decimal(0)
    )
    requests = after["spendfuse_requests_total"]
    assert total(requests, decision="admitted") == 4
    assert total(requests, decision="admitted", principal="key:agent", model="gpt-4o", rule="budget:all") == 4
    assert (
        total(requests, decision="refused") == 2
        and total(requests, decision="refused", rule="budget:all") == 1
    )
    assert total(requests, decision="unmetered_allowed") == 1 and total(requests, decision="free") == 1
    assert after["spendfuse_refusals_total"] == {(("kind", "quota"),): 1.0, (("kind", "forbidden"),): 1.0}
    assert total(after["spendfuse_settlements_total"], result="settled") == 3
    assert total(after["spendfuse_settlements_total"], result="released") == 1
    assert total(after["spendfuse_ledger_seconds_count"], op="admit") == 5  # 4 admitted, 1 refused by budget
    assert total(after["spendfuse_ledger_seconds_count"], op="settle") == 4
    assert total(after["spendfuse_ledger_seconds_count"], op="record_refusal") == 1
    # No secret anywhere in the exposition.
    text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert VIRTUAL not in text and REAL_OA not in text and REAL_AN not in text

    # Rules reloads, good and bad.
    data = yaml.safe_load(rules_file.read_text())
    data["budgets"][0]["max_usd"] = "0.2"
    rules_file.write_text(yaml.safe_dump(data))
    reloaded = wait_for(port, "spendfuse_rules_reloads_total", 1, result="ok")
    assert total(reloaded["spendfuse_rules_reloads_total"], result="ok") == 1
    rules_file.write_text("budgets: [")
    reloaded = wait_for(port, "spendfuse_rules_reloads_total", 1, result="failed")
    assert total(reloaded["spendfuse_rules_reloads_total"], result="failed") == 1
    proxy.stop()


def test_exposed_metrics_refuse_a_scrape_without_the_token(start, upstream, tmp_path: Path):
    port = free_port()
    start(spendfuse_metrics=f"0.0.0.0:{port}", spendfuse_metrics_token=TOKEN)
    url = f"http://127.0.0.1:{port}/metrics"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(url, headers={"authorization": TOKEN}).status_code == 401
    ok = httpx.get(url, headers={"authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and "spendfuse_reservations_open 0.0" in ok.text
    assert (
        httpx.get(f"http://127.0.0.1:{port}/other", headers={"authorization": f"Bearer {TOKEN}"}).status_code
        == 404
    )
