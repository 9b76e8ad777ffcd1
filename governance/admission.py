"""Admission: price a request's worst case, and hold it against every limit, or refuse it.

Pricing never runs inside the ledger's write transaction. A reservation the room does not take
reports the room its windows had left; with output-cap injection, the largest output cap that
fits that room is priced outside, and the smaller request is reserved again under the same
all-or-none check. Another process may have taken the room in between: the store then refuses
again with the room it now sees, and the fit is computed again, at most `MAX_ATTEMPTS` times in
all (then the request is refused). So a race is never an overspend; a request that fits at
first asks the ledger exactly once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

from governance import checks, refusals, server_tools
from governance.errors import PricingError
from governance.pricing import tier_thresholds
from governance.store import Refit, RequestRecord, ReserveResult, Room
from governance.types import Claim, Decision, Priced, Refusal, RequestInfo, from_micro, to_micro
from governance.units import Unit

if TYPE_CHECKING:
    from governance.engine import Engine
    from governance.rulemodels import ClampOutput

logger = logging.getLogger(__name__)

#: Reservations tried for one request before a race for the same room refuses it.
MAX_ATTEMPTS = 4

Fitter = Callable[[Room], Refit | None]


def admit(engine: Engine, info: RequestInfo, now: datetime, *, count_may_help: bool = False) -> Decision:
    """`Engine.admit`: check the rules, price the worst case and reserve it against every limit."""
    key = engine.scopes.keys.get(info.key_id) if info.key_id else None
    refusal = checks.stateless_checks(info, engine.policy, key, now)
    if refusal is not None and not engine.dry_run:
        return engine.refuse(engine._record(info), refusal, now)
    if info.unpriced_fees and engine.policy.estimate.unpriced_tool_fees == "refuse":
        return engine.refuse(engine._record(info), refusals.unpriced_tool_fees(info.unpriced_fees), now)
    known = engine.ledger.context_tokens(info.server_context) if info.server_context else {}
    bounded = server_tools.bound_input(info, known, refuse=engine.policy.estimate.server_input == "refuse")
    if isinstance(bounded, Refusal):
        return engine.refuse(engine._record(info), bounded, now)
    info = bounded
    if count_may_help and straddles_tier(engine, info):
        # Near a long-context tier the price hinges on the exact count: ask for it first.
        return Decision(allowed=False, hinges_on_count=True)
    try:
        worst = engine._worst_case(info, info.max_output_tokens, now)
    except PricingError as e:
        return engine.refuse(engine._record(info), refusals.unpriced_model(e), now)
    amount = to_micro(worst.cost)
    every_round = replace(info, max_output_tokens=info.max_output_tokens * info.tool_rounds)
    claims = checks.claims(engine.scopes.applicable(key, info.provider, info.model), every_round, amount)
    # With output-cap injection, a request that set no cap gets the cap it is reserved for.
    clamp = clamp_of(engine, info)
    inject = (
        info.max_output_tokens // info.choices if clamp and info.requested_output_tokens is None else None
    )
    rec = engine._record(info, worst.source, injected=inject)
    result = reserve(engine, info, rec, claims, amount, now, refusal=refusal, count_may_help=count_may_help)
    if result.refit is not None:
        amount, inject = result.refit.amount_micro, result.refit.rec.injected_output_tokens
    return _decide(engine, info, rec, result, amount, inject, refusal, now, count_may_help)


def _decide(
    engine: Engine,
    info: RequestInfo,
    rec: RequestRecord,
    result: ReserveResult,
    amount: int,
    inject: int | None,
    refusal: Refusal | None,
    now: datetime,
    count_may_help: bool,
) -> Decision:
    """The decision on a reservation's result; a budget refusal carries every number."""
    if result.blocking is not None:
        budget = checks.quota_refusal(
            result.blocking,
            result.settled,
            result.held,
            now,
            smallest_micro=smallest_claim(engine, info, result.blocking, now),
            settled_rest=result.settled_rest,
        )
        if not result.granted:
            if count_may_help:
                # Only money hinges on the input estimate's margins; a request count does not.
                if result.blocking.unit == Unit.USD and fits_at_lower_end(engine, info, result.room, now):
                    return Decision(allowed=False, refusal=budget, hinges_on_count=True)
                engine.ledger.record_refusal(rec, now, rule=budget.rule, reason=None)
            return Decision(allowed=False, refusal=budget)
        logger.warning("dry run: would refuse %s: %s", info.request_id, budget.message)
        refusal = refusal or budget
    elif refusal is not None:
        logger.warning("dry run: would refuse %s (%s): %s", info.request_id, refusal.rule, refusal.message)
    return Decision(
        allowed=True,
        reserved=from_micro(amount),
        refusal=refusal,
        output_cap=inject,
        remaining=from_micro(result.remaining_micro) if result.remaining_micro is not None else None,
        binding=result.binding,
    )


def reserve(
    engine: Engine,
    info: RequestInfo,
    rec: RequestRecord,
    claims: Sequence[Claim],
    amount: int,
    now: datetime,
    *,
    refusal: Refusal | None,
    count_may_help: bool,
) -> ReserveResult:
    """Hold `claims`, or make the request fit the room its windows have left (output-cap
    injection) and hold that, or refuse. A refusal is recorded unless `count_may_help` (the
    caller decides then); a refusal the fit may turn around is left unrecorded in the store's
    transaction, and recorded here once the fit is known not to help."""
    fitting = clamp_of(engine, info) is not None and not engine.dry_run
    fit = fitter(engine, info, rec, now) if fitting else None
    record = not count_may_help
    tried: Room | None = None  # the room the fit being reserved was computed for

    def record_now(blocking: Claim, room: Room) -> bool:
        if not record:
            return False
        if tried is None:  # the request as sent: final unless a fit may still admit it
            return fit is None or not may_fit(engine, info, blocking, room)
        # A fitted request refused in the room it was fitted for is final (recorded as fitted);
        # in another room, the room moved under it: fit again, or record the request as sent.
        return room == tried

    result = engine.ledger.reserve(
        rec,
        claims,
        amount,
        now,
        enforce=not engine.dry_run,
        decision="dry_run" if refusal is not None else "allowed",
        rule=refusal.rule if refusal else None,
        reason=refusal.message if refusal else None,
        record_refusal=record_now,
    )
    for _ in range(MAX_ATTEMPTS - 1):
        if result.granted or result.recorded or result.blocking is None or fit is None:
            return result
        room = Room(result.room, result.output_room)
        if room == tried or not may_fit(engine, info, result.blocking, room):
            break
        refit = fit(room)  # priced here, outside any transaction
        if refit is None:
            break
        tried = room
        claims = [_refitted(c, refit) for c in claims]
        result = engine.ledger.reserve(refit.rec, claims, refit.amount_micro, now, record_refusal=record_now)
        if result.granted:
            return replace(result, refit=refit)
    if record and not result.granted and not result.recorded and result.blocking is not None:
        engine.ledger.record_refusal(rec, now, rule=result.blocking.rule, reason=None)
    return replace(result, recorded=record)


def clamp_of(engine: Engine, info: RequestInfo) -> ClampOutput | None:
    """The rules' output-cap injection for `info`: none for a request signed over its bytes
    (Bedrock's SigV4), which is reserved at its own cap and never rewritten."""
    return None if info.body_fixed else engine.policy.clamp_output


def _refitted(claim: Claim, refit: Refit) -> Claim:
    """A claim of a request made to fit: USD at the refit's amount, tokens at its worst case."""
    r = refit.rec
    amount = Unit(claim.unit).refitted(
        claim.amount, refit.amount_micro, r.est_input_tokens or 0, r.max_output_tokens or 0
    )
    return replace(claim, amount=amount)


def _cap_range(engine: Engine, info: RequestInfo, output_room: int | None) -> tuple[int, int]:
    """`(floor, highest)` output cap per choice the fit may choose from."""
    assert engine.policy.clamp_output is not None
    low, high = engine.policy.clamp_output.floor_tokens, info.max_output_tokens // info.choices - 1
    if output_room is not None:
        high = min(high, output_room // (info.choices * info.tool_rounds))
    return low, high


def may_fit(engine: Engine, info: RequestInfo, blocking: Claim, room: Room) -> bool:
    """Whether a smaller output cap may make the request fit `room`, without pricing: the
    blocking limit counts money or output, there is room left, and the floor is below the cap."""
    if not Unit(blocking.unit).fittable:
        return False
    if (room.usd is not None and room.usd <= 0) or (
        room.output_tokens is not None and room.output_tokens <= 0
    ):
        return False
    low, high = _cap_range(engine, info, room.output_tokens)
    return low <= high


def fitter(engine: Engine, info: RequestInfo, rec: RequestRecord, now: datetime) -> Fitter:
    """The fit of the request to a room: the largest output cap per choice, down to the rules'
    floor, whose worst case fits the USD room left and whose output fits the output tokens left
    under token limits; None when not even the floor fits."""

    def cost(cap: int) -> Priced:  # every modifier the full worst case has: tier, fees, audio
        return engine._worst_case(info, cap * info.choices, now)

    def fits(cap: int, room: int | None) -> bool:
        return room is None or to_micro(cost(cap).cost) <= room

    def fit(room: Room) -> Refit | None:
        low, high = _cap_range(engine, info, room.output_tokens)
        if high < low or not fits(low, room.usd):
            return None
        while low < high:  # the largest cap whose worst case fits: cost is monotone in it
            mid = (low + high + 1) // 2
            if fits(mid, room.usd):
                low = mid
            else:
                high = mid - 1
        priced = cost(low)
        fitted = replace(
            rec, max_output_tokens=low * info.choices, injected_output_tokens=low, price_source=priced.source
        )
        return Refit(to_micro(priced.cost), fitted)

    return fit


def smallest_claim(engine: Engine, info: RequestInfo, claim: Claim, now: datetime) -> int | None:
    """What `claim` would be with the output cap injection may write at its smallest (the
    rules' floor): a request that fits an empty window at the floor is worth retrying."""
    clamp = clamp_of(engine, info)
    unit = Unit(claim.unit)
    if clamp is None or engine.dry_run or not unit.fittable:
        return None
    cap = min(clamp.floor_tokens, info.max_output_tokens // info.choices) * info.choices
    if unit.is_money:
        return to_micro(engine._worst_case(info, cap, now).cost)
    return unit.tokens(info.input_tokens, cap * info.tool_rounds)


def fits_at_lower_end(engine: Engine, info: RequestInfo, room: int | None, now: datetime) -> bool:
    """Whether `info` would fit `room` at its estimate's lower end (the estimate without its
    margins): then a refusal hinges on the provider's own count, which is worth asking for."""
    if room is None:
        return False
    estimate = engine.policy.estimate
    widest = estimate.input_margin * max(estimate.script_margins.values(), default=1)
    low = replace(info, input_tokens=int(info.input_tokens / widest))
    return to_micro(engine._worst_case(low, info.max_output_tokens, now).cost) <= room


def straddles_tier(engine: Engine, info: RequestInfo) -> bool:
    """Whether the input estimate's range (without its margins, to with them) straddles a
    long-context tier threshold: the request's price then hinges on the exact count."""
    estimate = engine.policy.estimate
    widest = estimate.input_margin * max(estimate.script_margins.values(), default=1)
    low, high = int(info.input_tokens / widest), info.input_tokens
    return any(low < t <= high for t in tier_thresholds(info.provider, info.model))
