from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from governance.errors import LedgerUnavailable
from governance.ledger import Ledger, RequestRecord
from governance.types import Claim, Usage

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def claim(amount: int, limit: int = 1_000_000) -> list[Claim]:
    return [Claim("global", "", "never", limit, amount, "budget:global")]


@pytest.fixture
def ledger(tmp_path: Path):
    led = Ledger.open(tmp_path / "l.sqlite")
    yield led
    led.close()


def test_reserve_refuses_what_does_not_fit_and_records_it(ledger):
    assert ledger.reserve(RequestRecord("a", "p"), claim(600_000), 600_000, NOW).granted
    r = ledger.reserve(RequestRecord("b", "p"), claim(600_000), 600_000, NOW)
    assert not r.granted and (r.settled_micro, r.held_micro) == (0, 600_000)
    assert ledger.request("b")["state"] == "refused" and ledger.request("b")["rule"] == "budget:global"
    assert ledger.window_totals("global", "").held_micro == 600_000


def test_settle_is_idempotent_and_frees_room(ledger):
    ledger.reserve(RequestRecord("a", "p"), claim(600_000), 600_000, NOW)
    assert ledger.settle("a", 100_000, NOW, outcome="usage", usage=Usage(10, 5))
    assert not ledger.settle("a", 100_000, NOW, outcome="usage")
    assert not ledger.release("a", NOW, outcome="x")
    t = ledger.window_totals("global", "")
    assert (t.settled_micro, t.held_micro) == (100_000, 0)
    assert ledger.reserve(RequestRecord("b", "p"), claim(900_000), 900_000, NOW).granted


def test_release_and_charge_reservation(ledger):
    ledger.reserve(RequestRecord("a", "p"), claim(300_000), 300_000, NOW)
    ledger.reserve(RequestRecord("b", "p"), claim(200_000), 200_000, NOW)
    ledger.release("a", NOW, outcome="upstream_error")
    ledger.charge_reservation("b", NOW, outcome="no_usage")
    assert ledger.request("a")["cost_micro"] == 0 and ledger.request("b")["cost_micro"] == 200_000
    assert ledger.window_totals("global", "").settled_micro == 200_000


def test_dry_run_holds_anyway_and_reports(ledger):
    ledger.reserve(RequestRecord("a", "p"), claim(900_000), 900_000, NOW)
    r = ledger.reserve(RequestRecord("b", "p"), claim(900_000), 900_000, NOW, enforce=False)
    assert r.granted and r.blocking is not None
    assert ledger.request("b")["decision"] == "dry_run"


def test_stale_holds_expire_charged_and_a_late_settle_corrects_once(ledger):
    ledger.reserve(RequestRecord("old", "p"), claim(500_000), 500_000, NOW)
    ledger.reserve(RequestRecord("new", "p"), claim(100_000), 100_000, NOW + timedelta(hours=3))
    assert ledger.reap(NOW + timedelta(hours=3), ttl_seconds=7200) == 1
    assert ledger.request("old")["state"] == "expired" and ledger.request("new")["state"] == "held"
    assert ledger.window_totals("global", "").settled_micro == 500_000
    assert ledger.reap(NOW + timedelta(hours=3), ttl_seconds=7200) == 0
    # The process was alive after all: its real usage replaces the expiry charge, once.
    assert ledger.settle("old", 50_000, NOW + timedelta(hours=4), outcome="usage")
    assert not ledger.settle("old", 50_000, NOW + timedelta(hours=4), outcome="usage")
    t = ledger.window_totals("global", "")
    assert (t.settled_micro, t.held_micro) == (50_000, 100_000)


def test_totals_reconcile_with_claims(ledger):
    for i in range(20):
        ledger.reserve(RequestRecord(f"r{i}", "p"), claim(40_000), 40_000, NOW)
        if i % 3 == 0:
            ledger.settle(f"r{i}", 1_000 * i, NOW, outcome="usage")
        elif i % 3 == 1:
            ledger.release(f"r{i}", NOW, outcome="x")
    held = ledger.query("SELECT coalesce(sum(amount_micro), 0) AS s FROM claims WHERE state = 'held'")[0]["s"]
    settled = ledger.query("SELECT coalesce(sum(amount_micro), 0) AS s FROM claims WHERE state = 'settled'")[
        0
    ]["s"]
    t = ledger.window_totals("global", "")
    assert (t.held_micro, t.settled_micro) == (held, settled)


def test_naive_time_is_rejected(ledger):
    with pytest.raises(ValueError):
        ledger.reserve(RequestRecord("a", "p"), claim(1), 1, datetime(2026, 1, 1))


def test_unwritable_ledger_is_unavailable(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(LedgerUnavailable):
        Ledger.open(blocker / "sub" / "l.sqlite")
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"not a database" * 100)
    with pytest.raises(LedgerUnavailable):
        Ledger.open(corrupt)


def _race(path: str, start: multiprocessing.synchronize.Event, worker: int, results) -> None:
    start.wait()
    led = Ledger.open(path)  # every process opens (and migrates) a file that does not exist yet
    granted = 0
    for i in range(25):
        r = led.reserve(
            RequestRecord(f"w{worker}-{i}", f"w{worker}"), claim(10_000, limit=1_000_000), 10_000, NOW
        )
        if r.granted:
            granted += 1
            if i % 2:
                led.settle(f"w{worker}-{i}", 10_000, NOW, outcome="usage")
    led.close()
    results.put(granted)


def test_processes_racing_on_a_new_file_never_pass_the_cap(tmp_path: Path):
    path = str(tmp_path / "race.sqlite")
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(path, start, w, results)) for w in range(6)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    granted = sum(results.get(timeout=5) for _ in procs)
    # 6 x 25 attempts of $0.01 against a $1 cap: exactly 100 fit, whatever the interleaving.
    assert granted == 100
    led = Ledger.open(path)
    t = led.window_totals("global", "")
    assert t.settled_micro + t.held_micro == 1_000_000
    assert len(led.query("SELECT id FROM requests")) == 150
    led.close()


def test_timestamps_are_fixed_width_utc_text():
    from governance.ledger import iso

    assert iso(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05.000000Z"
    east = timezone(timedelta(hours=2))
    assert iso(datetime(2026, 1, 2, 1, 4, 5, 7, tzinfo=east)) == "2026-01-01T23:04:05.000007Z"


def test_a_hold_with_no_budget_claims_settles(ledger):
    assert ledger.reserve(RequestRecord("a", "p"), [], 5_000, NOW).granted
    assert ledger.settle("a", 1_234, NOW, outcome="usage", usage=Usage(10, 5))
    row = ledger.request("a")
    assert (row["state"], row["cost_micro"], row["input_tokens"]) == ("settled", 1_234, 10)


def test_the_wal_is_checkpointed_when_idle_after_enough_commits(tmp_path: Path):
    from governance.ledger import IDLE_CHECKPOINT_COMMITS

    path = tmp_path / "l.sqlite"
    led = Ledger.open(path)
    try:
        assert not led.checkpoint_if_due()
        size_before = path.stat().st_size
        opening = led.commits_since_checkpoint  # the migrations' commit
        for i in range(IDLE_CHECKPOINT_COMMITS - 1 - opening):  # one commit each
            led.reserve(RequestRecord(f"r{i}", "p"), claim(10), 10, NOW)
        assert not led.checkpoint_if_due() and path.stat().st_size == size_before  # all in the WAL
        led.settle("r0", 5, NOW, outcome="usage")
        assert led.checkpoint_if_due()
        assert path.stat().st_size > size_before  # the WAL's pages were copied into the file
        assert not led.checkpoint_if_due()
    finally:
        led.close()
    reopened = Ledger.open(path)
    try:
        t = reopened.window_totals("global", "")
        assert (t.settled_micro, t.held_micro) == (5, 10 * (IDLE_CHECKPOINT_COMMITS - 2 - opening))
    finally:
        reopened.close()


@pytest.mark.parametrize("name", [":memory:", "", "file::memory:?cache=shared", "FILE:x?mode=memory"])
def test_ledgers_that_forget_are_refused(name):
    with pytest.raises(LedgerUnavailable, match="memory"):
        Ledger.open(name)


@pytest.mark.parametrize(
    "name",
    [
        "postgresql://user@host:5432/db",
        "postgres://host/db",
        "POSTGRESQL+psycopg://h/db",
        "sqlite:///var/lib/ledger.sqlite",
        "file:/var/lib/ledger.sqlite",
        "mysql://h/db",
    ],
)
def test_a_url_is_refused_and_creates_no_file(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LedgerUnavailable, match="URL, which this build cannot open"):
        Ledger.open(name)
    assert list(tmp_path.iterdir()) == []  # nothing was written under the working directory


@pytest.mark.parametrize("name", ["ledger:v2.sqlite", "./postgres:5432.sqlite", "C:ledger.sqlite"])
def test_a_path_with_a_colon_is_still_a_path(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if name.startswith("ledger:"):  # `ledger:` looks like a scheme: it is refused too
        with pytest.raises(LedgerUnavailable, match="URL"):
            Ledger.open(name)
        return
    Ledger.open(name).close()
    assert (tmp_path / name).exists()


def test_default_path_is_a_per_user_state_directory(monkeypatch, tmp_path):
    from governance.ledger import default_path

    monkeypatch.delenv("SPENDFUSE_STATE_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_path() == tmp_path / "xdg" / "spendfuse" / "ledger.sqlite"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_path() == tmp_path / "home" / ".local" / "state" / "spendfuse" / "ledger.sqlite"
    monkeypatch.setenv("SPENDFUSE_STATE_DIR", str(tmp_path / "state"))
    assert default_path() == tmp_path / "state" / "ledger.sqlite"


@pytest.mark.expect_errors("LEDGER .* was (deleted|replaced)")
@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_ledger_deleted_or_replaced_underneath_is_refused_until_it_is_back(tmp_path, how, caplog):
    path = tmp_path / "l.sqlite"
    led = Ledger.open(path)
    led.reserve(RequestRecord("a", "p"), claim(100), 100, NOW)
    aside = tmp_path / "aside"
    aside.mkdir()
    files = [path.with_name(path.name + suffix) for suffix in ("", "-wal", "-shm")]
    for f in files:
        f.rename(aside / f.name)
    if how == "replaced":
        Ledger.open(path).close()  # a fresh ledger at the same path: spend would start at zero
    with pytest.raises(LedgerUnavailable, match=f"was {how}"):
        led.reserve(RequestRecord("b", "p"), claim(100), 100, NOW)
    assert not led.checkpoint_if_due()
    assert sum("LEDGER" in r.getMessage() for r in caplog.records) == 1  # loudly, and once
    for f in files:
        f.unlink(missing_ok=True)
        (aside / f.name).rename(f)
    assert led.reserve(RequestRecord("c", "p"), claim(100), 100, NOW).granted
    assert led.window_totals("global", "").held_micro == 200
    led.close()
