"""The counters and totals of a PostgreSQL ledger, inside a reservation's transaction.

`lock_windows` locks every counter a reservation claims, in one statement and in sorted order
(new counters are inserted and existing ones locked by the same upsert, row by row in the order
given), so two reservations that share counters queue on the first they share and never
deadlock. While a reservation holds its counters' locks no other reservation can check or hold
against them; a settlement running at the same time only moves a hold to spend by atomic
increments (never above the hold it replaces, bar a late correction that serial order would
also have allowed), so the check stays exact. "Sorted" is Python's order, code point by code
point: the stores' ORDER BY clauses say COLLATE "C" (the same order) whatever the database's
collation, so every transaction takes totals rows in one order. The locks end with the
transaction: none is held across the upstream call. What the anchors mean is `governance.store.counters`'s."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import psycopg

from governance import money
from governance.store import WindowTotals, counters
from governance.types import Claim

_LOCK = (
    "INSERT INTO counters AS c (counter, anchor_at, shape) "
    "SELECT * FROM unnest(%s::text[], %s::text[], %s::text[]) "
    "ON CONFLICT (counter) DO UPDATE SET counter = c.counter "
    "RETURNING counter, anchor_at, topup_micro, shape"
)


def lock_windows(
    cur: psycopg.Cursor, claims: Sequence[Claim], now: datetime, seen: counters.Known | None = None
) -> list[Claim]:
    """Each claim with its current window and effective limit (`sqlite_counters.resolve_windows`'s
    contract), its counter locked until the transaction ends. The counters' rows as they end up
    are added to `seen`."""
    if not claims:
        return []
    first: dict[str, Claim] = {}
    for claim in claims:
        first.setdefault(claim.scope, claim)
    scopes = sorted(first)
    cur.execute(
        _LOCK,
        (
            scopes,
            [counters.first_anchor(first[s], now) for s in scopes],
            [counters.shape(first[s]) for s in scopes],
        ),
    )
    rows: counters.Known = {r[0]: (r[1], r[2], r[3]) for r in cur.fetchall()}
    resolved = counters.resolve_known(
        claims,
        rows,
        now,
        first_use=_never,  # every counter claimed has a row by now: the upsert made it
        change_shape=lambda claim, was, anchor: _change_shape(cur, claim, was, anchor, now),
        set_shape=lambda counter, shape, anchor: cur.execute(
            "UPDATE counters SET shape = %s, anchor_at = %s WHERE counter = %s", (shape, anchor, counter)
        ),
    )
    if seen is not None:
        seen.update(rows)
    return resolved


def _never(counter: str, anchor: str | None, shape: str) -> None:
    raise AssertionError(f"counter {counter} was not locked")


def _change_shape(
    cur: psycopg.Cursor, claim: Claim, was: str, anchor_text: str | None, now: datetime
) -> str | None:
    """The rules reshaped a counter's window: the old window's spend, and the holds still in
    flight there, move into the new shape's current window (see `sqlite_counters`)."""
    old_key, new_key, anchor_text = counters.reshaped(claim, was, anchor_text, now)
    if old_key == new_key:
        return anchor_text
    cur.execute(
        "SELECT settled, settled_rest FROM totals WHERE scope = %s AND window_start = %s FOR UPDATE",
        (claim.scope, old_key),
    )
    row = cur.fetchone()
    if row is None:
        return anchor_text
    # The holds that move are those whose claims move: a settlement finishing meanwhile keeps its own.
    cur.execute(
        "UPDATE claims SET window_start = %s WHERE scope = %s AND window_start = %s AND state = 'held' "
        "RETURNING amount",
        (new_key, claim.scope, old_key),
    )
    moved = sum(r[0] for r in cur.fetchall())
    cur.execute(
        "INSERT INTO totals (scope, window_start) VALUES (%s, %s) ON CONFLICT DO NOTHING",
        (claim.scope, new_key),
    )
    carry = money.add_sql("settled", "settled_rest").replace("%", "%%").replace("?", "%s")
    cur.execute(
        f"UPDATE totals SET held = held + %s, {carry} WHERE scope = %s AND window_start = %s",
        (moved, row[0], row[1], row[1], claim.scope, new_key),
    )
    cur.execute(
        "UPDATE totals SET held = held - %s WHERE scope = %s AND window_start = %s",
        (moved, claim.scope, old_key),
    )
    return anchor_text


def totals_of(cur: psycopg.Cursor, claims: Sequence[Claim]) -> dict[tuple[str, str], WindowTotals]:
    """The totals of every claim's window, in one query on the primary key."""
    cur.execute(
        "SELECT scope, window_start, settled, held, settled_rest FROM totals "
        "WHERE (scope, window_start) IN (SELECT * FROM unnest(%s::text[], %s::text[]))",
        ([c.scope for c in claims], [c.window_start for c in claims]),
    )
    return {(r[0], r[1]): WindowTotals(r[2], r[3], r[4]) for r in cur.fetchall()}
