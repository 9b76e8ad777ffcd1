"""The SQLite ledger store: `LedgerStore`'s verbs on one SQLite file.

Every request is a row in `requests`. A request that is let through also holds one row in
`claims` per limit it counts against, and `totals` keeps each scope-window's settled and held
amount (settled money exactly, with its rest below a micro-dollar: `governance.money`), changed
only by increments inside the same transaction as the claim rows, so it always equals the sum
of its claims (a test reconciles them). Every method takes `now`, so tests choose the time.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from governance import money
from governance.errors import LedgerUnavailable
from governance.store import (
    RecordRefusal,
    RequestRecord,
    ReserveResult,
    WindowTotals,
    counters,
    holds,
    iso,
)
from governance.store.sqlite_counters import resolve_windows, totals_of
from governance.store.sqlite_file import SqliteFile
from governance.store.sqlite_reports import SqliteReports
from governance.types import Claim, Usage
from governance.units import unit_of


def _insert_request(
    conn: sqlite3.Connection,
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
    conn.execute(
        "INSERT INTO requests (id, created_at, principal, provider, api, model, stream, "
        "est_input_tokens, max_output_tokens, reserved_micro, state, decision, rule, reason, "
        "price_source, requested_output_tokens, injected_output_tokens, counters) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            rec.request_id,
            iso(now),
            rec.principal,
            rec.provider,
            rec.api,
            rec.model,
            int(rec.stream),
            rec.est_input_tokens,
            rec.max_output_tokens,
            reserved_micro,
            state,
            decision,
            rule,
            reason,
            rec.price_source,
            rec.requested_output_tokens,
            rec.injected_output_tokens,
            counters,
        ),
    )


def _hold(conn: sqlite3.Connection, request_id: str, claims: Sequence[Claim]) -> None:
    conn.executemany(
        "INSERT INTO claims (request_id, scope, window_start, amount, state, unit) "
        "VALUES (?, ?, ?, ?, 'held', ?)",
        [(request_id, c.scope, c.window_start, c.amount, c.unit.value) for c in claims],
    )
    conn.executemany(
        "INSERT INTO totals (scope, window_start, settled, held) "
        "VALUES (?, ?, 0, ?) ON CONFLICT (scope, window_start) "
        "DO UPDATE SET held = held + excluded.held",
        [(c.scope, c.window_start, c.amount) for c in claims],
    )


def _remember_context(conn: sqlite3.Connection, usage: Usage, now: datetime) -> None:
    """Keep the size of the context an answer ended with, under its response id and its
    conversation (whose latest answer is its running size)."""
    size = usage.input_tokens + usage.output_tokens
    keys = []
    if usage.response_id:
        keys.append(f"response:{usage.response_id}")
    if usage.conversation_id:
        keys.append(f"conversation:{usage.conversation_id}")
    for key in keys:
        # The larger size wins: turns of a conversation may settle out of order, and the
        # reservation must never shrink below what the provider already holds.
        conn.execute(
            "INSERT INTO contexts (id, tokens, updated_at) VALUES (?, ?, ?) ON CONFLICT (id) "
            "DO UPDATE SET tokens = MAX(tokens, excluded.tokens), updated_at = excluded.updated_at",
            (key, size, iso(now)),
        )


_SETTLE_REQUEST = (
    "UPDATE requests SET state = ?, outcome = ?, settled_at = ?, cost_micro = ?, "
    "cost_submicro = ?, input_tokens = ?, output_tokens = ?, cache_read_tokens = ?, "
    "cache_write_tokens = ?, "
    "price_source = COALESCE(?, price_source), model = COALESCE(model, ?) WHERE id = ?"
)


class SqliteStore(SqliteReports, SqliteFile):
    """The ledger in a SQLite file (`SqliteStore.open(path)`): a `LedgerStore`."""

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
        """Check every claim and hold them all, or none, in one transaction.

        With `enforce`, the first claim (in the order given) whose window's settled + held +
        amount would pass its limit refuses the request: a `refused` row is written and nothing
        is held. Without it (dry run) everything is held and the would-be refusal is only reported.
        A refusal reports the room its windows had left (`room`, `output_room`).

        `record_refusal`: False, or a callable that answers False for the room seen, writes
        nothing for a refusal (`recorded=False`): the caller may try again (made to fit the room,
        or with the provider's own input count) and records the outcome then."""
        with self._write() as conn:
            claims = resolve_windows(conn, claims, now)
            check = holds.check(claims, totals_of(conn, claims) if claims else {}, rec.est_input_tokens or 0)
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
                        conn, rec, now, state="refused", decision="refused", reserved_micro=0,
                        rule=blocking.blocking.rule, reason=reason,
                    )  # fmt: skip
                return replace(blocking, room=room.usd, output_room=room.output_tokens, recorded=record)
            if blocking is not None:  # dry run: held regardless, recorded as a would-be refusal
                assert blocking.blocking is not None
                decision, rule = "dry_run", rule or blocking.blocking.rule
            _insert_request(
                conn, rec, now, state="held", decision=decision, reserved_micro=reserved_micro, rule=rule,
                reason=reason, counters=",".join(c.scope for c in claims),
            )  # fmt: skip
            _hold(conn, rec.request_id, claims)
            if blocking is not None:  # dry run: held anyway, and the would-be refusal reported
                return replace(blocking, granted=True, room=None)
            return holds.granted(claims, check.lefts)

    def record_refusal(
        self, rec: RequestRecord, now: datetime, *, rule: str, reason: str | None, decision: str = "refused"
    ) -> None:
        """Record a request refused before any reservation (parse, price, multiplier, endpoint)."""
        with self._write() as conn:
            _insert_request(
                conn, rec, now, state="refused", decision=decision, reserved_micro=0, rule=rule, reason=reason
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
        """Replace a hold by `cost_micro` (plus its rest `cost_submicro`, in atto-USD), or by its
        own reserved amount when that is None."""
        if not 0 <= cost_submicro < money.SUBMICRO_PER_MICRO:
            raise ValueError(f"a cost's rest below a micro-dollar must be in [0, 10^12), not {cost_submicro}")
        with self._write() as conn:
            rows = conn.execute(
                "SELECT r.state, r.reserved_micro, c.scope, c.window_start, c.amount, c.unit "
                "FROM requests r LEFT JOIN claims c ON c.request_id = r.id WHERE r.id = ?",
                (request_id,),
            ).fetchall()
            if not rows or rows[0][0] not in ("held", "expired"):
                return False  # already settled or released: settlement is idempotent
            if cost_micro is None:
                cost_micro = rows[0][1]
            totals, finals = holds.finished_claims(rows, request_id, cost_micro, cost_submicro, usage, state)
            settle_sql = money.add_sql("settled", "settled_rest")
            conn.executemany(
                f"UPDATE totals SET held = held - ?, {settle_sql} WHERE scope = ? AND window_start = ?",
                totals,
            )
            conn.executemany(
                "UPDATE claims SET amount = ?, amount_rest = ?, state = 'settled' "
                "WHERE request_id = ? AND scope = ? AND window_start = ?",
                finals,
            )
            u = usage
            conn.execute(
                _SETTLE_REQUEST,
                (
                    state, outcome, iso(now), cost_micro, cost_submicro,
                    u.input_tokens if u else None, u.output_tokens if u else None,
                    u.cache_read_tokens if u else None, u.cache_write_tokens if u else None,
                    price_source, u.model if u else None, request_id,
                ),
            )  # fmt: skip
            if usage is not None:
                _remember_context(conn, usage, now)
            return True

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
        """Replace a hold by the real cost: `cost_micro` whole micro-dollars plus `cost_submicro`
        atto-USD (`money.split` of the exact cost). Idempotent: returns False if already finished."""
        return self._finish(
            request_id,
            cost_micro=cost_micro,
            cost_submicro=cost_submicro,
            state="settled",
            outcome=outcome,
            now=now,
            usage=usage,
            price_source=price_source,
        )

    def release(self, request_id: str, now: datetime, *, outcome: str) -> bool:
        """Drop a hold, charging nothing (the upstream never ran the request). Idempotent."""
        return self._finish(request_id, cost_micro=0, state="released", outcome=outcome, now=now)

    def charge_reservation(self, request_id: str, now: datetime, *, outcome: str) -> bool:
        """Settle a hold at its full reserved amount, when real usage cannot be known."""
        return self._finish(request_id, cost_micro=None, state="settled", outcome=outcome, now=now)

    def reap(self, now: datetime, ttl_seconds: int) -> int:
        """Charge holds older than `ttl_seconds` at their reserved amount (state `expired`): a
        process that died mid-request may have been billed. A late settle still corrects them."""
        cutoff = iso(now - timedelta(seconds=ttl_seconds))
        with self._write() as conn:
            stale = conn.execute(
                "SELECT id FROM requests WHERE state = 'held' AND created_at < ?", (cutoff,)
            ).fetchall()
            for (request_id,) in stale:
                for scope, window_start, amount, unit in conn.execute(
                    "SELECT scope, window_start, amount, unit FROM claims WHERE request_id = ?",
                    (request_id,),
                ).fetchall():
                    conn.execute(
                        "UPDATE totals SET held = held - ?, settled = settled + ? "
                        "WHERE scope = ? AND window_start = ?",
                        (amount, unit_of(unit).at_expiry(amount), scope, window_start),
                    )
                conn.execute(
                    "UPDATE claims SET state = 'settled', "
                    "amount = CASE WHEN unit = 'in_flight' THEN 0 ELSE amount END "
                    "WHERE request_id = ?",
                    (request_id,),
                )
                conn.execute(
                    "UPDATE requests SET state = 'expired', outcome = 'expired', settled_at = ?, "
                    "cost_micro = reserved_micro, cost_submicro = 0 WHERE id = ?",
                    (iso(now), request_id),
                )
            return len(stale)

    # -- operator actions ---------------------------------------------------------------------------

    def salt(self) -> str:
        """This ledger's random salt, for hashing upstream API keys into principals."""
        rows = self._read("SELECT value FROM meta WHERE key = 'salt'")
        return str(rows[0][0])

    def reset(self, counters: Sequence[str], now: datetime, *, who: str, note: str | None = None) -> None:
        """Start a new window of each counter now. History stays: the old window's totals and
        claims are kept, and the reset is a row in `adjustments`."""
        with self._write() as conn:
            for counter in counters:
                conn.execute(
                    "INSERT INTO counters (counter, anchor_at) VALUES (?, ?) ON CONFLICT (counter) "
                    "DO UPDATE SET anchor_at = excluded.anchor_at",
                    (counter, iso(now)),
                )
                conn.execute(
                    "INSERT INTO adjustments (at, counter, action, amount_micro, who, note) "
                    "VALUES (?, ?, 'reset', 0, ?, ?)",
                    (iso(now), counter, who, note),
                )

    def topup(
        self, counter: str, amount_micro: int, now: datetime, *, who: str, note: str | None = None
    ) -> None:
        """Add `amount_micro` to a budget counter's limit for good (a balance that never resets),
        recorded in `adjustments`."""
        if amount_micro <= 0:
            raise ValueError("a top-up must be a positive amount")
        with self._write() as conn:
            conn.execute(
                "INSERT INTO counters (counter, topup_micro) VALUES (?, ?) ON CONFLICT (counter) "
                "DO UPDATE SET topup_micro = topup_micro + excluded.topup_micro",
                (counter, amount_micro),
            )
            conn.execute(
                "INSERT INTO adjustments (at, counter, action, amount_micro, who, note) "
                "VALUES (?, ?, 'topup', ?, ?, ?)",
                (iso(now), counter, amount_micro, who, note),
            )

    def resolve_window(self, claim: Claim, now: datetime) -> Claim:
        """`claim` with its current window and effective limit, read-only (for `spendfuse status`)."""
        rows = self._read("SELECT anchor_at, topup_micro FROM counters WHERE counter = ?", (claim.scope,))
        anchor_text, topup = (rows[0][0], rows[0][1]) if rows else (None, 0)
        if anchor_text is None:
            anchor_text = counters.first_anchor(claim, now)  # not used yet: its first window would start now
        return counters.resolve(claim, anchor_text, topup, now)

    # -- context kept by providers --------------------------------------------------------------

    def context_tokens(self, ids: Sequence[str]) -> dict[str, int]:
        """The stored size, in tokens, of each context id this ledger has seen settle."""
        if not ids:
            return {}
        marks = ", ".join("?" * len(ids))
        rows = self._read(f"SELECT id, tokens FROM contexts WHERE id IN ({marks})", list(ids))
        return {row[0]: row[1] for row in rows}

    # -- reading ------------------------------------------------------------------------------

    def window_totals(self, scope: str, window_start: str) -> WindowTotals:
        """A window's spend and holds (nothing for a window never used)."""
        rows = self._read(
            "SELECT settled, held, settled_rest FROM totals WHERE scope = ? AND window_start = ?",
            (scope, window_start),
        )
        return WindowTotals(rows[0][0], rows[0][1], rows[0][2]) if rows else WindowTotals(0, 0)

    def request(self, request_id: str) -> dict[str, Any] | None:
        """A request's row, or None."""
        try:
            rows = list(self.db.query("SELECT * FROM requests WHERE id = ?", [request_id]))
        except sqlite3.Error as e:
            raise LedgerUnavailable(f"ledger read failed: {e}") from e
        return rows[0] if rows else None
