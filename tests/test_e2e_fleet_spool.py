"""A proxy whose PostgreSQL ledger goes away between a request's reservation and its settlement:
the answer reaches the client, the settlement waits in the proxy's spool (in its confdir), and
it is written once when the database is back. A real mitmdump, a real client, the fake
upstream, and a real PostgreSQL server the test stops and starts."""

from __future__ import annotations

import threading
import time

import pytest

from governance.store.pg_spool import spool_path
from governance.store.postgres import PostgresStore
from tests.support.at_reservation import fake_bill_micro
from tests.support.postgres import PgServer
from tests.test_e2e_fleet import one_dollar_proxy
from tests.test_e2e_governance import chat, client


def _wait(what: str, ok, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


@pytest.mark.expect_errors(
    "LEDGER DATABASE",
    "ledger database down",
    "error connecting",
    "reconnection attempt",
    "ledger unavailable",
)
def test_a_settlement_due_while_the_database_is_down_is_written_once_when_it_is_back(
    start, upstream, confdir, tmp_path, pg_server: PgServer
):
    url = pg_server.create_db("spool")
    proxy = one_dollar_proxy(start, tmp_path, url)
    c = client(proxy)
    upstream.knobs.delay_s = 2  # at the provider while the database goes away
    answers: list = []
    first = threading.Thread(target=lambda: answers.append(chat(c)))
    first.start()
    _wait("the request never reached the provider", lambda: upstream.hits["/v1/chat/completions"] == 1)
    pg_server.stop()
    try:
        first.join(60)
        spool = spool_path(confdir, url)
        _wait("the settlement was never spooled", lambda: spool.exists() and spool.read_text().strip())
    finally:
        pg_server.start()
    assert answers and answers[0].choices  # the client got its answer
    upstream.knobs.delay_s = 0
    assert chat(c).choices  # the first write that reaches the database replays the spool
    store = PostgresStore.open(url)
    try:
        _wait("not settled", lambda: len(store.query("SELECT id FROM requests WHERE state = 'settled'")) == 2)
        (scope,) = {r["scope"] for r in store.query("SELECT DISTINCT scope FROM claims")}
        totals = store.window_totals(scope, "")
        rows = store.query("SELECT cost_micro, outcome FROM requests ORDER BY created_at")
    finally:
        store.close()
    assert spool.read_text() == ""
    assert totals.held == 0 and totals.settled == sum(r["cost_micro"] for r in rows)
    assert totals.settled == fake_bill_micro(upstream)  # each answer charged once, at its bill
