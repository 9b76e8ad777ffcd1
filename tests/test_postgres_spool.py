"""A settlement the PostgreSQL ledger cannot take (the database is down) waits in the proxy's
spool and is written when the database is back, exactly once (governance/store/pg_spool.py).
On a real server that the tests stop and start."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from governance.store import RequestRecord
from governance.store.pg_spool import spool_path
from governance.store.postgres import PostgresStore
from governance.types import Claim, Usage
from tests.support.postgres import PgServer

EXPECTED = ("LEDGER DATABASE", "ledger database down", "error connecting", "reconnection attempt", "spool")

CAP = Claim("global", "", "never", 1_000_000, 300_000, "budget:global")


def _settled_while_down(store: PostgresStore, pg_server: PgServer, ids: list[str]) -> None:
    now = datetime.now(UTC)
    for rid in ids:
        assert store.reserve(RequestRecord(rid, "p"), [CAP], 300_000, now).granted
    pg_server.stop()
    try:
        for rid in ids:
            assert store.settle(rid, 123_456, now, outcome="usage", usage=Usage(10, 5), cost_submicro=7)
        # The same settlement told twice (a retry) is still one settlement.
        assert store.settle(ids[0], 123_456, now, outcome="usage", usage=Usage(10, 5), cost_submicro=7)
    finally:
        pg_server.start()


@pytest.mark.expect_errors(*EXPECTED)
def test_a_settlement_made_while_the_database_is_down_is_written_once_when_it_is_back(
    pg_server: PgServer, tmp_path: Path
):
    url = pg_server.create_db("spool")
    store = PostgresStore.open(url, spool_dir=tmp_path)
    try:
        _settled_while_down(store, pg_server, ["a", "b"])
        assert len(spool_path(tmp_path, url).read_text().splitlines()) == 3
        # The next write that reaches the database replays the spool first.
        assert store.reserve(RequestRecord("c", "p"), [CAP], 300_000, datetime.now(UTC)).granted
        totals = store.window_totals("global", "")
        rows = {r["id"]: r for r in store.query("SELECT id, state, cost_micro, cost_submicro FROM requests")}
    finally:
        store.close()
    assert spool_path(tmp_path, url).read_text() == ""
    assert (totals.settled, totals.settled_rest, totals.held) == (2 * 123_456, 14, 300_000)
    assert [(rows[i]["state"], rows[i]["cost_micro"], rows[i]["cost_submicro"]) for i in "ab"] == [
        ("settled", 123_456, 7)
    ] * 2


@pytest.mark.expect_errors(*EXPECTED)
def test_a_spool_replayed_twice_counts_once_and_is_replayed_by_the_next_start(
    pg_server: PgServer, tmp_path: Path
):
    """The proxy dies after the database took the spool but before the spool was emptied: the
    next start replays it again, and nothing counts twice."""
    url = pg_server.create_db("spool")
    store = PostgresStore.open(url, spool_dir=tmp_path)
    try:
        _settled_while_down(store, pg_server, ["a"])
    finally:
        store.close()  # stopped before any write reached the database again
    spooled = spool_path(tmp_path, url).read_text()
    again = PostgresStore.open(url, spool_dir=tmp_path)  # the next start replays it
    again.close()
    spool_path(tmp_path, url).write_text(spooled)  # as if the proxy died before emptying it
    third = PostgresStore.open(url, spool_dir=tmp_path)
    try:
        totals = third.window_totals("global", "")
    finally:
        third.close()
    assert (totals.settled, totals.settled_rest, totals.held) == (123_456, 7, 0)
    assert spool_path(tmp_path, url).read_text() == ""


@pytest.mark.expect_errors(*EXPECTED)
def test_a_spooled_settlement_corrects_a_hold_the_reaper_charged_meanwhile(
    pg_server: PgServer, tmp_path: Path
):
    """Another proxy reaped the hold (its TTL passed while this proxy could not write): the
    spooled settlement replaces the reservation charged by the real cost, once."""
    url = pg_server.create_db("spool")
    store = PostgresStore.open(url, spool_dir=tmp_path)
    other = None
    try:
        _settled_while_down(store, pg_server, ["a"])
        other = PostgresStore.open(url)  # a proxy of the fleet without this one's spool
        assert other.reap(datetime.now(UTC), 0) == 1
        assert other.window_totals("global", "").settled == 300_000
        assert store.reap(datetime.now(UTC), 0) == 0  # replays its spool first; nothing left to reap
        totals = store.window_totals("global", "")
    finally:
        store.close()
        if other is not None:
            other.close()
    assert (totals.settled, totals.settled_rest, totals.held) == (123_456, 7, 0)
