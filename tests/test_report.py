"""`spendfuse report --format csv|json`: the ledger's figures as data, exact, on both stores."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime

import pytest

from governance import cli
from governance.ledger import RequestRecord
from governance.store.opening import open_store
from governance.types import Claim, Usage


# SQLite only: a PostgreSQL ledger stamps requests with the database's clock, not the `now`
# given, so days cannot be seeded there. The SQL is shared (governance/store/reports.py).
@pytest.fixture
def ledger_db(tmp_path) -> str:
    return str(tmp_path / "l.sqlite")


def seed(db: str) -> None:
    """Three principals over two days; one cost below a micro-dollar's rest; a refusal."""
    led = open_store(db)
    c = [Claim("global", "", "never", 10_000_000, 200_000, "budget:global")]
    day1, day2 = datetime(2026, 11, 21, 9, tzinfo=UTC), datetime(2026, 11, 22, 9, tzinfo=UTC)
    for rid, who, model, when, micro, rest in (
        ("a", "key:alice", "gpt-4o", day1, 120_000, 0),
        ("b", "key:bob", "gpt-4o", day1, 30_000, 500_000_000_000),  # $0.0300005
        ("c", "key:alice", "claude-sonnet-4-5", day2, 70_000, 0),
    ):
        led.reserve(RequestRecord(rid, who, "openai", "chat", model), c, 200_000, when)
        led.settle(rid, micro, when, outcome="usage", usage=Usage(100, 10), cost_submicro=rest)
    led.record_refusal(RequestRecord("d", "key:bob"), day2, rule="budget:global", reason="full")
    led.close()


def test_json_export(ledger_db, capsys):
    seed(ledger_db)
    assert cli.main(["report", "--db", ledger_db, "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["v"] == 1
    assert out["by_principal"] == [
        {"principal": "key:alice", "requests": 2, "cost_usd": "0.190000"},
        {"principal": "key:bob", "requests": 1, "cost_usd": "0.0300005"},
    ]
    assert out["by_principal_day"] == [
        {"day": "2026-11-21", "principal": "key:alice", "requests": 1, "cost_usd": "0.120000"},
        {"day": "2026-11-21", "principal": "key:bob", "requests": 1, "cost_usd": "0.0300005"},
        {"day": "2026-11-22", "principal": "key:alice", "requests": 1, "cost_usd": "0.070000"},
    ]
    assert out["by_day"] == [
        {"day": "2026-11-21", "requests": 2, "cost_usd": "0.1500005"},
        {"day": "2026-11-22", "requests": 1, "cost_usd": "0.070000"},
    ]
    assert [(r["model"], r["requests"], r["cost_usd"]) for r in out["by_model"]] == [
        ("gpt-4o", 2, "0.1500005"),
        ("claude-sonnet-4-5", 1, "0.070000"),
    ]
    assert out["refusals"] == [{"rule": "budget:global", "refusals": 1}]


def test_csv_export(ledger_db, capsys):
    seed(ledger_db)
    assert cli.main(["report", "--db", ledger_db, "--format", "csv", "--since", "2026-11-22"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    by_table = {(r["table"], r["principal"] or r["model"] or r["rule"] or r["day"]): r for r in rows}
    assert [r["table"] for r in rows] == [
        "by_model",
        "by_day",
        "by_principal",
        "by_principal_day",
        "refusals",
    ]
    assert by_table[("by_principal", "key:alice")]["cost_usd"] == "0.070000"
    assert by_table[("by_model", "claude-sonnet-4-5")]["input_tokens"] == "100"
    assert by_table[("refusals", "budget:global")]["refusals"] == "1"
    assert ("by_principal", "key:bob") not in by_table  # bob spent nothing since then
    assert len(rows) == 5  # by_model, by_day, by_principal, by_principal_day, refusals: one row each
