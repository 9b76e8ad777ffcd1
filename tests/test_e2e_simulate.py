"""End to end: a session recorded with `mitmdump -w` through spendfuse, then `spendfuse simulate`
over the recording. Under the same rules the simulation gives exactly the ledger the live run
produced (every request's state and cost); under tighter rules it names the refusals they make."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import openai
from mitmproxy import io

from governance import cli
from governance.ledger import Ledger
from tests.conftest import TEST_PRICES, write_rules
from tests.test_e2e import rows

REQUESTS = 1000
MILLION = Decimal(1_000_000)


def _provider_bill(billed: list[dict]) -> Decimal:
    """The fake provider's own bill at the tests' gpt-4o prices, summed exactly."""
    price = TEST_PRICES["gpt-4o"]
    return sum(
        (
            Decimal(b["input_tokens"]) * Decimal(price["input_mtok"])
            + Decimal(b["output_tokens"]) * price["output_mtok"]
        )
        / MILLION
        for b in billed
    )


def _as_sent(recorded: Path, out: Path) -> None:
    """The recording as a deployment would have made it: the test harness (loaded after
    spendfuse) points every flow at the fake upstream on loopback; point them back at the host
    the client asked for."""
    with recorded.open("rb") as f, out.open("wb") as g:
        writer = io.FlowWriter(g)
        for flow in io.FlowReader(f).stream():
            asked = flow.request.host_header or flow.request.host
            flow.request.scheme, flow.request.port = "https", 443
            flow.request.host = asked
            flow.request.host_header = asked
            writer.add(flow)


def _simulate(capsys, flows: Path, rules: Path, *extra: str) -> dict:
    capsys.readouterr()
    assert cli.main(["simulate", str(flows), "--rules", str(rules), "--format", "json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def _session(client: openai.OpenAI, upstream) -> None:
    """Sequential requests of three kinds with varied usage; the budget runs out part way."""
    for i in range(REQUESTS):
        upstream.knobs.prompt_tokens, upstream.knobs.completion_tokens = 11 + i % 7, 7 + i % 5
        messages = [{"role": "user", "content": f"request {i}"}]
        try:
            if i % 3 == 0:
                client.chat.completions.create(model="gpt-4o", max_tokens=20, messages=messages)
            elif i % 3 == 1:
                for _ in client.chat.completions.create(
                    model="gpt-4o", max_tokens=20, stream=True, messages=messages
                ):
                    pass
            else:
                client.responses.create(model="gpt-4o", input=f"request {i}", max_output_tokens=20)
        except openai.RateLimitError:
            pass  # the budget's refusal (429, x-should-retry: false)


def test_simulating_a_recorded_session_gives_the_live_ledger(start, client_env, upstream, tmp_path, capsys):
    # Sized so that the budget runs out before the session ends: the last requests are refused.
    rules = write_rules(tmp_path / "rules.yaml", budgets=[{"name": "global", "limit_usd": 0.085}])
    recorded, flows = tmp_path / "recorded.mitm", tmp_path / "session.mitm"
    proxy = start(rules=rules, extra=("-w", str(recorded)))
    client_env(proxy)
    _session(openai.OpenAI(max_retries=0), upstream)
    live = rows(tmp_path / "ledger.sqlite")
    proxy.stop()
    _as_sent(recorded, flows)

    settled = [r for r in live if r["state"] == "settled"]
    refused = [r for r in live if r["state"] == "refused"]
    assert len(live) == REQUESTS and len(refused) > 50 and len(settled) == upstream.total_hits
    live_cost = {r["id"]: (r["cost_micro"], r["cost_submicro"]) for r in settled}

    sim_ledger = tmp_path / "simulated.sqlite"
    report = _simulate(capsys, flows, rules, "--ledger", str(sim_ledger))
    ledger = Ledger.open(sim_ledger)
    try:
        simulated = ledger.query("SELECT * FROM requests")
    finally:
        ledger.close()
    # Every request ends as it did live: the same ones settled, at the same cost to the
    # sub-micro-dollar, and the same ones refused, by the same rule.
    assert {
        r["id"]: (r["cost_micro"], r["cost_submicro"]) for r in simulated if r["state"] == "settled"
    } == live_cost
    assert {r["id"]: r["rule"] for r in simulated if r["state"] == "refused"} == {
        r["id"]: r["rule"] for r in refused
    }
    provider_bill = _provider_bill(list(upstream.billed))
    assert Decimal(report["spent_usd"]) == Decimal(report["billed_usd"]) == provider_bill
    assert report["flows"] == REQUESTS and report["unreadable"] == [] and report["charged_unanswered"] == 0
    assert (report["admitted"], report["refused"]) == (len(settled), len(refused))
    # The recording cost what the provider billed: refused requests never ran.
    assert Decimal(report["recorded_cost_usd"]) == provider_bill
    assert Decimal(report["reserved_for_billed_usd"]) >= provider_bill

    # A tighter budget: it runs out earlier, and the report says when and what it refused.
    tight = write_rules(tmp_path / "tight.yaml", budgets=[{"name": "global", "limit_usd": 0.03}])
    tighter = _simulate(capsys, flows, tight)
    assert tighter["refused"] > len(refused) and Decimal(tighter["spent_usd"]) <= Decimal("0.03")
    (runs_out,) = tighter["refusals"]
    assert runs_out["rule"] == "budget:global" and runs_out["refused"] == tighter["refused"]
    first_live_refusal = min(datetime.fromisoformat(r["created_at"]) for r in refused)
    assert datetime.fromisoformat(runs_out["first_refused"]) < first_live_refusal


def test_a_flow_that_cannot_be_read_is_named_and_counted(tmp_path, capsys, start, client_env, upstream):
    rules = write_rules(tmp_path / "rules.yaml")
    recorded, flows = tmp_path / "recorded.mitm", tmp_path / "session.mitm"
    proxy = start(rules=rules, extra=("-w", str(recorded)))
    client_env(proxy)
    client = openai.OpenAI(max_retries=0)
    for i in range(3):
        client.chat.completions.create(
            model="gpt-4o", max_tokens=20, messages=[{"role": "user", "content": str(i)}]
        )
    proxy.stop()
    _as_sent(recorded, flows)
    data = flows.read_bytes()
    flows.write_bytes(data + data[:100])  # and the first flow's first bytes: a file that breaks off
    report = _simulate(capsys, flows, rules)
    assert report["admitted"] == 3
    (broken,) = report["unreadable"]
    assert broken["flow"] == "#4" and "cannot be read past flow 3" in broken["reason"]
