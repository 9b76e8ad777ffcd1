"""The decisions a store makes inside its transactions, on rows it has read: whether a
reservation's claims fit their windows (and the room left), and what each claim of a finishing
request settles at. Pure functions: every store (SQLite, PostgreSQL) applies the same ones, so
they answer alike."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from governance.store import ReserveResult, Room, WindowTotals
from governance.types import Claim, Usage
from governance.units import BY_TEXT, Unit

_NO_TOTALS = WindowTotals(0, 0)


@dataclass(frozen=True)
class Check:
    """Every claim checked against its window: the first that does not fit, and the room left."""

    blocking: ReserveResult | None
    room: Room
    lefts: list[int]


def check(claims: Sequence[Claim], found: dict[tuple[str, str], WindowTotals], input_tokens: int) -> Check:
    blocking: ReserveResult | None = None
    usd_room: int | None = None
    output_room: int | None = None
    lefts = []
    for claim in claims:
        t = found.get((claim.scope, claim.window_start), _NO_TOTALS)
        left = claim.limit - t.used  # exact spend + holds against the limit
        lefts.append(left)
        if claim.unit is Unit.USD:
            usd_room = left if usd_room is None else min(usd_room, left)
        elif (spare := claim.unit.output_room(left, input_tokens)) is not None:  # a token limit on output
            output_room = spare if output_room is None else min(output_room, spare)
        if blocking is None and claim.amount > left:
            blocking = ReserveResult(False, claim, t.settled, t.held, t.settled_rest)
    return Check(blocking, Room(usd_room, output_room), lefts)


def granted(claims: Sequence[Claim], lefts: Sequence[int]) -> ReserveResult:
    """A granted reservation, with the USD left in its tightest budget after the hold."""
    tightest: tuple[int, str] | None = None
    for claim, left in zip(claims, lefts, strict=True):
        if claim.unit is Unit.USD and (tightest is None or left - claim.amount < tightest[0]):
            tightest = (left - claim.amount, claim.rule)
    return ReserveResult(
        True, remaining_micro=tightest[0] if tightest else None, binding=tightest[1] if tightest else None
    )


def finished_claims(
    rows: list[tuple], request_id: str, cost_micro: int, cost_submicro: int, usage: Usage | None, state: str
) -> tuple[list[tuple], list[tuple]]:
    """The totals updates and final claim rows of a request's claims `rows` as it finishes."""
    was_expired = rows[0][0] == "expired"
    used = (usage.input_tokens, usage.output_tokens) if usage is not None else None
    totals, finals = [], []
    for _, _, scope, window_start, amount, unit_text in rows:
        if scope is None:
            continue  # a hold with no claims (no limit applied)
        unit = BY_TEXT[unit_text]  # an unknown unit raises: the hold stays until reaped
        final = unit.final_amount(amount, cost_micro, used, released=state == "released")
        # An expired hold was already charged by the reaper: correct it to the real amount.
        held_back = 0 if was_expired else amount
        charged = final - unit.at_expiry(amount) if was_expired else final
        rest = cost_submicro if unit is Unit.USD else 0  # only money has a rest
        totals.append((held_back, charged, rest, rest, scope, window_start))
        finals.append((final, rest, request_id, scope, window_start))
    return totals, finals
