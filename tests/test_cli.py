from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from governance import DEFAULT_RULES, cli, money
from governance.ledger import RequestRecord
from governance.store import LedgerStore
from governance.store.opening import is_database
from governance.store.opening import open_store as _open_store
from governance.types import Claim, Usage


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_db(request, tmp_path) -> str:
    """Where the operator commands find the ledger: a SQLite file, or a PostgreSQL database URL."""
    if request.param == "sqlite":
        return str(tmp_path / "l.sqlite")
    return request.getfixturevalue("pg_server").create_db("cli")


def open_store(target: str) -> LedgerStore:
    """The ledger at `target`, with time injected (`now` as given) in either store: the seeded
    history is dated by the tests, not by the database's clock."""
    if is_database(target):
        from governance.store.postgres import PostgresStore

        return PostgresStore.open(target, db_clock=False)
    return _open_store(target)


def seed(db: str | Path) -> None:
    led = open_store(str(db))
    now = datetime(2026, 11, 21, 9, tzinfo=UTC)
    c = [Claim("global", "", "never", 1_000_000, 200_000, "budget:global")]
    led.reserve(RequestRecord("a", "p", "openai", "chat", "gpt-4o", est_input_tokens=200), c, 200_000, now)
    led.settle("a", 120_000, now, outcome="usage", usage=Usage(100, 10))
    led.reserve(RequestRecord("b", "p", "anthropic", "messages", "claude-sonnet-4-5"), c, 200_000, now)
    led.record_refusal(RequestRecord("c", "p"), now, rule="budget:global", reason="full")
    led.close()


def test_status(ledger_db, capsys):
    seed(ledger_db)
    assert cli.main(["status", "--db", ledger_db, "--rules", str(DEFAULT_RULES)]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("global"))
    assert "$1.00" in line and "$0.12" in line and "$0.20" in line and "$0.68" in line and "never" in line


def test_report(ledger_db, capsys):
    seed(ledger_db)
    led = open_store(ledger_db)
    now = datetime(2026, 11, 21, 9, tzinfo=UTC)
    c = [Claim("global", "", "never", 1_000_000, 20_000, "budget:global")]
    led.reserve(RequestRecord("d", "p", "openai", "chat", "gpt-5-search-api"), c, 20_000, now)
    led.settle(
        "d",
        10_200,
        now,
        outcome="usage",
        usage=Usage(16, 18),
        price_source="genai-prices; fees.yaml:gpt-5-search-api",
    )
    led.close()
    assert cli.main(["report", "--db", ledger_db]) == 0
    out = capsys.readouterr().out
    assert "gpt-4o" in out and "2026-11-21" in out and "budget:global" in out
    # The estimate reserved for "a" (est_input_tokens 200 via the seed) against its real input 100.
    line = next(ln for ln in out.split("input estimate")[1].splitlines() if ln.startswith("gpt-4o"))
    assert line.split()[1:] == ["1", "0.500", "0.500", "0.500", "0"]
    # Which prices came from the rules' fee table: the search model's row, and only it.
    table = out.split("prices from the rules' fee")[1].split("input estimate")[0]
    assert "gpt-5-search-api" in table and "fees.yaml:gpt-5-search-api" in table and "$0.0102" in table
    assert "gpt-4o " not in table


def test_missing_ledger_is_an_error(tmp_path, capsys):
    assert cli.main(["status", "--db", str(tmp_path / "none.sqlite")]) == 1
    assert "no ledger" in capsys.readouterr().err


def test_schema_check(capsys):
    assert cli.main(["schema", "--check"]) == 0


def test_env_prints_what_agents_need(tmp_path, capsys):
    assert cli.main(["env", "--confdir", str(tmp_path), "--port", "9999"]) == 0
    out = capsys.readouterr().out
    for name in (
        "HTTPS_PROXY=http://127.0.0.1:9999",
        "SSL_CERT_FILE=",
        "NODE_EXTRA_CA_CERTS=",
        "CODEX_CA_CERTIFICATE=",
    ):
        assert name in out
    bundle = (tmp_path / "spendfuse-ca-bundle.pem").read_text()
    assert (tmp_path / "mitmproxy-ca-cert.pem").read_text().strip() in bundle and bundle.count(
        "BEGIN CERTIFICATE"
    ) > 10


def team_rules(tmp_path: Path) -> Path:
    import yaml

    from governance import RULES_DIR

    path = tmp_path / "team.yaml"
    data = yaml.safe_load((RULES_DIR / "team.yaml").read_text())
    data["multipliers"] = str(RULES_DIR / "multipliers.yaml")
    data["model_limits"] = str(RULES_DIR / "model_limits.yaml")
    path.write_text(yaml.safe_dump(data))
    return path


def test_status_shows_every_scope_with_its_window(tmp_path, ledger_db, capsys):
    rules = team_rules(tmp_path)
    db = ledger_db
    open_store(db).close()
    assert cli.main(["status", "--db", str(db), "--rules", str(rules)]) == 0
    out = capsys.readouterr().out
    for scope in (
        "global",
        "provider=anthropic",
        "model=claude-opus-*",
        "customer=acme",
        "team=research",
        "key=alice",
    ):
        assert any(line.startswith(scope + " ") for line in out.splitlines()), scope
    alice = [ln for ln in out.splitlines() if ln.startswith("key=alice")]
    assert any("agent-daily" in ln and "$10.00" in ln and "1d" in ln for ln in alice)
    assert any("agent-pace:requests" in ln and "60" in ln for ln in alice)
    monthly = next(ln for ln in out.splitlines() if "acme-monthly" in ln)
    assert "1M (calendar)" in monthly and "T" in monthly.split()[-1]  # the next reset, as a time


def test_reset_and_topup_are_ledger_rows_with_who_and_when(tmp_path, ledger_db, capsys):
    rules = team_rules(tmp_path)
    db = ledger_db
    args = ["--db", str(db), "--rules", str(rules), "--who", "ops-anna"]
    assert cli.main(["reset", "key=alice", *args, "--note", "new sprint"]) == 0
    assert "key=alice|agent-daily" in capsys.readouterr().out
    assert cli.main(["topup", "key=ci", "2.50", *args]) == 0
    assert cli.main(["topup", "key=alice", "1", *args]) == 1  # its budget resets: nothing to top up
    assert "never reset" in capsys.readouterr().err
    assert cli.main(["reset", "team=nobody", *args]) == 1
    led = open_store(db)
    adj = led.query("SELECT counter, action, amount_micro, who, note FROM adjustments ORDER BY id")
    led.close()
    assert [(a["counter"], a["action"], a["amount_micro"], a["who"]) for a in adj] == [
        ("key=alice|agent-daily", "reset", 0, "ops-anna"),
        ("key=alice|agent-pace|requests", "reset", 0, "ops-anna"),  # (in flight is no window)
        ("key=alice|agent-pace|tokens", "reset", 0, "ops-anna"),
        ("key=ci|ci-run", "topup", 2_500_000, "ops-anna"),
    ]
    assert adj[0]["note"] == "new sprint"


def test_check_prints_problems_with_lines_and_fails(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 2\nbudgets:\n  - id: b\n    max_usd: 1\n    reset: 5 minutes\n")
    assert cli.main(["check", str(bad)]) == 1
    assert f"{bad}:5:" in capsys.readouterr().out
    assert cli.main(["check", str(DEFAULT_RULES)]) == 0
    assert capsys.readouterr().out.rstrip().endswith("ok")


def test_hash_secret(capsys):
    import hashlib

    assert cli.main(["hash-secret", "s3cret"]) == 0
    assert capsys.readouterr().out.strip() == hashlib.sha256(b"s3cret").hexdigest()


def test_import_bifrost_prints_rules_that_load_anywhere(tmp_path, capsys):
    from governance import RULES_DIR, policy

    for example in ("bifrost-values.yaml", "bifrost-config.json"):
        assert cli.main(["import-bifrost", str(RULES_DIR / "examples" / example)]) == 0
        out = capsys.readouterr().out
        saved = tmp_path / f"{example}.rules.yaml"
        saved.write_text(out)
        p = policy.load(saved)
        assert p.version == 2 and p.keys and p.budgets


def test_import_bifrost_names_what_it_cannot_translate(tmp_path, capsys):
    f = tmp_path / "config.json"
    f.write_text('{"governance": {"routing_rules": [{"id": "r"}]}}')
    assert cli.main(["import-bifrost", str(f)]) == 1
    assert "routing_rules" in capsys.readouterr().err


def test_status_and_report_show_spend_as_billed_not_rounded_up_per_request(ledger_db, capsys):
    """Ten requests of 1.3 µ$ cost $0.000013; rounded up one by one they would show $0.000020."""
    db = ledger_db
    led = open_store(db)
    now = datetime(2026, 11, 21, 9, tzinfo=UTC)
    micro, rest = money.split(Decimal("0.0000013"))
    for i in range(10):
        c = [Claim("global", "", "never", 1_000_000, 2, "budget:global")]
        led.reserve(RequestRecord(f"r{i}", "p", "openai", "chat", "gpt-4o"), c, 2, now)
        led.settle(f"r{i}", micro, now, outcome="usage", usage=Usage(10, 3), cost_submicro=rest)
    led.close()
    assert cli.main(["status", "--db", str(db), "--rules", str(DEFAULT_RULES)]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("global"))
    assert "$0.000013" in line and "$0.999987" in line
    assert next(ln for ln in out.splitlines() if ln.startswith("settled")).split() == [
        "settled",
        "10",
        "$0.000013",
    ]
    assert cli.main(["report", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert next(ln for ln in out.splitlines() if ln.startswith("gpt-4o")).split()[-1] == "$0.000013"
    assert next(ln for ln in out.splitlines() if ln.startswith("2026-11-21")).split() == [
        "2026-11-21",
        "10",
        "$0.000013",
    ]


def test_migrate_ledger_copies_history_holds_anchors_and_salt(tmp_path, pg_server, capsys):
    src = tmp_path / "l.sqlite"
    seed(src)  # a settled request, a hold in flight, a refusal
    led = open_store(str(src))
    now = datetime(2026, 11, 21, 10, tzinfo=UTC)
    daily = Claim("key=a|d", "", "never", 500_000, 100_000, "budget:d", reset="1d")
    led.reserve(RequestRecord("e", "p"), [daily], 100_000, now)
    led.topup("global", 5, now, who="ops")
    salt, window = led.salt(), led.resolve_window(daily, now).window_start
    led.close()
    url = pg_server.create_db("migrate")
    assert cli.main(["migrate-ledger", str(src), url]) == 0
    assert "4 requests" in capsys.readouterr().out
    pg = open_store(url)
    try:
        assert pg.salt() == salt  # keys hash to the same principals
        assert {r["state"]: r["n"] for r in pg.requests_by_state()} == {"held": 2, "refused": 1, "settled": 1}
        t = pg.window_totals("global", "")
        assert (t.settled, t.held) == (120_000, 200_000)
        # the rolling window keeps its anchor, and the hold in flight settles in the new ledger
        assert pg.resolve_window(daily, now).window_start == window and window
        assert pg.window_totals("key=a|d", window).held == 100_000
        assert pg.settle("b", 150_000, now, outcome="usage")
        assert pg.window_totals("global", "").settled == 270_000
        assert (
            pg.resolve_window(Claim("global", "", "never", 1_000_000, 0, "budget:global"), now).limit
            == 1_000_005
        )
        n = len(pg.query("SELECT id FROM adjustments"))
    finally:
        pg.close()
    assert n == 1
    assert cli.main(["migrate-ledger", str(src), url]) == 1  # never twice into the same ledger
    assert "already holds 4 request(s)" in capsys.readouterr().err
