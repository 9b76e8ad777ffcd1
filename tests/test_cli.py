from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from governance import DEFAULT_RULES, cli
from governance.ledger import Ledger, RequestRecord
from governance.types import Claim, Usage


def seed(db: Path) -> None:
    led = Ledger.open(db)
    now = datetime(2026, 11, 21, 9, tzinfo=UTC)
    c = [Claim("global", "", "never", 1_000_000, 200_000, "budget:global")]
    led.reserve(RequestRecord("a", "p", "openai", "chat", "gpt-4o", est_input_tokens=200), c, 200_000, now)
    led.settle("a", 120_000, now, outcome="usage", usage=Usage(100, 10))
    led.reserve(RequestRecord("b", "p", "anthropic", "messages", "claude-sonnet-4-5"), c, 200_000, now)
    led.record_refusal(RequestRecord("c", "p"), now, rule="budget:global", reason="full")
    led.close()


def test_status(tmp_path, capsys):
    seed(tmp_path / "l.sqlite")
    assert cli.main(["status", "--db", str(tmp_path / "l.sqlite"), "--rules", str(DEFAULT_RULES)]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("global"))
    assert "$1.00" in line and "$0.12" in line and "$0.20" in line and "$0.68" in line and "never" in line


def test_report(tmp_path, capsys):
    seed(tmp_path / "l.sqlite")
    assert cli.main(["report", "--db", str(tmp_path / "l.sqlite")]) == 0
    out = capsys.readouterr().out
    assert "gpt-4o" in out and "2026-11-21" in out and "budget:global" in out
    # The estimate reserved for "a" (est_input_tokens 200 via the seed) against its real input 100.
    line = next(ln for ln in out.split("input estimate")[1].splitlines() if ln.startswith("gpt-4o"))
    assert line.split()[1:] == ["1", "0.500", "0.500", "0.500", "0"]


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
