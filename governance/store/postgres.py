"""The PostgreSQL ledger store: `LedgerStore`'s verbs on one database that a fleet of proxies shares.

The tables are the SQLite ledger's (`governance.store.pg_schema`) and the decisions the same
pure functions (`governance.store.holds`, `governance.store.counters`), so both stores answer
alike (tests/test_store_contract.py runs one suite against both). What differs is how a check
and its holds stay atomic across machines: a reservation locks the counters it claims, in sorted
order (`governance.store.pg_counters`); a settlement locks its request and its claims; totals
change only by increments in the same transaction as their claim rows, applied in sorted order
so that no two transactions wait on each other in a circle. Every lock ends with its
transaction, and no transaction spans an upstream call: the admission prices outside
(`governance.admission`), and the engine settles after the response."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, Self

import psycopg

from governance.store import RequestRecord, ReserveResult, holds, pg_reserve
from governance.store.pg_conn import PgConnection
from governance.store.pg_counters import lock_windows, totals_of
from governance.store.pg_ops import PgOperator
from governance.store.pg_spool import PgSpooling, spool_path
from governance.store.reports import LedgerReports
from governance.store.verbs import StoreVerbs
from governance.types import Claim
from governance.units import unit_of

_INSERT_REQUEST = holds.INSERT_REQUEST.replace("?", "%s")


def _hold(cur: psycopg.Cursor, request_id: str, claims: Sequence[Claim]) -> None:
    if not claims:
        return
    cur.execute(
        "INSERT INTO claims (request_id, scope, window_start, amount, state, unit) "
        "SELECT %s, s, w, a, 'held', u FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::text[]) "
        "AS t(s, w, a, u)",
        (
            request_id,
            [c.scope for c in claims],
            [c.window_start for c in claims],
            [c.amount for c in claims],
            [c.unit.value for c in claims],
        ),
    )
    # Sorted, so that totals rows are always locked in one order (see the module's docstring).
    merged: dict[tuple[str, str], int] = {}
    for c in claims:
        merged[(c.scope, c.window_start)] = merged.get((c.scope, c.window_start), 0) + c.amount
    keys = sorted(merged)
    cur.execute(
        "INSERT INTO totals AS t (scope, window_start, settled, held) "
        "SELECT s, w, 0, h FROM unnest(%s::text[], %s::text[], %s::bigint[]) AS x(s, w, h) "
        "ON CONFLICT (scope, window_start) DO UPDATE SET held = t.held + excluded.held",
        ([k[0] for k in keys], [k[1] for k in keys], [merged[k] for k in keys]),
    )


_FINISH_SQL = "SELECT spendfuse_finish(" + ", ".join(["%s"] * 14) + ")"


class PostgresStore(StoreVerbs, PgOperator, PgSpooling, PgConnection, LedgerReports):
    """The ledger in a PostgreSQL database (`PostgresStore.open(url)`): a `LedgerStore`."""

    @classmethod
    def open(cls, url: str, *, spool_dir: Path | None = None, **kw: Any) -> Self:
        """`PgConnection.open`, with settlements that cannot be written spooled in `spool_dir`
        (`governance.store.pg_spool`; None: they raise `LedgerUnavailable`). A spool left by an
        earlier run is replayed now."""
        store = super().open(url, **kw)
        if spool_dir is not None:
            store.spool = spool_path(spool_dir, url)
            store.replay_spool()
        return store

    def _reserve(self, r: holds.Reservation) -> ReserveResult:
        """One call of `spendfuse_reserve` when this proxy knows the counters as they are (the
        usual case: one round trip); otherwise the multi-statement transaction, at the clock the
        function answered with (`governance.store.pg_reserve`)."""
        now = self._clock_estimate(r.now)
        for _ in range(3):
            expected = pg_reserve.expect(r, self._known, now, None if self.db_clock else r.now)
            if expected is None:
                break
            answer = self._call(pg_reserve.RESERVE_SQL, expected.params)
            self._saw_clock(r.now, answer[1])
            pg_reserve.learn(self._known, expected.params[1], answer)
            if answer[0] != "stale":
                result, late = pg_reserve.outcome(r, expected, answer)
                if late is not None:
                    self._call(_INSERT_REQUEST, late, fetch=False)
                return result
            now = answer[1]

        def tx(cur: psycopg.Cursor) -> ReserveResult:
            at = r
            if self.db_clock:  # the windows at the database's clock, read in this transaction
                cur.execute("SELECT clock_timestamp()")
                at = replace(r, now=cur.fetchone()[0])
                self._saw_clock(r.now, at.now)
            claims = lock_windows(cur, at.claims, at.now, self._known)
            found = totals_of(cur, claims) if claims else {}
            return holds.decide(at, claims, found, partial(cur.execute, _INSERT_REQUEST), partial(_hold, cur))

        return self._transact(tx)

    def record_refusal(
        self, rec: RequestRecord, now: datetime, *, rule: str, reason: str | None, decision: str = "refused"
    ) -> None:
        """Record a request refused before any reservation (parse, price, multiplier, endpoint)."""
        at = self._clock_estimate(now)
        row = holds.request_row(
            rec, at, state="refused", decision=decision, reserved_micro=0, rule=rule, reason=reason
        )
        self._call(_INSERT_REQUEST, row, fetch=False)

    def _finish(self, f: holds.Finish) -> bool:
        """`StoreVerbs._finish`: one call of `spendfuse_finish` (one round trip), which locks the
        request, then its claims. When the database cannot be reached it is tried again, and
        then the settlement waits in this proxy's spool until the database is back
        (`governance.store.pg_spool`): it is never lost, and it counts once."""
        return self._settle_or_spool(f, lambda: self._call(_FINISH_SQL, self._finish_params(f))[0])

    def _finish_params(self, f: holds.Finish) -> tuple:
        u = f.usage
        contexts = holds.context_rows(u, f.now) if u is not None else []
        return (
            None if self.db_clock else f.now, f.request_id, f.cost_micro, f.cost_submicro, f.state,
            f.outcome, u.input_tokens if u else None, u.output_tokens if u else None,
            u.cache_read_tokens if u else None, u.cache_write_tokens if u else None, f.price_source,
            u.model if u else None, [c[0] for c in contexts], [c[1] for c in contexts],
        )  # fmt: skip

    def reap(self, now: datetime, ttl_seconds: int) -> int:
        """Charge holds older than `ttl_seconds` at their reserved amount (state `expired`).
        Any proxy of a fleet may run it at any time: each stale hold is reaped exactly once
        (its request row is locked, and one being settled right now is skipped and left to
        its settlement)."""
        self.replay_spool()  # a settlement waiting in the spool wins over the reaper's charge
        at = None if self.db_clock else now

        def tx(cur: psycopg.Cursor) -> int:
            cur.execute(
                "SELECT id FROM requests WHERE state = 'held' AND created_at < "
                "spendfuse_iso(coalesce(%s, clock_timestamp()) - make_interval(secs => %s)) "
                "ORDER BY id FOR UPDATE SKIP LOCKED",
                (at, ttl_seconds),
            )
            stale = [r[0] for r in cur.fetchall()]
            if not stale:
                return 0
            cur.execute(
                "SELECT scope, window_start, amount, unit FROM claims WHERE request_id = ANY(%s) "
                'ORDER BY scope COLLATE "C", window_start COLLATE "C" FOR UPDATE',
                (stale,),
            )
            moves: dict[tuple[str, str], list[int]] = {}
            for scope, window_start, amount, unit in cur.fetchall():
                move = moves.setdefault((scope, window_start), [0, 0])
                move[0] += amount
                move[1] += unit_of(unit).at_expiry(amount)
            cur.executemany(
                "UPDATE totals SET held = held - %s, settled = settled + %s "
                "WHERE scope = %s AND window_start = %s",
                [(m[0], m[1], *key) for key, m in sorted(moves.items())],
            )
            cur.execute(
                "UPDATE claims SET state = 'settled', "
                "amount = CASE WHEN unit = 'in_flight' THEN 0 ELSE amount END WHERE request_id = ANY(%s)",
                (stale,),
            )
            cur.execute(
                "UPDATE requests SET state = 'expired', outcome = 'expired', "
                "settled_at = spendfuse_iso(coalesce(%s, clock_timestamp())), "
                "cost_micro = reserved_micro, cost_submicro = 0 WHERE id = ANY(%s)",
                (at, stale),
            )
            return len(stale)

        return self._transact(tx)

    # -- reads --------------------------------------------------------------------------------

    def context_tokens(self, ids: Sequence[str]) -> dict[str, int]:
        """The stored size, in tokens, of each context id this ledger has seen settle."""
        if not ids:
            return {}
        rows = self._rows("SELECT id, tokens FROM contexts WHERE id = ANY(%s)", (list(ids),))
        return {row[0]: row[1] for row in rows}
