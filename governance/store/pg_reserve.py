"""A PostgreSQL reservation in one round trip: the proxy computes each claim's window from the
counters' rows it last saw and the database's clock as it last saw it, and `spendfuse_reserve`
(`governance.store.pg_functions`) checks those expectations, the claims and the holds in one
statement. When an expectation no longer holds the function writes nothing and answers `stale`
with the database's clock and the counters' rows; the proxy computes again from those. A counter
never used, or one the rules reshaped, is left to the multi-statement transaction
(`governance.store.pg_counters`), which creates or carries it over."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from governance.store import ReserveResult, WindowTotals, counters, holds
from governance.types import Claim

RESERVE_SQL = "SELECT * FROM spendfuse_reserve(" + ", ".join(["%s"] * 29) + ")"


@dataclass(frozen=True)
class Expected:
    """A reservation's claims in the windows the proxy expects, and the function's arguments."""

    claims: list[Claim]  # in their windows; limits are the rules' (the function adds top-ups)
    params: tuple


def expect(
    r: holds.Reservation, known: counters.Known, now: datetime, p_now: datetime | None
) -> Expected | None:
    """The call that reserves `r` if every counter is as `known` says at `now`; None if one is
    unknown or has another shape (the multi-statement transaction handles those)."""
    scopes: dict[str, tuple[str | None, str]] = {}
    resolved, starts, ends = [], [], []
    for claim in r.claims:
        row = known.get(claim.scope)
        shape = counters.shape(claim)
        if row is None or row[2] != shape:
            return None
        scopes[claim.scope] = (row[0], shape)
        key, resets, since, until = counters.window_bounds(claim, row[0], now)
        resolved.append(counters.in_window(claim, key, resets, claim.limit))
        starts.append(since)
        ends.append(until)
    sorted_scopes = sorted(scopes)
    rec = r.rec
    params = (
        p_now,
        sorted_scopes,
        [scopes[s][0] for s in sorted_scopes],
        [scopes[s][1] for s in sorted_scopes],
        [c.scope for c in resolved],
        [c.window_start for c in resolved],
        starts,
        ends,
        [c.amount for c in resolved],
        [c.limit for c in resolved],
        [c.unit.value for c in resolved],
        [c.rule for c in resolved],
        r.enforce,
        r.record_refusal if isinstance(r.record_refusal, bool) else False,
        rec.request_id, rec.principal, rec.provider, rec.api, rec.model, int(rec.stream),
        rec.est_input_tokens, rec.max_output_tokens, r.reserved_micro, r.decision, r.rule, r.reason,
        rec.price_source, rec.requested_output_tokens, rec.injected_output_tokens,
    )  # fmt: skip
    return Expected(resolved, params)


def learn(known: counters.Known, scopes: Sequence[str], answer: tuple) -> None:
    """Remember the counters' rows an answer carries (and forget those of `scopes` it lacks)."""
    rows = {}
    for counter, anchor, topup, shape in zip(*(a or [] for a in answer[6:10]), strict=True):
        rows[counter] = (anchor, topup, shape)
    for scope in scopes:
        row = rows.get(scope)
        if row is None:
            known.pop(scope, None)
        else:
            known[scope] = row


def outcome(r: holds.Reservation, e: Expected, answer: tuple) -> tuple[ReserveResult, tuple | None]:
    """The reservation's result from the function's answer (`holds.decide` on the totals it saw,
    so both stores answer alike), and the refusal row still to write when the caller's
    `record_refusal` is a callable that asked for it."""
    status, db_now, settled, held, rest, topups = answer[:6]
    claims = [
        counters.in_window(c, c.window_start, c.resets, c.limit + topup)
        for c, topup in zip(e.claims, topups, strict=True)
    ]
    found = {
        (c.scope, c.window_start): WindowTotals(s, h, x)
        for c, s, h, x in zip(claims, settled, held, rest, strict=True)
    }
    rows: list[tuple] = []
    result = holds.decide(replace(r, now=db_now), claims, found, rows.append, lambda rid, cl: None)
    if result.granted != (status == "granted"):
        raise AssertionError(f"the ledger's function answered {status} where the check says {result}")
    late = rows[0] if status == "refused" and rows and not isinstance(r.record_refusal, bool) else None
    return result, late
