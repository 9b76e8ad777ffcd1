"""The operator's adjustments of a PostgreSQL ledger: resets and top-ups, each one transaction
that locks the counter it changes (so a reservation checking that counter sees all of it or none)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import psycopg


class PgOperator:
    """`reset` and `topup` over `_transact` (`governance.store.pg_conn.PgConnection`)."""

    _transact: Callable[[Callable[[psycopg.Cursor], Any]], Any]
    db_clock: bool

    def _at(self, now: datetime) -> datetime | None:
        """The time a write is stamped with: None, the database's clock, unless time is injected."""
        return None if self.db_clock else now

    def reset(self, counters: Sequence[str], now: datetime, *, who: str, note: str | None = None) -> None:
        """Start a new window of each counter now (the database's clock unless time is injected);
        history stays (`SqliteStore.reset`'s contract)."""

        def tx(cur: psycopg.Cursor) -> None:
            for counter in sorted(set(counters)):
                cur.execute(
                    "INSERT INTO counters (counter, anchor_at) "
                    "VALUES (%s, spendfuse_iso(coalesce(%s, clock_timestamp()))) ON CONFLICT (counter) "
                    "DO UPDATE SET anchor_at = excluded.anchor_at",
                    (counter, self._at(now)),
                )
            for counter in counters:
                cur.execute(
                    "INSERT INTO adjustments (at, counter, action, amount_micro, who, note) "
                    "VALUES (spendfuse_iso(coalesce(%s, clock_timestamp())), %s, 'reset', 0, %s, %s)",
                    (self._at(now), counter, who, note),
                )

        self._transact(tx)

    def topup(
        self, counter: str, amount_micro: int, now: datetime, *, who: str, note: str | None = None
    ) -> None:
        """Add `amount_micro` to a budget counter's limit for good, recorded in `adjustments`."""
        if amount_micro <= 0:
            raise ValueError("a top-up must be a positive amount")

        def tx(cur: psycopg.Cursor) -> None:
            cur.execute(
                "INSERT INTO counters AS c (counter, topup_micro) VALUES (%s, %s) ON CONFLICT (counter) "
                "DO UPDATE SET topup_micro = c.topup_micro + excluded.topup_micro",
                (counter, amount_micro),
            )
            cur.execute(
                "INSERT INTO adjustments (at, counter, action, amount_micro, who, note) "
                "VALUES (spendfuse_iso(coalesce(%s, clock_timestamp())), %s, 'topup', %s, %s, %s)",
                (self._at(now), counter, amount_micro, who, note),
            )

        self._transact(tx)
