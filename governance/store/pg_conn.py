"""A PostgreSQL ledger's connections: a pool, its transactions, and what a failure means.

Each write is one transaction on a pooled connection, run by `_transact(fn)`: `fn` gets a cursor
and may run many statements; the transaction commits when it returns. A deadlock or
serialization failure (which PostgreSQL resolves by aborting one side, having written nothing)
runs `fn` again; any other database failure, or no connection within `wait_s`, raises
`LedgerUnavailable` (the request is refused with 503). Connections are made when needed and a
reconnection gives up after `wait_s`, so the first request after the server is back connects
at once: no restart of the proxy is needed. The pool checks a connection before lending it
unless the ledger worked within the last second (`_Freshness`).

Time: windows are computed from the database's clock, so proxies whose clocks disagree still
count in the same windows. The hot path's functions read `clock_timestamp()` in the same round
trip (`governance.store.pg_functions`); the proxy keeps the offset it last saw between its clock
and the database's, to compute the windows it expects, and the function checks them. A store
opened with `db_clock=False` uses the `now` each verb is given instead (tests inject time so).
The offset at `open` is logged when it is large: it no longer stops the proxy."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Self, TypeVar

import psycopg
import psycopg.errors
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from governance.errors import LedgerUnavailable
from governance.store import counters, pg_schema

logger = logging.getLogger(__name__)

T = TypeVar("T")

_RETRIES = 8  # deadlocks are rare (a rules change reshaping a window mid-settlement); each retry is cheap


def redacted(url: str) -> str:
    """The URL without its password, for logs and messages."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


class PgConnection:
    """The pool of a PostgreSQL ledger. Open it with `open(url)`; close it with `close()`."""

    def __init__(self, pool: ConnectionPool, url: str, *, db_clock: bool = True) -> None:
        self.pool = pool
        self.url = url
        self.path = redacted(url)  # what the proxy's start-up line names as its ledger
        self.db_clock = db_clock  # windows and timestamps from the database's clock, not `now`
        self._down = False  # whether the last transaction failed for want of the database
        self._fresh = _Freshness()
        self._offset = timedelta(0)  # the database's clock minus this host's, as last seen
        self._known: counters.Known = {}  # the counters' rows as last seen (`pg_reserve`)

    @classmethod
    def open(
        cls,
        url: str,
        *,
        connect_timeout_s: float = 5.0,
        wait_s: float = 2.0,
        warn_skew_s: float = 2.0,
        pool_size: int = 4,
        db_clock: bool = True,
    ) -> Self:
        """Connect, migrate, and read the database's clock. Raises `LedgerUnavailable` if the
        database cannot be reached now (a proxy does not start on a ledger it cannot write). A
        clock more than `warn_skew_s` off the database's is logged: windows follow the database's."""
        checked = _Freshness()
        pool = ConnectionPool(
            url,
            # None kept open at all costs: a connection is made when a request needs one, so the
            # first request after the database is back connects at once, not after the pool's
            # reconnection backoff (connections stay open while used, up to `pool_size`).
            min_size=0,
            max_size=pool_size,
            kwargs={"autocommit": True, "connect_timeout": max(1, int(connect_timeout_s))},
            check=lambda conn: checked.check(conn),
            # How long a request waits for a connection before it is refused (503): while the
            # database is away the pool reconnects in the background, and the next request after
            # it is back gets a working connection.
            timeout=wait_s,
            # Give up a reconnection after as long, rather than back off for minutes: the next
            # request then starts a fresh attempt, so it connects as soon as the database is back.
            reconnect_timeout=wait_s,
            open=False,
            name="spendfuse-ledger",
        )
        try:
            pool.open()
            with pool.connection(timeout=connect_timeout_s) as conn:
                applied = pg_schema.apply(conn)
                before = time.time()
                db_now = conn.execute("SELECT extract(epoch FROM clock_timestamp())").fetchone()
                after = time.time()
        except (psycopg.Error, OSError) as e:
            pool.close()
            raise LedgerUnavailable(f"cannot open ledger {redacted(url)!r}: {e}") from e
        if applied:
            logger.info("spendfuse: ledger %s migrated: %s", redacted(url), ", ".join(applied))
        assert db_now is not None
        skew = float(db_now[0]) - (before + after) / 2
        if abs(skew) > warn_skew_s:
            logger.warning(
                "spendfuse: this host's clock is %+.1fs off the ledger database's (%s); windows follow "
                "the database's clock",
                skew,
                redacted(url),
            )
        store = cls(pool, url, db_clock=db_clock)
        store._offset = timedelta(seconds=skew)
        store._fresh = checked
        return store

    def close(self) -> None:
        self.pool.close()

    def check_file(self) -> None:
        """Nothing to check: a database is not a file that can be swapped under the proxy."""

    def checkpoint_if_due(self) -> bool:
        """PostgreSQL checkpoints on its own."""
        return False

    def _transact(self, fn: Callable[[psycopg.Cursor], T]) -> T:
        """Run `fn` in one transaction (see the module's docstring)."""
        return self._on_connection(lambda conn: _in_transaction(conn, fn))

    def _call(self, sql: str, params: Sequence[Any], *, fetch: bool = True) -> Any:
        """One statement, which is its own transaction (autocommit): one round trip. Its row
        when `fetch`."""

        def run(conn: psycopg.Connection) -> Any:
            cur = conn.execute(sql, params)
            return cur.fetchone() if fetch else None

        return self._on_connection(run)

    def _on_connection(self, fn: Callable[[psycopg.Connection], T]) -> T:
        """`fn` on a pooled connection, run again after a deadlock or serialization failure
        (which wrote nothing); any other failure raises `LedgerUnavailable`."""
        for attempt in range(_RETRIES):
            try:
                with self.pool.connection() as conn:
                    result = fn(conn)
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                if attempt == _RETRIES - 1:
                    raise LedgerUnavailable("ledger write kept deadlocking") from None
                continue
            except psycopg.Error as e:
                self._went_down(e)
                raise LedgerUnavailable(f"ledger write failed: {e}") from e
            self._came_back()
            return result
        raise AssertionError("unreachable")

    def _clock_estimate(self, now: datetime) -> datetime:
        """The database's clock as this host last saw it against `now` (`now` itself when time
        is injected)."""
        return now + self._offset if self.db_clock else now

    def _saw_clock(self, now: datetime, db_now: datetime) -> None:
        if self.db_clock:
            self._offset = db_now - now

    def _rows(self, sql: str, params: Sequence[Any] = (), *, dicts: bool = False) -> list[Any]:
        try:
            with self.pool.connection() as conn, conn.cursor(row_factory=dict_row if dicts else None) as cur:
                cur.execute(sql, params)
                rows = cur.fetchall()
        except psycopg.Error as e:
            self._went_down(e)
            raise LedgerUnavailable(f"ledger read failed: {e}") from e
        self._came_back()
        return rows

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows as dicts, `?` marking parameters as in SQLite (the shared report SQL); sums
        that PostgreSQL returns as numeric come back as int."""
        rows = self._rows(_placeholders(sql), params, dicts=True)
        return [{k: _plain(v) for k, v in row.items()} for row in rows]

    def _went_down(self, e: psycopg.Error) -> None:
        self._fresh.ok = 0.0  # check every connection before use until one works again
        if isinstance(e, psycopg.OperationalError) and not self._down:
            self._down = True
            logger.error(
                "LEDGER DATABASE %s unavailable (%s): refusing requests until it is back", self.path, e
            )

    def _came_back(self) -> None:
        self._fresh.ok = time.monotonic()
        if self._down:
            self._down = False
            logger.warning("ledger database %s is back; accepting requests again", self.path)


def _in_transaction[R](conn: psycopg.Connection, fn: Callable[[psycopg.Cursor], R]) -> R:
    """`fn` between BEGIN and COMMIT, pipelined: statements that need no answer before the next
    one travel together (BEGIN with the first statement, the writes with COMMIT), so a
    reservation is three round trips (its counters, their totals, the writes) and a settlement
    two. On any failure the transaction is rolled back before the connection goes back."""
    try:
        with conn.pipeline(), conn.cursor() as cur:
            conn.execute("BEGIN")
            result = fn(cur)
            conn.execute("COMMIT")
        return result
    except BaseException:
        if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            try:
                conn.execute("ROLLBACK")
            except psycopg.Error:
                pass  # the connection is broken: the pool discards it, the server drops the transaction
        raise


class _Freshness:
    """The pool's check before it lends a connection: a round trip, so skipped while the ledger
    has worked within the last `FRESH_S` (a connection the server dropped in that time fails its
    transaction, which refuses that one request, and from then on every connection is checked
    until the database answers again)."""

    FRESH_S = 1.0

    def __init__(self) -> None:
        self.ok = 0.0  # when a transaction last succeeded (monotonic); 0: checks are on

    def check(self, conn: psycopg.Connection) -> None:
        if time.monotonic() - self.ok > self.FRESH_S:
            ConnectionPool.check_connection(conn)


def _placeholders(sql: str) -> str:
    """SQLite's `?` marks as psycopg's `%s`, outside string literals (`'?'` stays a question mark)."""
    parts = sql.replace("%", "%%").split("'")
    return "'".join(p.replace("?", "%s") if i % 2 == 0 else p for i, p in enumerate(parts))


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return int(value)
    return value
