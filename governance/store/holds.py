"""The decisions a store makes inside its transactions, on rows it has read: whether a
reservation's claims fit their windows (and the room left), and what each claim of a finishing
request settles at. Pure functions: every store (SQLite, PostgreSQL) applies the same ones, so
they answer alike."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from governance.store import RecordRefusal, RequestRecord, ReserveResult, Room, WindowTotals, iso
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


@dataclass(frozen=True)
class Reservation:
    """A `reserve` call's arguments (`LedgerStore.reserve`)."""

    rec: RequestRecord
    claims: Sequence[Claim]
    reserved_micro: int
    now: datetime
    enforce: bool
    decision: str
    rule: str | None
    reason: str | None
    record_refusal: RecordRefusal


#: The request row's columns (`?` marks; PostgreSQL's store adapts them), filled by `request_row`.
INSERT_REQUEST = (
    "INSERT INTO requests (id, created_at, principal, provider, api, model, stream, "
    "est_input_tokens, max_output_tokens, reserved_micro, state, decision, rule, reason, "
    "price_source, requested_output_tokens, injected_output_tokens, counters) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def request_row(
    rec: RequestRecord,
    now: datetime,
    *,
    state: str,
    decision: str,
    reserved_micro: int,
    rule: str | None,
    reason: str | None,
    counters: str | None = None,
) -> tuple:
    """`INSERT_REQUEST`'s parameters."""
    return (
        rec.request_id, iso(now), rec.principal, rec.provider, rec.api, rec.model, int(rec.stream),
        rec.est_input_tokens, rec.max_output_tokens, reserved_micro, state, decision, rule, reason,
        rec.price_source, rec.requested_output_tokens, rec.injected_output_tokens, counters,
    )  # fmt: skip


#: Writes a request's row (`request_row`).
InsertRequest = Callable[[tuple], None]
#: Writes a request's claims and adds them to their windows' holds: `(request_id, claims)`.
Hold = Callable[[str, Sequence[Claim]], None]


def decide(
    r: Reservation,
    claims: Sequence[Claim],
    found: dict[tuple[str, str], WindowTotals],
    insert_request: InsertRequest,
    hold: Hold,
) -> ReserveResult:
    """Inside a store's transaction, with `claims` resolved to their windows and `found` their
    totals: refuse (recording it or not), or hold every claim (in dry run, regardless)."""
    check_ = check(claims, found, r.rec.est_input_tokens or 0)
    blocking = check_.blocking
    decision, rule = r.decision, r.rule
    if blocking is not None and r.enforce:
        assert blocking.blocking is not None
        room = check_.room
        record = (
            r.record_refusal
            if isinstance(r.record_refusal, bool)
            else r.record_refusal(blocking.blocking, room)
        )
        if record:
            insert_request(
                request_row(
                    r.rec, r.now, state="refused", decision="refused", reserved_micro=0,
                    rule=blocking.blocking.rule, reason=r.reason,
                )
            )  # fmt: skip
        return replace(blocking, room=room.usd, output_room=room.output_tokens, recorded=record)
    if blocking is not None:  # dry run: held regardless, recorded as a would-be refusal
        assert blocking.blocking is not None
        decision, rule = "dry_run", rule or blocking.blocking.rule
    insert_request(
        request_row(
            r.rec, r.now, state="held", decision=decision, reserved_micro=r.reserved_micro, rule=rule,
            reason=r.reason, counters=",".join(c.scope for c in claims),
        )
    )  # fmt: skip
    hold(r.rec.request_id, claims)
    if blocking is not None:  # dry run: held anyway, and the would-be refusal reported
        return replace(blocking, granted=True, room=None)
    return granted(claims, check_.lefts)


@dataclass(frozen=True)
class Finish:
    """How a hold finishes: replaced by `cost_micro` plus its rest `cost_submicro` (atto-USD), or
    by its own reserved amount when `cost_micro` is None; the request's final `state`."""

    request_id: str
    cost_micro: int | None
    state: str
    outcome: str
    now: datetime
    cost_submicro: int = 0
    usage: Usage | None = None
    price_source: str | None = None


#: The finished request's row (`?` marks; PostgreSQL's store adapts them).
SETTLE_REQUEST = (
    "UPDATE requests SET state = ?, outcome = ?, settled_at = ?, cost_micro = ?, "
    "cost_submicro = ?, input_tokens = ?, output_tokens = ?, cache_read_tokens = ?, "
    "cache_write_tokens = ?, "
    "price_source = COALESCE(?, price_source), model = COALESCE(model, ?) WHERE id = ?"
)


def settle_request_params(f: Finish, cost_micro: int) -> tuple:
    """`SETTLE_REQUEST`'s parameters."""
    u = f.usage
    return (
        f.state, f.outcome, iso(f.now), cost_micro, f.cost_submicro,
        u.input_tokens if u else None, u.output_tokens if u else None,
        u.cache_read_tokens if u else None, u.cache_write_tokens if u else None,
        f.price_source, u.model if u else None, f.request_id,
    )  # fmt: skip


def context_rows(usage: Usage, now: datetime) -> list[tuple[str, int, str]]:
    """`(id, tokens, updated_at)` of the contexts an answer ended: its response id and its
    conversation (whose latest answer is its running size). A store keeps the larger size:
    turns of a conversation may settle out of order, and the reservation must never shrink
    below what the provider already holds."""
    size = usage.input_tokens + usage.output_tokens
    keys = []
    if usage.response_id:
        keys.append(f"response:{usage.response_id}")
    if usage.conversation_id:
        keys.append(f"conversation:{usage.conversation_id}")
    return [(key, size, iso(now)) for key in sorted(keys)]
