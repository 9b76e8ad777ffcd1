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
from datetime import datetime, timedelta
from typing import Any

import psycopg

from governance import money
from governance.store import RecordRefusal, RequestRecord, ReserveResult, WindowTotals, counters, holds, iso
from governance.store.pg_conn import PgConnection
from governance.store.pg_counters import lock_windows, totals_of
from governance.store.pg_ops import PgOperator
from governance.store.reports import LedgerReports
from governance.types import Claim, Usage
from governance.units import unit_of

_INSERT_REQUEST = (
    "INSERT INTO requests (id, created_at, principal, provider, api, model, stream, est_input_tokens, "
    "max_output_tokens, reserved_micro, state, decision, rule, reason, price_source, "
    "requested_output_tokens, injected_output_tokens, counters) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
_SETTLE_SQL = money.add_sql("settled", "settled_rest").replace("%", "%%").replace("?", "%s")


def _insert_request(
    cur: psycopg.Cursor,
    rec: RequestRecord,
    now: datetime,
    *,
    state: str,
    decision: str,
    reserved_micro: int,
    rule: str | None,
    reason: str | None,
    counters: str | None = None,
) -> None:
    cur.execute(
        _INSERT_REQUEST,
        (
            rec.request_id, iso(now), rec.principal, rec.provider, rec.api, rec.model, int(rec.stream),
            rec.est_input_tokens, rec.max_output_tokens, reserved_micro, state, decision, rule, reason,
            rec.price_source, rec.requested_output_tokens, rec.injected_output_tokens, counters,
        ),
    )  # fmt: skip


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


def _remember_context(cur: psycopg.Cursor, usage: Usage, now: datetime) -> None:
    """Keep the size of the context an answer ended with (the larger size wins, as in SQLite)."""
    size = usage.input_tokens + usage.output_tokens
    keys = []
    if usage.response_id:
        keys.append(f"response:{usage.response_id}")
    if usage.conversation_id:
        keys.append(f"conversation:{usage.conversation_id}")
    for key in sorted(keys):
        cur.execute(
            "INSERT INTO contexts AS x (id, tokens, updated_at) VALUES (%s, %s, %s) ON CONFLICT (id) "
            "DO UPDATE SET tokens = GREATEST(x.tokens, excluded.tokens), updated_at = excluded.updated_at",
            (key, size, iso(now)),
        )


_SETTLE_REQUEST = (
    "UPDATE requests SET state = %s, outcome = %s, settled_at = %s, cost_micro = %s, "
    "cost_submicro = %s, input_tokens = %s, output_tokens = %s, cache_read_tokens = %s, "
    "cache_write_tokens = %s, price_source = COALESCE(%s, price_source), model = COALESCE(model, %s) "
    "WHERE id = %s"
)


class PostgresStore(PgOperator, PgConnection, LedgerReports):
    """The ledger in a PostgreSQL database (`PostgresStore.open(url)`): a `LedgerStore`."""

    def reserve(
        self,
        rec: RequestRecord,
        claims: Sequence[Claim],
        reserved_micro: int,
        now: datetime,
        *,
        enforce: bool = True,
        decision: str = "allowed",
        rule: str | None = None,
        reason: str | None = None,
        record_refusal: RecordRefusal = True,
    ) -> ReserveResult:
        """Check every claim and hold them all, or none, in one transaction
        (`SqliteStore.reserve`'s contract)."""

        def tx(cur: psycopg.Cursor) -> ReserveResult:
            nonlocal decision, rule
            resolved = lock_windows(cur, claims, now)
            check = holds.check(
                resolved, totals_of(cur, resolved) if resolved else {}, rec.est_input_tokens or 0
            )
            blocking = check.blocking
            if blocking is not None and enforce:
                assert blocking.blocking is not None
                room = check.room
                record = (
                    record_refusal
                    if isinstance(record_refusal, bool)
                    else record_refusal(blocking.blocking, room)
                )
                if record:
                    _insert_request(
                        cur, rec, now, state="refused", decision="refused", reserved_micro=0,
                        rule=blocking.blocking.rule, reason=reason,
                    )  # fmt: skip
                return replace(blocking, room=room.usd, output_room=room.output_tokens, recorded=record)
            did, why = decision, rule
            if blocking is not None:  # dry run: held regardless, recorded as a would-be refusal
                assert blocking.blocking is not None
                did, why = "dry_run", rule or blocking.blocking.rule
            _insert_request(
                cur, rec, now, state="held", decision=did, reserved_micro=reserved_micro, rule=why,
                reason=reason, counters=",".join(c.scope for c in resolved),
            )  # fmt: skip
            _hold(cur, rec.request_id, resolved)
            if blocking is not None:
                return replace(blocking, granted=True, room=None)
            return holds.granted(resolved, check.lefts)

        return self._transact(tx)

    def record_refusal(
        self, rec: RequestRecord, now: datetime, *, rule: str, reason: str | None, decision: str = "refused"
    ) -> None:
        """Record a request refused before any reservation (parse, price, multiplier, endpoint)."""
        self._transact(
            lambda cur: _insert_request(
                cur, rec, now, state="refused", decision=decision, reserved_micro=0, rule=rule, reason=reason
            )
        )

    def _finish(
        self,
        request_id: str,
        *,
        cost_micro: int | None,
        cost_submicro: int = 0,
        state: str,
        outcome: str,
        now: datetime,
        usage: Usage | None = None,
        price_source: str | None = None,
    ) -> bool:
        """Replace a hold by `cost_micro` plus its rest, or by its own reserved amount when None."""
        if not 0 <= cost_submicro < money.SUBMICRO_PER_MICRO:
            raise ValueError(f"a cost's rest below a micro-dollar must be in [0, 10^12), not {cost_submicro}")

        def tx(cur: psycopg.Cursor) -> bool:
            cur.execute("SELECT state, reserved_micro FROM requests WHERE id = %s FOR UPDATE", (request_id,))
            head = cur.fetchone()
            if head is None or head[0] not in ("held", "expired"):
                return False  # already settled or released: settlement is idempotent
            cost = head[1] if cost_micro is None else cost_micro
            cur.execute(
                "SELECT scope, window_start, amount, unit FROM claims WHERE request_id = %s "
                "ORDER BY scope, window_start FOR UPDATE",
                (request_id,),
            )
            rows = [(head[0], head[1], *r) for r in cur.fetchall()] or [(head[0], head[1], None, None, 0, "")]
            totals, finals = holds.finished_claims(rows, request_id, cost, cost_submicro, usage, state)
            if totals:
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
            u = usage
            cur.execute(
                _SETTLE_REQUEST,
                (
                    state, outcome, iso(now), cost, cost_submicro,
                    u.input_tokens if u else None, u.output_tokens if u else None,
                    u.cache_read_tokens if u else None, u.cache_write_tokens if u else None,
                    price_source, u.model if u else None, request_id,
                ),
            )  # fmt: skip
            if usage is not None:
                _remember_context(cur, usage, now)
            return True

        return self._transact(tx)

    def settle(
        self,
        request_id: str,
        cost_micro: int,
        now: datetime,
        *,
        outcome: str,
        usage: Usage | None = None,
        price_source: str | None = None,
        cost_submicro: int = 0,
    ) -> bool:
        """Replace a hold by the real cost (`SqliteStore.settle`'s contract). Idempotent."""
        return self._finish(
            request_id, cost_micro=cost_micro, cost_submicro=cost_submicro, state="settled",
            outcome=outcome, now=now, usage=usage, price_source=price_source,
        )  # fmt: skip

    def release(self, request_id: str, now: datetime, *, outcome: str) -> bool:
        """Drop a hold, charging nothing (the upstream never ran the request). Idempotent."""
        return self._finish(request_id, cost_micro=0, state="released", outcome=outcome, now=now)

    def charge_reservation(self, request_id: str, now: datetime, *, outcome: str) -> bool:
        """Settle a hold at its full reserved amount, when real usage cannot be known."""
        return self._finish(request_id, cost_micro=None, state="settled", outcome=outcome, now=now)

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
                "ORDER BY scope, window_start FOR UPDATE",
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

    def salt(self) -> str:
        """This ledger's random salt, for hashing upstream API keys into principals."""
        return str(self._rows("SELECT value FROM meta WHERE key = 'salt'")[0][0])

    def resolve_window(self, claim: Claim, now: datetime) -> Claim:
        """`claim` with its current window and effective limit, read-only (for `spendfuse status`)."""
        rows = self._rows("SELECT anchor_at, topup_micro FROM counters WHERE counter = %s", (claim.scope,))
        anchor_text, topup = (rows[0][0], rows[0][1]) if rows else (None, 0)
        if anchor_text is None:
            anchor_text = counters.first_anchor(claim, now)
        return counters.resolve(claim, anchor_text, topup, now)

    def context_tokens(self, ids: Sequence[str]) -> dict[str, int]:
        """The stored size, in tokens, of each context id this ledger has seen settle."""
        if not ids:
            return {}
        rows = self._rows("SELECT id, tokens FROM contexts WHERE id = ANY(%s)", (list(ids),))
        return {row[0]: row[1] for row in rows}

    def window_totals(self, scope: str, window_start: str) -> WindowTotals:
        """A window's spend and holds (nothing for a window never used)."""
        rows = self._rows(
            "SELECT settled, held, settled_rest FROM totals WHERE scope = %s AND window_start = %s",
            (scope, window_start),
        )
        return WindowTotals(rows[0][0], rows[0][1], rows[0][2]) if rows else WindowTotals(0, 0)

    def request(self, request_id: str) -> dict[str, Any] | None:
        """A request's row, or None."""
        rows = self._rows("SELECT * FROM requests WHERE id = %s", (request_id,), dicts=True)
        return rows[0] if rows else None
