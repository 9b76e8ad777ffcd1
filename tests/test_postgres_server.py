"""The test PostgreSQL server comes from the lock and runs here: started on loopback in a
temporary directory, it keeps its data across a restart, and refuses connections while stopped."""

from __future__ import annotations

import psycopg
import pytest

from tests.support.postgres import PgServer


def test_the_server_from_the_lock_starts_stops_and_keeps_its_data(pg_server: PgServer):
    url = pg_server.create_db("server")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (n int)")
        conn.execute("INSERT INTO t VALUES (41)")
        assert conn.execute("SELECT inet_server_addr()::text").fetchone()[0].startswith("127.0.0.1")
    pg_server.stop()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)
    pg_server.start()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT n + 1 FROM t").fetchone()[0] == 42


def test_a_proxy_whose_clock_is_off_the_databases_opens_the_ledger_and_says_so(pg_server: PgServer, caplog):
    """Windows follow the database's clock (tests/test_postgres_hot_path.py), so a skewed host
    still counts right: the skew is logged, and no longer stops the proxy."""
    from governance.store.postgres import PostgresStore

    url = pg_server.create_db("clock")
    PostgresStore.open(url).close()  # this host and the server share a clock: within 2 s
    assert "off the ledger database" not in caplog.text
    # Any real skew exceeds a tolerance below zero: the warning names it.
    PostgresStore.open(url, warn_skew_s=-1.0).close()
    assert "clock is" in caplog.text and "windows follow the database's clock" in caplog.text
