"""Budgets and rate limits: the claims a request makes, and the refusal when one does not fit.

Every limit that applies to a request becomes a claim on a counter. Rate limits come first,
then budgets, each in scope order (key, team, customer, models, providers, global), so the
first failure is always the same one. Counters are named here and nowhere else, so two limits
never share a counter by accident, and a version 1 file's global budget keeps its old counter.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

from governance import money, windows
from governance.limits import BudgetRule, RateLimitRule
from governance.scopes import Scope
from governance.types import (
    Claim,
    Refusal,
    RefusalKind,
    RequestInfo,
    from_micro,
    limit_to_micro,
    usd,
)
from governance.units import Unit, token_unit

BUDGET_PREFIX = "budget:"
RATE_PREFIX = "rate_limit:"


def budget_counter(scope: str, budget_id: str) -> str:
    """The ledger counter of a budget on a scope. The global scope keeps version 1's names."""
    if scope == "global":
        return "global" if budget_id == "global" else f"global:{budget_id}"
    return f"{scope}|{budget_id}"


def rate_counter(scope: str, limit_id: str, unit: Unit) -> str:
    """The ledger counter of one part (requests, tokens, in flight) of a rate limit on a scope."""
    return f"{scope}|{limit_id}|{unit.part}"


def _rule_name(prefix: str, scope: str, rule_id: str) -> str:
    return f"{prefix}{rule_id}" if scope == "global" else f"{prefix}{rule_id}@{scope}"


def _tokens(unit: Unit, req: RequestInfo | None) -> int:
    return unit.tokens(req.input_tokens, req.max_output_tokens) if req is not None else 0


def rate_claims(scope: str, rule: RateLimitRule, req: RequestInfo | None) -> list[Claim]:
    """A rate limit's claims: each part it limits is a claim of its own, with its own window."""
    tokens = token_unit(rule.count_tokens)
    parts = (  # (limit, unit, amount, reset): each part of the rate limit that is set
        (rule.max_requests, Unit.REQUESTS, 1, rule.requests_reset),
        (rule.max_tokens, tokens, _tokens(tokens, req), rule.tokens_reset),
        (rule.max_in_flight, Unit.IN_FLIGHT, 1, "never"),  # not a window: a hold while in flight
    )
    out = []
    for limit, unit, amount, reset in parts:
        if limit is None:
            continue
        out.append(
            Claim(
                scope=rate_counter(scope, rule.id, unit),
                window_start="",
                resets="",
                limit=limit,
                amount=amount,
                rule=_rule_name(RATE_PREFIX, scope, f"{rule.id}:{unit.part}"),
                unit=unit,
                reset=reset,
                calendar=rule.calendar and unit is not Unit.IN_FLIGHT,
                timezone=rule.timezone,
            )
        )
    return out


def budget_claim(scope: str, rule: BudgetRule, amount_micro: int) -> Claim:
    return Claim(
        scope=budget_counter(scope, rule.id),
        window_start="",
        resets="never",
        limit=limit_to_micro(rule.max_usd),
        amount=amount_micro,
        rule=_rule_name(BUDGET_PREFIX, scope, rule.id),
        reset=rule.reset,
        calendar=rule.calendar,
        timezone=rule.timezone,
    )


def claims(scopes: Sequence[Scope], req: RequestInfo, amount_micro: int) -> list[Claim]:
    """Every limit that applies to `req`, as claims: rate limits first, then budgets of
    `amount_micro`, each in scope order."""
    out = [c for s in scopes for r in s.rate_limits for c in rate_claims(s.name, r, req)]
    out += [budget_claim(s.name, b, amount_micro) for s in scopes for b in s.budgets]
    return out


def rule_parts(rule: str) -> tuple[str, str]:
    """`(limit, scope)` of a rule name built here: `budget:daily@key=a` -> `("daily", "key=a")`,
    `rate_limit:pace:requests` -> `("pace:requests", "global")`."""
    name, _, scope = rule.split(":", 1)[1].partition("@")
    return name, scope or "global"


def _retry(claim: Claim, unit: Unit, smallest: int, now: datetime) -> tuple[int | None, str]:
    """`(Retry-After seconds or None, when the limit frees)` of a claim that did not fit."""
    end = (
        None if claim.resets in ("", "never") else datetime.fromisoformat(claim.resets.replace("Z", "+00:00"))
    )
    retry = windows.retry_after_seconds(end, now) if end is not None else None
    if smallest > claim.limit and (retry is not None or unit is Unit.IN_FLIGHT):
        # Not even an empty window could take it: coming back later would not help.
        return None, "is smaller than this one request: lower its max_tokens, or raise the limit"
    if unit is Unit.IN_FLIGHT:
        # Frees as soon as another request of the scope finishes: come back in a moment.
        return 1, "frees as requests in flight finish"
    return retry, "never resets" if retry is None else f"resets at {claim.resets} (in {retry} s)"


def quota_refusal(
    claim: Claim,
    settled: int,
    held: int,
    now: datetime,
    *,
    smallest_micro: int | None = None,
    settled_rest: int = 0,
) -> Refusal:
    """The refusal for a claim that did not fit its window, with every number the client needs:
    the scope and rule, the limit, what was used and reserved, and when the window resets. A
    window that resets is a retryable 429 with Retry-After; a budget that never resets is final,
    and so is a request that not even an empty window could take. `smallest_micro` is what the
    request would claim at its smallest (output-cap injection at the floor); default: its amount.
    `settled_rest` is the spend's rest below a micro-dollar (money), so spend shows exactly."""
    name, scope = rule_parts(claim.rule)
    unit = Unit(claim.unit)
    retry, when = _retry(claim, unit, claim.amount if smallest_micro is None else smallest_micro, now)
    if unit.is_money:
        limit, reserved = from_micro(claim.limit), from_micro(held)
        spent = money.to_usd(settled, settled_rest)
        requested = from_micro(claim.amount)
        remaining = max(limit - spent - reserved, from_micro(0))
        message = (
            f"spendfuse: budget '{name}' of scope {scope} exhausted: limit {usd(limit)}, spent {usd(spent)}, "
            f"reserved by requests in flight {usd(reserved)}, remaining {usd(remaining)}; this request "
            f"needs up to {usd(requested)}. The budget {when}."
        )
        code = "budget_exceeded"
    else:
        limit, spent, reserved = Decimal(claim.limit), Decimal(settled), Decimal(held)
        requested = Decimal(claim.amount)
        remaining = max(limit - spent - reserved, Decimal(0))
        message = (
            f"spendfuse: rate limit '{name}' of scope {scope} reached: limit {limit} {unit.label}, "
            f"used {spent}, held by requests in flight {reserved}; this request needs {requested}. "
            f"The limit {when}."
        )
        code = "rate_limit_exceeded"
    return Refusal(
        rule=claim.rule,
        code=code,
        kind=RefusalKind.QUOTA if retry is None else RefusalKind.RATE,
        message=message,
        limit=limit,
        spent=spent,
        reserved=reserved,
        remaining=remaining,
        requested=requested,
        resets=claim.resets or "never",
        retry_after=retry,
        unit=unit,
    )
