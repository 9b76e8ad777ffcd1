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
from datetime import datetime, timedelta
from functools import partial

from governance import money
from governance.store import (
    RequestRecord,
    ReserveResult,
    holds,
    iso,
)
from governance.store.sqlite_counters import resolve_windows, totals_of
from governance.store.sqlite_file import SqliteFile
from governance.store.sqlite_reports import SqliteReports
from governance.store.verbs import StoreVerbs
from governance.types import Claim
from governance.units import unit_of


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


class SqliteStore(StoreVerbs, SqliteReports, SqliteFile):
    """The ledger in a SQLite file (`SqliteStore.open(path)`): a `LedgerStore`."""

    def _reserve(self, r: holds.Reservation) -> ReserveResult:
        with self._write() as conn:
            claims = resolve_windows(conn, r.claims, r.now)
            found = totals_of(conn, claims) if claims else {}
            return holds.decide(
                r, claims, found, partial(conn.execute, holds.INSERT_REQUEST), partial(_hold, conn)
            )

    def record_refusal(
        self, rec: RequestRecord, now: datetime, *, rule: str, reason: str | None, decision: str = "refused"
    ) -> None:
        """Record a request refused before any reservation (parse, price, multiplier, endpoint)."""
        with self._write() as conn:
            conn.execute(
                holds.INSERT_REQUEST,
                holds.request_row(
                    rec, now, state="refused", decision=decision, reserved_micro=0, rule=rule, reason=reason
                ),
            )

    def _finish(self, f: holds.Finish) -> bool:
        """`StoreVerbs._finish`: one `BEGIN IMMEDIATE` transaction."""
        with self._write() as conn:
            rows = conn.execute(
                "SELECT r.state, r.reserved_micro, c.scope, c.window_start, c.amount, c.unit "
                "FROM requests r LEFT JOIN claims c ON c.request_id = r.id WHERE r.id = ?",
                (f.request_id,),
            ).fetchall()
            if not rows or rows[0][0] not in ("held", "expired"):
                return False  # already settled or released: settlement is idempotent
            cost_micro = rows[0][1] if f.cost_micro is None else f.cost_micro
            totals, finals = holds.finished_claims(
                rows, f.request_id, cost_micro, f.cost_submicro, f.usage, f.state
            )
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
            conn.execute(holds.SETTLE_REQUEST, holds.settle_request_params(f, cost_micro))
            if f.usage is not None:
                conn.executemany(
                    "INSERT INTO contexts (id, tokens, updated_at) VALUES (?, ?, ?) ON CONFLICT (id) "
                    "DO UPDATE SET tokens = MAX(tokens, excluded.tokens), updated_at = excluded.updated_at",
                    holds.context_rows(f.usage, f.now),
                )
            return True

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

    # -- context kept by providers --------------------------------------------------------------

    def context_tokens(self, ids: Sequence[str]) -> dict[str, int]:
        """The stored size, in tokens, of each context id this ledger has seen settle."""
        if not ids:
            return {}
        marks = ", ".join("?" * len(ids))
        rows = self._read(f"SELECT id, tokens FROM contexts WHERE id IN ({marks})", list(ids))
        return {row[0]: row[1] for row in rows}

    # -- reading ------------------------------------------------------------------------------
