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
from datetime import datetime, timedelta
from functools import partial

import psycopg

from governance import money
from governance.store import RequestRecord, ReserveResult, holds, iso
from governance.store.pg_conn import PgConnection
from governance.store.pg_counters import lock_windows, totals_of
from governance.store.pg_ops import PgOperator
from governance.store.reports import LedgerReports
from governance.store.verbs import StoreVerbs
from governance.types import Claim
from governance.units import unit_of

_INSERT_REQUEST = holds.INSERT_REQUEST.replace("?", "%s")
_SETTLE_SQL = money.add_sql("settled", "settled_rest").replace("%", "%%").replace("?", "%s")


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


_SETTLE_REQUEST = holds.SETTLE_REQUEST.replace("?", "%s")


class PostgresStore(StoreVerbs, PgOperator, PgConnection, LedgerReports):
    """The ledger in a PostgreSQL database (`PostgresStore.open(url)`): a `LedgerStore`."""

    def _reserve(self, r: holds.Reservation) -> ReserveResult:
        def tx(cur: psycopg.Cursor) -> ReserveResult:
            claims = lock_windows(cur, r.claims, r.now)
            found = totals_of(cur, claims) if claims else {}
            return holds.decide(r, claims, found, partial(cur.execute, _INSERT_REQUEST), partial(_hold, cur))

        return self._transact(tx)

    def record_refusal(
        self, rec: RequestRecord, now: datetime, *, rule: str, reason: str | None, decision: str = "refused"
    ) -> None:
        """Record a request refused before any reservation (parse, price, multiplier, endpoint)."""
        self._transact(
            lambda cur: cur.execute(
                _INSERT_REQUEST,
                holds.request_row(
                    rec, now, state="refused", decision=decision, reserved_micro=0, rule=rule, reason=reason
                ),
            )
        )

    def _finish(self, f: holds.Finish) -> bool:
        """`StoreVerbs._finish`: one transaction that locks the request, then its claims."""

        def tx(cur: psycopg.Cursor) -> bool:
            # Both reads in one round trip (pipelined): the request first, then its claims.
            cur.execute(
                "SELECT state, reserved_micro FROM requests WHERE id = %s FOR UPDATE", (f.request_id,)
            )
            with cur.connection.cursor() as claims_cur:
                claims_cur.execute(
                    "SELECT scope, window_start, amount, unit FROM claims WHERE request_id = %s "
                    'ORDER BY scope COLLATE "C", window_start COLLATE "C" FOR UPDATE',
                    (f.request_id,),
                )
                head = cur.fetchone()
                claimed = claims_cur.fetchall()
            if head is None or head[0] not in ("held", "expired"):
                return False  # already settled or released: settlement is idempotent
            cost = head[1] if f.cost_micro is None else f.cost_micro
            rows = [(head[0], head[1], *r) for r in claimed] or [(head[0], head[1], None, None, 0, "")]
            totals, finals = holds.finished_claims(
                rows, f.request_id, cost, f.cost_submicro, f.usage, f.state
            )
            if totals:  # in the claims' order: sorted, as every transaction locks totals
                cur.executemany(
                    f"UPDATE totals SET held = held - %s, {_SETTLE_SQL} "
                    "WHERE scope = %s AND window_start = %s",
                    totals,
                )
                cur.executemany(
                    "UPDATE claims SET amount = %s, amount_rest = %s, state = 'settled' "
                    "WHERE request_id = %s AND scope = %s AND window_start = %s",
                    finals,
                )
            cur.execute(_SETTLE_REQUEST, holds.settle_request_params(f, cost))
            if f.usage is not None:  # the larger size wins (`holds.context_rows`)
                cur.executemany(
                    "INSERT INTO contexts AS x (id, tokens, updated_at) VALUES (%s, %s, %s) "
                    "ON CONFLICT (id) DO UPDATE SET tokens = GREATEST(x.tokens, excluded.tokens), "
                    "updated_at = excluded.updated_at",
                    holds.context_rows(f.usage, f.now),
                )
            return True

        return self._transact(tx)

    def reap(self, now: datetime, ttl_seconds: int) -> int:
        """Charge holds older than `ttl_seconds` at their reserved amount (state `expired`).
        Any proxy of a fleet may run it at any time: each stale hold is reaped exactly once
        (its request row is locked, and one being settled right now is skipped and left to
        its settlement)."""
        cutoff = iso(now - timedelta(seconds=ttl_seconds))

        def tx(cur: psycopg.Cursor) -> int:
            cur.execute(
                "SELECT id FROM requests WHERE state = 'held' AND created_at < %s ORDER BY id "
                "FOR UPDATE SKIP LOCKED",
                (cutoff,),
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
                "UPDATE requests SET state = 'expired', outcome = 'expired', settled_at = %s, "
                "cost_micro = reserved_micro, cost_submicro = 0 WHERE id = ANY(%s)",
                (iso(now), stale),
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
