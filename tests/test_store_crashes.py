"""Proxies killed with -9 while they reserve, stream or settle, on both stores: no hold outlives
its TTL (any process reaps it, once), nothing is charged twice, and the totals always equal
their claims. The killed processes are real (spawned, SIGKILL), on the stores of
tests/test_store_contract.py (a SQLite file, a real PostgreSQL server)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from governance.store import LedgerStore, RequestRecord
from governance.types import Usage
from governance.units import Unit
from tests.support.postgres import database_for
from tests.test_store_contract import NOW, STORES, _server_for, budget, rate

TTL = 60
_OTHER_SESSIONS = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
)
CLAIMS = [budget(10_000, limit=10**9), rate(Unit.IN_FLIGHT, 1, 1_000, scope="fl")]


def _busy(kind: str, tmp_path: Path, worker: int, done) -> None:
    """Reserve and settle until killed; every third request is left held, as a stream in flight."""
    s = STORES[kind](tmp_path)
    i = 0
    while True:
        rid = f"w{worker}-{i}"
        assert s.reserve(RequestRecord(rid, "p"), CLAIMS, 10_000, NOW).granted
        if i % 3:
            s.settle(rid, 7_000 + i, NOW, outcome="usage", usage=Usage(1, 1))
        i += 1
        with done.get_lock():
            done.value += 1


def _check_and_reap(store: LedgerStore) -> None:
    """Totals equal their claims; the reaper charges each lost hold once; then nothing is held
    and every request's cost is counted once."""
    sums = store.query(
        "SELECT state, coalesce(sum(amount), 0) AS s FROM claims WHERE scope = 'global' GROUP BY state"
    )
    by_state = {r["state"]: r["s"] for r in sums}
    t = store.window_totals("global", "")
    assert (t.held, t.settled) == (by_state.get("held", 0), by_state.get("settled", 0))
    held = len(store.query("SELECT id FROM requests WHERE state = 'held'"))
    later = NOW + timedelta(seconds=TTL + 1)
    assert store.reap(later, TTL) == held and store.reap(later, TTL) == 0
    t = store.window_totals("global", "")
    costs = store.query("SELECT coalesce(sum(cost_micro), 0) AS s FROM requests")[0]["s"]
    assert t.held == 0 and store.window_totals("fl|in_flight", "").used == 0
    assert t.settled == costs  # each request charged once: at its cost, or at its reservation if lost
    assert store.query("SELECT count(*) AS n FROM requests WHERE state = 'held'")[0]["n"] == 0


@pytest.mark.parametrize("kind", sorted(STORES))
def test_processes_killed_at_any_point_of_their_verbs_leak_nothing(kind, tmp_path: Path, request):
    _server_for(request, kind)
    ctx = multiprocessing.get_context("spawn")
    for worker in range(4):
        done = ctx.Value("i", 0)
        p = ctx.Process(target=_busy, args=(kind, tmp_path, worker, done))
        p.start()
        deadline = time.monotonic() + 60
        while done.value < 15 + 7 * worker:  # killed at a different point each time
            assert p.is_alive() and time.monotonic() < deadline
            time.sleep(0.001)
        os.kill(p.pid, signal.SIGKILL)
        p.join(10)
    if kind == "postgresql":  # the server ends the dead process's sessions when it sees them gone
        _wait_for(database_for(str(tmp_path)), _OTHER_SESSIONS, 0)
    store = STORES[kind](tmp_path)
    try:
        _check_and_reap(store)
    finally:
        store.close()


def _one(tmp_path: Path, verb: str) -> None:
    s = STORES["postgresql"](tmp_path)
    if verb == "reserve":
        s.reserve(RequestRecord("x", "p"), CLAIMS, 10_000, NOW)
    else:
        s.settle("x", 4_000, NOW, outcome="usage", usage=Usage(1, 1))


@pytest.mark.parametrize("verb", ["reserve", "settle"])
def test_a_proxy_killed_inside_a_postgresql_verb_leaks_nothing(verb, tmp_path: Path, pg_server):
    """The process is killed while its verb waits inside the database (on a lock the test
    holds): whether the database then finishes the verb or drops it, nothing leaks."""
    url = database_for(str(tmp_path))
    store = STORES["postgresql"](tmp_path)
    try:
        assert store.reserve(RequestRecord("warm", "p"), CLAIMS, 10_000, NOW).granted
        store.settle("warm", 10_000, NOW, outcome="usage")
        if verb == "settle":
            assert store.reserve(RequestRecord("x", "p"), CLAIMS, 10_000, NOW).granted
        with psycopg.connect(url) as blocker:
            if verb == "reserve":
                blocker.execute("SELECT 1 FROM counters WHERE counter = 'global' FOR UPDATE")
            else:
                blocker.execute("SELECT 1 FROM requests WHERE id = 'x' FOR UPDATE")
            p = multiprocessing.get_context("spawn").Process(target=_one, args=(tmp_path, verb))
            p.start()
            _wait_for(url, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'", 1)
            os.kill(p.pid, signal.SIGKILL)
            p.join(10)
        # The lock is released: the orphaned backend finishes its statement, or is dropped.
        _wait_for(url, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'", 0)
        _check_and_reap(store)
    finally:
        store.close()


def _wait_for(url: str, sql: str, n: int) -> None:
    deadline = time.monotonic() + 30
    with psycopg.connect(url, autocommit=True) as conn:
        while conn.execute(sql).fetchone()[0] != n:
            assert time.monotonic() < deadline, sql
            time.sleep(0.01)
