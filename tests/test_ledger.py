from __future__ import annotations

import multiprocessing
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from governance import money
from governance.errors import LedgerUnavailable
from governance.ledger import Ledger, RequestRecord
from governance.types import Claim, Usage, to_micro
from tests.support.racing import race

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
    assert not r.granted and (r.settled, r.held) == (0, 600_000)
    assert ledger.request("b")["state"] == "refused" and ledger.request("b")["rule"] == "budget:global"
    assert ledger.window_totals("global", "").held == 600_000


def test_settle_is_idempotent_and_frees_room(ledger):
    ledger.reserve(RequestRecord("a", "p"), claim(600_000), 600_000, NOW)
    assert ledger.settle("a", 100_000, NOW, outcome="usage", usage=Usage(10, 5))
    assert not ledger.settle("a", 100_000, NOW, outcome="usage")
    assert not ledger.release("a", NOW, outcome="x")
    t = ledger.window_totals("global", "")
    assert (t.settled, t.held) == (100_000, 0)
    assert ledger.reserve(RequestRecord("b", "p"), claim(900_000), 900_000, NOW).granted


def test_release_and_charge_reservation(ledger):
    ledger.reserve(RequestRecord("a", "p"), claim(300_000), 300_000, NOW)
    ledger.reserve(RequestRecord("b", "p"), claim(200_000), 200_000, NOW)
    ledger.release("a", NOW, outcome="upstream_error")
    ledger.charge_reservation("b", NOW, outcome="no_usage")
    assert ledger.request("a")["cost_micro"] == 0 and ledger.request("b")["cost_micro"] == 200_000
    assert ledger.window_totals("global", "").settled == 200_000


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
    assert ledger.window_totals("global", "").settled == 500_000
    assert ledger.reap(NOW + timedelta(hours=3), ttl_seconds=7200) == 0
    # The process was alive after all: its real usage replaces the expiry charge, once.
    assert ledger.settle("old", 50_000, NOW + timedelta(hours=4), outcome="usage")
    assert not ledger.settle("old", 50_000, NOW + timedelta(hours=4), outcome="usage")
    t = ledger.window_totals("global", "")
    assert (t.settled, t.held) == (50_000, 100_000)


def test_totals_reconcile_with_claims(ledger):
    for i in range(20):
        ledger.reserve(RequestRecord(f"r{i}", "p"), claim(40_000), 40_000, NOW)
        if i % 3 == 0:
            ledger.settle(f"r{i}", 1_000 * i, NOW, outcome="usage")
        elif i % 3 == 1:
            ledger.release(f"r{i}", NOW, outcome="x")
    held = ledger.query("SELECT coalesce(sum(amount), 0) AS s FROM claims WHERE state = 'held'")[0]["s"]
    settled = ledger.query("SELECT coalesce(sum(amount), 0) AS s FROM claims WHERE state = 'settled'")[0]["s"]
    t = ledger.window_totals("global", "")
    assert (t.held, t.settled) == (held, settled)


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
    granted = sum(race(_race, (path,), 6))
    # 6 x 25 attempts of $0.01 against a $1 cap: exactly 100 fit, whatever the interleaving.
    assert granted == 100
    led = Ledger.open(path)
    t = led.window_totals("global", "")
    assert t.settled + t.held == 1_000_000
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
        assert (t.settled, t.held) == (5, 10 * (IDLE_CHECKPOINT_COMMITS - 2 - opening))
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


@pytest.mark.parametrize("name", ["host=db dbname=spend", "dbname=spend", " host = db  user=x"])
def test_a_keyword_connection_string_is_refused(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LedgerUnavailable, match="connection string"):
        Ledger.open(name)
    assert list(tmp_path.iterdir()) == []


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
    assert led.window_totals("global", "").held == 200
    led.close()


# -- exact settled costs (governance.money) ------------------------------------------------------

TINY = Decimal("0.0000013")  # 1.3 µ$: ten input and three output tokens at $0.10 per million


def settle_exact(led: Ledger, request_id: str, cost: Decimal, now: datetime = NOW) -> None:
    micro, rest = money.split(cost)
    assert led.settle(request_id, micro, now, outcome="usage", cost_submicro=rest)


def recorded(led: Ledger, scope: str = "global", window_start: str = "") -> Decimal:
    """What the ledger says was spent: the counter's total, its claims', and its requests'."""
    t = led.window_totals(scope, window_start)
    claims = led.query(
        f"SELECT {money.sum_sql('amount', 'amount_rest', 'c')} FROM claims "
        "WHERE state = 'settled' AND unit = 'usd' AND scope = ? AND window_start = ?",
        [scope, window_start],
    )[0]
    requests = led.query(f"SELECT {money.sum_sql('cost_micro', 'cost_submicro', 'c')} FROM requests")[0]
    total = money.to_usd(t.settled, t.settled_rest)
    assert money.summed(claims, "c") == total == money.summed(requests, "c")
    return total


def test_many_tiny_costs_add_up_to_the_bill_and_a_budget_of_that_size_admits_what_fits(ledger):
    for i in range(2000):
        assert ledger.reserve(RequestRecord(f"r{i}", "p"), claim(2, limit=10**9), 2, NOW).granted
        settle_exact(ledger, f"r{i}", TINY)
    # Rounded up one by one, the ledger recorded $0.004000 for a bill of $0.002600.
    assert recorded(ledger) == 2000 * TINY == Decimal("0.0026")
    # A budget sized to the exact spend plus one more request's hold admits it, and nothing more.
    assert ledger.reserve(RequestRecord("fits", "p"), claim(2, limit=2602), 2, NOW).granted
    assert not ledger.reserve(RequestRecord("over", "p"), claim(1, limit=2602), 1, NOW).granted


def test_a_rest_below_a_micro_dollar_counts_against_the_limit(ledger):
    for i in range(3):  # 3.9 µ$: 3 whole micro-dollars and 0.9 of one
        assert ledger.reserve(RequestRecord(f"r{i}", "p"), claim(2, limit=6), 2, NOW).granted
        settle_exact(ledger, f"r{i}", TINY)
    t = ledger.window_totals("global", "")
    assert (t.settled, t.settled_rest, t.used) == (3, 9 * 10**11, 4)
    r = ledger.reserve(RequestRecord("x", "p"), claim(3, limit=6), 3, NOW)  # 6.9 µ$ > 6 µ$
    assert not r.granted and (r.settled, r.settled_rest) == (3, 9 * 10**11)
    ok = ledger.reserve(RequestRecord("y", "p"), claim(2, limit=6), 2, NOW)  # 5.9 µ$ <= 6 µ$
    assert ok.granted and ok.remaining_micro == 0  # floor of the 0.1 µ$ left


def test_a_late_settlement_after_expiry_keeps_the_rest(ledger):
    ledger.reserve(RequestRecord("old", "p"), claim(5), 5, NOW)
    assert ledger.reap(NOW + timedelta(hours=3), ttl_seconds=7200) == 1
    assert recorded(ledger) == Decimal("0.000005")  # charged its hold while lost
    settle_exact(ledger, "old", TINY, NOW + timedelta(hours=4))  # corrected to its real cost
    assert recorded(ledger) == TINY
    assert ledger.request("old")["cost_micro"] == 1 and ledger.request("old")["cost_submicro"] == 3 * 10**11


def test_a_rest_out_of_range_is_refused(ledger):
    ledger.reserve(RequestRecord("a", "p"), claim(5), 5, NOW)
    for bad in (-1, 10**12):
        with pytest.raises(ValueError):
            ledger.settle("a", 1, NOW, outcome="usage", cost_submicro=bad)
    assert ledger.request("a")["state"] == "held"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    costs=st.lists(
        st.tuples(
            st.decimals(min_value=0, max_value=Decimal("0.05"), places=18),
            st.sampled_from(["settle", "settle", "settle", "release", "reserved", "late"]),
        ),
        max_size=40,
    )
)
def test_recorded_spend_is_the_exact_sum_of_costs(tmp_path_factory, costs):
    """Whatever the costs and however requests end (settled, released, charged their hold,
    reaped then settled late), the recorded spend is exactly what they cost."""
    led = Ledger.open(tmp_path_factory.mktemp("prop") / "l.sqlite")
    try:
        expected = Decimal(0)
        for i, (cost, end) in enumerate(costs):
            hold = to_micro(cost)
            assert led.reserve(RequestRecord(f"r{i}", "p"), claim(hold, limit=10**9), hold, NOW).granted
            if end == "release":
                led.release(f"r{i}", NOW, outcome="x")
            elif end == "reserved":
                led.charge_reservation(f"r{i}", NOW, outcome="no_usage")
                expected += Decimal(hold) / 10**6
            else:
                if end == "late":
                    assert led.reap(NOW + timedelta(hours=3), ttl_seconds=7200) == 1
                settle_exact(led, f"r{i}", cost, NOW + timedelta(hours=3))
                expected += cost
        assert recorded(led) == expected
        assert led.window_totals("global", "").held == 0
    finally:
        led.close()


def _race_tiny(path: str, start: multiprocessing.synchronize.Event, worker: int, results) -> None:
    start.wait()
    led = Ledger.open(path)
    for i in range(50):
        assert led.reserve(RequestRecord(f"w{worker}-{i}", "p"), claim(2, limit=10**9), 2, NOW).granted
        micro, rest = money.split(TINY)
        led.settle(f"w{worker}-{i}", micro, NOW, outcome="usage", cost_submicro=rest)
    led.close()
    results.put(worker)


def test_processes_settling_tiny_costs_on_one_ledger_add_up_exactly(tmp_path: Path):
    path = str(tmp_path / "race.sqlite")
    race(_race_tiny, (path,), 3)
    led = Ledger.open(path)
    try:
        assert recorded(led) == 3 * 50 * TINY
    finally:
        led.close()


def test_a_ledger_of_the_old_schema_opens_with_its_amounts_unchanged(tmp_path: Path):
    """A ledger written before exact costs (every cost rounded up to a whole micro-dollar)
    reads the same after the upgrade, and takes exact costs from then on."""
    from sqlite_utils import Database

    from governance.ledger import migrations

    path = tmp_path / "old.sqlite"
    db = Database(path)
    migrations.apply(db, stop_before="m006_exact_costs")  # the schema the previous version made
    assert "cost_submicro" not in db["requests"].columns_dict
    db["requests"].insert_all(
        [
            {
                "id": f"o{i}",
                "created_at": "2026-11-21T09:00:00.000000Z",
                "principal": "p",
                "state": "settled",
                "decision": "allowed",
                "reserved_micro": 5,
                "cost_micro": 2,
                "model": "gpt-4o",
            }
            for i in range(3)
        ]
    )
    db["claims"].insert_all(
        [
            {
                "request_id": f"o{i}",
                "scope": "global",
                "window_start": "",
                "amount_micro": 2,
                "state": "settled",
                "unit": "usd",
            }
            for i in range(3)
        ]
    )
    db["totals"].insert({"scope": "global", "window_start": "", "settled_micro": 6, "held_micro": 0})
    db.conn.commit()
    db.conn.close()

    led = Ledger.open(path)
    try:
        t = led.window_totals("global", "")
        assert (t.settled, t.settled_rest, t.held) == (6, 0, 0)
        assert recorded(led) == Decimal("0.000006")
        assert led.reserve(RequestRecord("new", "p"), claim(2, limit=10), 2, NOW).granted
        settle_exact(led, "new", TINY)
        assert recorded(led) == Decimal("0.000006") + TINY
    finally:
        led.close()


def test_a_window_reshaped_in_the_rules_carries_the_exact_spend(ledger):
    for i in range(3):
        assert ledger.reserve(RequestRecord(f"r{i}", "p"), claim(2), 2, NOW).granted
        settle_exact(ledger, f"r{i}", TINY)
    daily = [replace(c, reset="1d") for c in claim(2, limit=6)]  # the budget now resets daily
    assert ledger.reserve(RequestRecord("d1", "p"), daily, 2, NOW).granted  # 3.9 + 2 <= 6
    assert not ledger.reserve(RequestRecord("d2", "p"), daily, 1, NOW).granted  # 3.9 + 2 + 1 > 6
    [row] = ledger.query("SELECT window_start FROM totals WHERE window_start != ''")
    settle_exact(ledger, "d1", TINY)
    t = ledger.window_totals("global", row["window_start"])
    assert (money.to_usd(t.settled, t.settled_rest), t.held) == (4 * TINY, 0)


def test_a_ledger_before_unit_neutral_names_keeps_its_amounts(tmp_path: Path):
    """Columns that held token counts under `*_micro` names are renamed in place: a token claim
    and a money window read the same after the upgrade."""
    from sqlite_utils import Database

    from governance.ledger import migrations

    path = tmp_path / "m006.sqlite"
    db = Database(path)
    migrations.apply(db, stop_before="m007_unit_neutral_amounts")
    db["claims"].insert(
        {"request_id": "t", "scope": "k|pace|tokens", "window_start": "", "amount_micro": 5000}
        | {"state": "held", "unit": "tokens:total"}
    )
    db["totals"].insert(
        {"scope": "global", "window_start": "", "settled_micro": 6, "held_micro": 3, "settled_submicro": 7}
    )
    db.conn.commit()
    db.conn.close()

    led = Ledger.open(path)
    try:
        assert led.query("SELECT amount, amount_rest FROM claims WHERE request_id = 't'") == [
            {"amount": 5000, "amount_rest": 0}
        ]
        t = led.window_totals("global", "")
        assert (t.settled, t.held, t.settled_rest) == (6, 3, 7)
    finally:
        led.close()
