"""The PostgreSQL store's hot path, on a real server: one round trip to the database per
reservation and one per settlement (counted on the wire, from libpq's protocol trace of the
store's connection), and windows computed from the database's clock whatever this host's says."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from governance.store import RequestRecord, iso
from governance.store.postgres import PostgresStore
from governance.types import Claim, Usage
from governance.units import Unit
from tests.support.pg_relay import CountingRelay
from tests.support.postgres import PgServer


@pytest.fixture
def relay(pg_server: PgServer) -> Iterator[CountingRelay]:
    r = CountingRelay("127.0.0.1", pg_server.port)
    yield r
    r.close()


@pytest.fixture
def store(pg_server: PgServer, relay: CountingRelay) -> Iterator[PostgresStore]:
    """A store whose one connection goes through `relay`."""
    url = pg_server.create_db("hot").replace(f":{pg_server.port}/", f":{relay.port}/")
    s = PostgresStore.open(url, pool_size=1)
    yield s
    s.close()


def _claims() -> list[Claim]:
    """Six claims, as a request under a budget, a key's daily budget and a rate limit has."""
    return [
        Claim("global", "", "never", 10**9, 100, "budget:global"),
        Claim("key=a|daily", "", "", 10**9, 100, "budget:daily@key=a", reset="1d", calendar=True),
        Claim("team=t|hourly", "", "", 10**9, 100, "budget:hourly@team=t", reset="1h"),
        Claim("pace|requests", "", "never", 100, 1, "rate_limit:pace:requests", Unit.REQUESTS, reset="1m"),
        Claim("pace|tokens", "", "never", 10**6, 50, "rate_limit:pace:tokens", Unit.TOKENS_TOTAL, reset="1m"),
        Claim("pace|in_flight", "", "never", 10, 1, "rate_limit:pace:in_flight", Unit.IN_FLIGHT),
    ]


def test_a_reservation_is_one_round_trip_and_a_settlement_one(store: PostgresStore, relay: CountingRelay):
    now = datetime.now(UTC)
    # First use of the counters creates them and this proxy learns them; at the sixth use of a
    # statement psycopg prepares it on the connection (one more round trip, once).
    for i in range(8):
        assert store.reserve(RequestRecord(f"warm{i}", "p"), _claims(), 100, now).granted
        assert store.settle(f"warm{i}", 80, now, outcome="usage", usage=Usage(10, 5))
    trips = []
    for i in range(5):
        before = relay.turns
        assert store.reserve(RequestRecord(f"r{i}", "p"), _claims(), 100, now).granted
        reserved = relay.turns
        assert store.settle(f"r{i}", 80, now, outcome="usage", usage=Usage(10, 5))
        trips.append((reserved - before, relay.turns - reserved))
    before = relay.turns
    big = Claim("global", "", "never", 10**9, 10**10, "budget:global")
    refused = store.reserve(RequestRecord("big2", "p"), [big], 10**10, now)
    trips.append((relay.turns - before, 0))
    assert not refused.granted and refused.recorded and store.request("big2")["state"] == "refused"
    assert trips == [(1, 1)] * 5 + [(1, 0)]  # the refusal, recorded, in one round trip too
    held = store.window_totals("global", "")
    assert held.held == 0 and held.settled == 13 * 80


def test_windows_follow_the_databases_clock_not_the_proxys(store: PostgresStore):
    """A proxy whose clock is a day and an hour fast still counts in the database's current
    day and hour, from its first request on; its requests are stamped with the database's time."""
    real = datetime.now(UTC)
    skewed = real + timedelta(days=1, hours=1)
    daily, hourly = _claims()[1], _claims()[2]
    for i in range(3):
        assert store.reserve(
            RequestRecord(f"s{i}", "p"), [daily, hourly], 100, skewed + timedelta(seconds=i)
        ).granted
    after = datetime.now(UTC)
    rows = store.query("SELECT request_id, scope, window_start FROM claims ORDER BY request_id, scope")
    days = {iso(t.replace(hour=0, minute=0, second=0, microsecond=0)) for t in (real, after)}
    assert len({r["window_start"] for r in rows if r["scope"] == daily.scope}) == 1
    assert {r["window_start"] for r in rows if r["scope"] == daily.scope} <= days  # today's, not tomorrow's
    anchor = store.query("SELECT anchor_at FROM counters WHERE counter = ?", (hourly.scope,))[0]["anchor_at"]
    assert iso(real) <= anchor <= iso(after)  # the rolling window starts at the database's time
    assert {r["window_start"] for r in rows if r["scope"] == hourly.scope} == {anchor}
    created = [r["created_at"] for r in store.query("SELECT created_at FROM requests")]
    assert all(iso(real) <= c <= iso(after) for c in created)
    assert store.window_totals(daily.scope, rows[0]["window_start"]).held == 300


def test_a_skewed_proxy_reaps_by_the_databases_clock(store: PostgresStore):
    """A hold is reaped when it is older than the TTL by the database's clock: a proxy whose
    clock runs two hours fast does not reap a hold made a moment ago under a one-hour TTL."""
    now = datetime.now(UTC)
    assert store.reserve(RequestRecord("h", "p"), [_claims()[0]], 100, now).granted
    assert store.reap(now + timedelta(hours=2), 3600) == 0
    assert store.reap(now + timedelta(hours=2), 0) == 1 and store.reap(now, 0) == 0
    assert store.window_totals("global", "").settled == 100
