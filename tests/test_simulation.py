"""`governance.simulation`: recorded requests through the rules, in time order, over a ledger.

The oracle is arithmetic at the rules' prices ($1 in, $10 out per 1M tokens of gpt-4o), not the
pricing code."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from governance import policy
from governance.engine import Engine
from governance.errors import RequestParseError
from governance.gate import Incoming
from governance.identity import Credentials
from governance.ledger import Ledger
from governance.scopes import secret_hash
from governance.settlement import ResponseFacts
from governance.simulation import Recorded, Simulation, Unreadable
from governance.types import RequestLine, Usage

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
PATH = "/v1/chat/completions"


def usd(input_tokens: int, output_tokens: int) -> Decimal:
    return (Decimal(input_tokens) + 10 * Decimal(output_tokens)) / Decimal(1_000_000)


@pytest.fixture
def engine(tmp_path: Path):
    made = []

    def _make(limit: str = "1", **data) -> Engine:
        rules = {
            "multipliers": {"gpt-4o": 1},
            "model_limits": {"gpt-4o": 16384},
            "budgets": [{"limit_usd": limit}],
            "prices": {"gpt-4o": {"input_mtok": 1, "output_mtok": 10}},
            **data,
        }
        led = Ledger.open(tmp_path / f"l{len(made)}.sqlite")
        made.append(led)
        return Engine(policy.parse(rules, Path(".")), led, salt=led.salt())

    yield _make
    for led in made:
        led.close()


def chat_answer(prompt: int, completion: int) -> ResponseFacts:
    body = {"model": "gpt-4o", "usage": {"prompt_tokens": prompt, "completion_tokens": completion}}
    return ResponseFacts(200, "application/json", json.dumps(body).encode())


def record(
    flow_id: str,
    at: float,
    took: float = 1.0,
    *,
    max_tokens: int = 1000,
    answer: ResponseFacts | None = None,
    usage: Usage | None = None,
    body: object = None,
    host: str = "api.openai.com",
    reached: bool = True,
    principal: str | None = None,
    method: str = "POST",
    path: str = PATH,
) -> Recorded:
    started = T0 + timedelta(seconds=at)
    sent = (
        body
        if body is not None
        else {"model": "gpt-4o", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hi"}]}
    )
    return Recorded(
        flow_id=flow_id,
        started=started,
        ended=started + timedelta(seconds=took),
        incoming=Incoming(method, path, 443, (("url", host), ("host", host)), has_body=method == "POST"),
        creds=Credentials(),
        line=RequestLine(path, (("host", host),)),
        body=sent,
        response=answer,
        usage=usage,
        reached=reached,
        principal=principal,
    )


def ledger_rows(engine: Engine) -> dict[str, dict]:
    return {r["id"]: r for r in engine.ledger.query("SELECT * FROM requests")}


def test_each_request_settles_to_its_recorded_usage(engine):
    sim = Simulation(engine())
    report = sim.run([record("a", 0, answer=chat_answer(100, 20)), record("b", 5, usage=Usage(50, 10))])
    assert report.spent == report.billed == report.recorded_cost == usd(100, 20) + usd(50, 10)
    assert (report.flows, report.metered, report.admitted, report.refused_ids) == (2, 2, 2, [])
    rows = ledger_rows(sim.engine)
    assert {k: (r["state"], r["input_tokens"], r["output_tokens"]) for k, r in rows.items()} == {
        "a": ("settled", 100, 20),
        "b": ("settled", 50, 10),
    }
    assert report.reserved_billed > report.billed  # reserved at the worst case


def test_requests_that_overlapped_hold_against_each_other_and_later_ones_see_the_settlement(engine):
    # Each reserves 1000 output tokens ($0.01 and a little input): two fit under $0.025, three do not.
    answer = chat_answer(10, 5)
    overlapping = [
        record("a", 0, 10, answer=answer),
        record("b", 1, 10, answer=answer),
        record("c", 2, 10, answer=answer),
    ]
    report = Simulation(engine("0.025")).run(overlapping)
    assert report.refused_ids == [("c", "budget:global")]
    # The same three one after another: each settles (at $0.00006) before the next is admitted.
    in_turn = [
        record("a", 0, 1, answer=answer),
        record("b", 2, 1, answer=answer),
        record("c", 4, 1, answer=answer),
    ]
    assert Simulation(engine("0.025")).run(in_turn).refused_ids == []


def test_records_are_admitted_in_the_order_they_were_sent_not_the_order_saved(engine):
    answer = chat_answer(10, 5)
    # Saved in the order they ended: the long request "a" was sent first but ended last.
    saved = [
        record("c", 3, 1, answer=answer),
        record("b", 1, 10, answer=answer),
        record("a", 0, 12, answer=answer),
    ]
    report = Simulation(engine("0.025")).run(saved)
    assert report.refused_ids == [("c", "budget:global")]  # "a" and "b" held when "c" came
    # Admitted as read (no reordering), "a" would have come last and been the one refused.
    assert Simulation(engine("0.025"), reorder_window=0).run(saved).refused_ids == [("a", "budget:global")]


def test_an_admitted_request_with_no_recorded_answer_is_charged_its_reservation(engine):
    sim = Simulation(engine())
    report = sim.run([record("refused-live", 0, max_tokens=100), record("never-sent", 5, reached=False)])
    rows = ledger_rows(sim.engine)
    assert rows["refused-live"]["state"] == "settled" and rows["never-sent"]["state"] == "released"
    held = rows["refused-live"]["reserved_micro"]
    assert rows["refused-live"]["cost_micro"] == held and held >= 100 * 10
    assert report.charged_unanswered == 2 and report.spent * 1_000_000 == held
    assert report.recorded_cost == 0 and report.billed == 0


def test_what_cannot_be_read_is_refused_or_counted_never_dropped(engine):
    sim = Simulation(engine())
    unreadable = Unreadable("#7", "the file cannot be read past flow 6")
    report = sim.run(
        [
            record("bad-json", 0, body=RequestParseError("the body is not JSON")),
            record("no-model", 1, body={"messages": []}),
            record("elsewhere", 2, host="example.com"),
            record("models", 3, method="GET", path="/v1/models"),
            unreadable,
        ]
    )
    assert report.flows == 5 and report.unreadable == [unreadable]
    # A chat request to a host that is not a known LLM API is refused (the rules' unknown_llm_hosts).
    assert [r for _, r in report.refused_ids] == ["request_parse", "request_parse", "unknown_llm_host"]
    assert report.not_metered == 1 and report.metered == 2


def test_a_flow_saved_twice_is_two_requests(engine):
    sim = Simulation(engine())
    answer = chat_answer(10, 5)
    report = sim.run([record("a", 0, answer=answer), record("a", 5, answer=answer)])
    assert report.admitted == 2 and len(ledger_rows(sim.engine)) == 2
    assert report.spent == 2 * usd(10, 5)


def test_the_principal_a_spendfuse_recording_noted_stands_in_for_its_stripped_key(engine):
    v2 = {
        "version": 2,
        "budgets": [{"id": "team-a", "max_usd": "0.015"}],
        "keys": [{"id": "team-a", "secret_sha256": secret_hash("sk-team-a"), "budgets": ["team-a"]}],
    }
    sim = Simulation(engine(**v2))
    answer = chat_answer(10, 5)
    noted = [record(x, i, 10, answer=answer, principal="key:team-a") for i, x in enumerate("ab")]
    report = sim.run([*noted, record("c", 2, 10, answer=answer)])
    # The key's own budget fits one reservation of $0.01, not two; "c" names no key.
    assert report.refused_ids == [("b", "budget:team-a@key=team-a")]
    rows = ledger_rows(sim.engine)
    assert rows["a"]["principal"] == "key:team-a" and rows["c"]["state"] == "settled"


def test_a_refusal_report_says_when_each_rule_first_refused(engine):
    answer = chat_answer(10, 5)
    # Five overlapping requests, each holding a little over $0.01: two fit under $0.0201.
    report = Simulation(engine("0.0201")).run([record(str(i), i, 10, answer=answer) for i in range(5)])
    assert [f for f, _ in report.refused_ids] == ["2", "3", "4"]
    ran_out = report.refusals["budget:global"]
    assert (ran_out.first, ran_out.refused) == (T0 + timedelta(seconds=2), 3)
    out = report.as_json()
    assert (
        out["refused"] == 3 and out["refusals"][0]["first_refused"] == (T0 + timedelta(seconds=2)).isoformat()
    )
    assert Decimal(out["spent_usd"]) == 2 * usd(10, 5)


def test_memory_stays_bounded_however_long_the_recording(engine):
    """The reorder window and the open requests are all a simulation keeps of the flows it read."""
    import tracemalloc

    sim = Simulation(engine(), reorder_window=64)

    def reads(n: int):
        for i in range(n):
            yield record(f"r{i}", i, method="GET", path="/v1/models")

    tracemalloc.start()
    try:
        for rec in reads(2_000):
            sim.feed(rec)
        _, after_few = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for rec in reads(20_000):
            sim.feed(rec)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(sim._waiting) == 64 and sim.finish().not_metered == 22_000
    # 10 times the flows, and the peak is not 10 times the memory (the ids seen are kept: a few MB).
    assert peak < 4 * after_few + 8_000_000
