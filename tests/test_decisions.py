"""Decision records as a flow shows them: versioned facts, a comment and a mark."""

from decimal import Decimal

from governance import decisions
from governance.decisions import Record, Settled


def test_a_settlement_adds_its_cost_to_the_admissions_facts():
    admitted = decisions.flow_facts(
        Record(
            "admitted",
            request_id="r1",
            principal="key:a",
            model="gpt-4o",
            rule="budget:g",
            reserved=Decimal("0.0012"),
        )
    )
    assert admitted == {
        "v": decisions.SCHEMA_VERSION,
        "decision": "admitted",
        "request_id": "r1",
        "principal": "key:a",
        "model": "gpt-4o",
        "rule": "budget:g",
        "reserved_usd": "0.001200",
    }
    done = Settled("released", "upstream_error_500")
    rec = Record("released", request_id="r1", cost=done.charged(Decimal("0.0012")), outcome=done.outcome)
    facts = decisions.flow_facts(rec, admitted)
    assert (
        facts["decision"] == "admitted" and facts["settled"] == "released" and facts["cost_usd"] == "0.000000"
    )
    assert decisions.comment(facts) == (
        "spendfuse: admitted; rule budget:g; model gpt-4o; reserved $0.001200; "
        "released $0.000000 (upstream_error_500)"
    )


def test_a_charged_hold_costs_its_reservation_and_sub_micro_costs_stay_exact():
    assert Settled("charged", "no_usage").charged(Decimal("0.5")) == Decimal("0.5")
    assert Settled("settled", "usage", Decimal("0.0000975")).charged(Decimal("0.5")) == Decimal("0.0000975")
    assert decisions.usd_text(Decimal("0.0000975")) == "0.0000975"
    assert decisions.usd_text(Decimal("1E-7")) == "0.0000001"


def test_dry_run_has_its_own_mark():
    facts = decisions.flow_facts(Record("dry_run", rule="budget:g", code="budget_exceeded"))
    assert decisions.MARKS[facts["decision"]] == ":large_orange_diamond:"
    assert decisions.comment(facts) == "spendfuse: dry run; rule budget:g"
