"""The counters and totals of a SQLite ledger, inside a write transaction: anchors set at first
use, a reshaped counter's spend carried over, and the totals of the windows a request claims.
What the anchors mean is `governance.store.counters`'s."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import datetime

from governance import money
from governance.store import WindowTotals, counters
from governance.types import Claim


def resolve_windows(conn: sqlite3.Connection, claims: Sequence[Claim], now: datetime) -> list[Claim]:
    """Each claim with its current window (`window_start`, `resets`) and its effective limit
    (plus top-ups). Rolling windows run from their counter's anchor, set here at first use; an
    operator's reset moves the anchor, which starts a new window of any kind. A counter whose
    window changed shape in the rules carries its current window's spend into the new one."""
    if not claims:
        return []
    marks = ", ".join("?" * len(claims))
    rows = conn.execute(
        f"SELECT counter, anchor_at, topup_micro, shape FROM counters WHERE counter IN ({marks})",
        [c.scope for c in claims],
    ).fetchall()
    return counters.resolve_known(
        claims,
        {r[0]: (r[1], r[2], r[3]) for r in rows},
        now,
        first_use=lambda counter, anchor, shape: conn.execute(
            "INSERT INTO counters (counter, anchor_at, shape) VALUES (?, ?, ?)", (counter, anchor, shape)
        ),
        change_shape=lambda claim, was, anchor: _change_shape(conn, claim, was, anchor, now),
        set_shape=lambda counter, shape, anchor: conn.execute(
            "UPDATE counters SET shape = ?, anchor_at = ? WHERE counter = ?", (shape, anchor, counter)
        ),
    )


def _change_shape(
    conn: sqlite3.Connection, claim: Claim, was: str, anchor_text: str | None, now: datetime
) -> str | None:
    """The rules changed a counter's window (its reset, calendar alignment or zone): the
    spend and holds of the window in force until now move into the new shape's current
    window, so that a change never loses recorded spend. Returns the counter's anchor."""
    old_key, new_key, anchor_text = counters.reshaped(claim, was, anchor_text, now)
    if old_key == new_key:
        return anchor_text
    row = conn.execute(
        "SELECT settled, held, settled_rest FROM totals WHERE scope = ? AND window_start = ?",
        (claim.scope, old_key),
    ).fetchone()
    if row is None:
        return anchor_text
    conn.execute(
        "INSERT INTO totals (scope, window_start) VALUES (?, ?) ON CONFLICT DO NOTHING",
        (claim.scope, new_key),
    )
    carry = money.add_sql("settled", "settled_rest")  # the rest carried exactly
    conn.execute(
        f"UPDATE totals SET held = held + ?, {carry} WHERE scope = ? AND window_start = ?",
        (row[1], row[0], row[2], row[2], claim.scope, new_key),
    )
    conn.execute("UPDATE totals SET held = 0 WHERE scope = ? AND window_start = ?", (claim.scope, old_key))
    # Holds in flight settle where they now are: in the new window.
    conn.execute(
        "UPDATE claims SET window_start = ? WHERE scope = ? AND window_start = ? AND state = 'held'",
        (new_key, claim.scope, old_key),
    )
    return anchor_text


def totals_of(conn: sqlite3.Connection, claims: Sequence[Claim]) -> dict[tuple[str, str], WindowTotals]:
    """The totals of every claim's window, in one query on the primary key."""
    scopes = list({c.scope for c in claims})
    starts = list({c.window_start for c in claims})
    scope_marks, start_marks = ", ".join("?" * len(scopes)), ", ".join("?" * len(starts))
    rows = conn.execute(
        f"SELECT scope, window_start, settled, held, settled_rest FROM totals "
        f"WHERE scope IN ({scope_marks}) AND window_start IN ({start_marks})",
        [*scopes, *starts],
    ).fetchall()
    return {(r[0], r[1]): WindowTotals(r[2], r[3], r[4]) for r in rows}
