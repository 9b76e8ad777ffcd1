"""A proxy killed with -9 in the middle of a stream, on either store: its hold stays (the
provider bills the stream), the other proxy of the pair keeps working, and after the TTL the
reaper charges the lost hold once, at its reservation, which is never below the bill.
Real mitmdumps sharing one ledger (a SQLite file, or a real PostgreSQL database), a real
streaming client, the fake upstream."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import openai
import pytest

from governance.store import LedgerStore
from governance.store.postgres import PostgresStore
from governance.store.sqlite import SqliteStore
from tests.support.at_reservation import fake_bill_micro
from tests.test_e2e_fleet import one_dollar_proxy
from tests.test_e2e_governance import chat, client


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_proxy_killed_mid_stream_leaves_one_hold_that_is_reaped_once(
    kind, start, upstream, tmp_path, request
):
    db = str(tmp_path / "shared.sqlite")
    if kind == "postgresql":
        db = request.getfixturevalue("pg_server").create_db("crash")
    doomed, survivor = one_dollar_proxy(start, tmp_path, db), one_dollar_proxy(start, tmp_path, db)
    upstream.knobs.chunks, upstream.knobs.chunk_delay_s = 30, 0.2
    stream = client(doomed).chat.completions.create(
        model="gpt-4o", max_tokens=100, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    with pytest.raises((openai.APIError, httpx.HTTPError)):  # the stream breaks with the proxy
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                doomed.process.kill()  # SIGKILL, mid-stream: no settlement
    upstream.knobs.chunks, upstream.knobs.chunk_delay_s = 3, 0
    assert chat(client(survivor)).choices
    survivor.stop()  # a clean stop settles what it has in flight; the dead proxy's hold stays
    store: LedgerStore = (
        PostgresStore.open(db, db_clock=False) if kind == "postgresql" else SqliteStore.open(db)
    )
    try:
        assert [r["state"] for r in store.query("SELECT state FROM requests ORDER BY created_at")] == [
            "held",
            "settled",
        ]
        later = datetime.now(UTC) + timedelta(hours=1)  # past the rules' hold TTL
        assert store.reap(later, 3600) == 1 and store.reap(later, 3600) == 0  # once
        (scope,) = {r["scope"] for r in store.query("SELECT DISTINCT scope FROM claims")}
        totals = store.window_totals(scope, "")
        lost, served = store.query(
            "SELECT state, reserved_micro, cost_micro FROM requests ORDER BY created_at"
        )
    finally:
        store.close()
    assert lost["state"] == "expired" and lost["cost_micro"] == lost["reserved_micro"]
    assert totals.held == 0 and totals.settled == lost["reserved_micro"] + served["cost_micro"]
    assert fake_bill_micro(upstream) - served["cost_micro"] <= lost["reserved_micro"]  # never below the bill
