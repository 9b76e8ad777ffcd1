"""`spendfuse report`: rich tables by model, day, principal and budget scope, and `--chart`."""

from __future__ import annotations

from datetime import UTC, datetime

import yaml

from governance import cli
from governance.ledger import RequestRecord
from governance.types import Claim, Usage
from tests.test_cli import ledger_db, open_store  # noqa: F401 - the fixture, on both stores

RULES = {
    "version": 2,
    "budgets": [{"id": "tb", "max_usd": "0.25"}, {"id": "kb", "max_usd": "0.5"}],
    "teams": [{"id": "t", "budgets": ["tb"]}],
    "keys": [{"id": "alice", "team": "t", "budgets": ["kb"], "listeners": ["9001"]}],
}


def seed(db: str) -> None:
    """Two requests of key alice (team t): each claims on the key's and the team's budget."""
    led = open_store(db)
    for rid, hour, micro in (("a", 9, 100_000), ("b", 10, 50_000)):
        when = datetime(2026, 11, 21, hour, tzinfo=UTC)
        claims = [
            Claim("key=alice|kb", "", "never", 500_000, 100_000, "budget:kb@key=alice"),
            Claim("team=t|tb", "", "never", 250_000, 100_000, "budget:tb@team=t"),
        ]
        held = led.reserve(RequestRecord(rid, "key:alice", "openai", "chat", "gpt-4o"), claims, 100_000, when)
        assert held.granted, held
        led.settle(rid, micro, when, outcome="usage", usage=Usage(100, 10))
    led.close()


def test_the_report_has_a_table_per_budget_scope_and_a_chart(ledger_db, tmp_path, capsys):  # noqa: F811
    seed(ledger_db)
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(RULES))
    out_html = tmp_path / "spend.html"
    assert cli.main(["report", "--db", ledger_db, "--rules", str(rules), "--chart", str(out_html)]) == 0
    out = capsys.readouterr().out
    budgets = out.split("spend by budget")[1].split("refusals by rule")[0]
    rows = {ln.split()[0]: ln.split()[1:] for ln in budgets.splitlines()[1:] if ln.strip() and "=" in ln}
    assert rows["team=t"] == ["tb", "never", "resets", "2", "$0.15"]
    assert rows["key=alice"] == ["kb", "never", "resets", "2", "$0.15"]
    principal = next(
        ln for ln in out.split("spend by principal")[1].splitlines() if ln.startswith("key:alice")
    )
    assert principal.split() == ["key:alice", "2", "$0.15"]
    html = out_html.read_text()
    # The series as written: each budget's running spend, and its limit.
    assert '"name":"tb on team=t"' in html and '"name":"limit of tb on team=t"' in html
    assert '"y":[0.1,0.15]' in html and '"y":[0.25,0.25]' in html and '"y":[0.5,0.5]' in html
