"""Budgets: which claims a request makes, and the refusal when one does not fit."""

from __future__ import annotations

from datetime import datetime

from governance.policy import Budget, Policy
from governance.types import Claim, Refusal, RefusalKind, RequestInfo, from_micro, limit_to_micro, usd

RULE_PREFIX = "budget:"


def window_of(budget: Budget, now: datetime) -> tuple[str, str]:
    """`(window_start, resets)` of the budget's current window at `now`."""
    if budget.window == "never":
        return "", "never"
    raise ValueError(f"unknown window {budget.window!r}")  # the policy validator forbids this


def scope_key(budget: Budget) -> str:
    """The one place scope keys are built, so two budgets never share a counter by accident."""
    if budget.scope == "global":
        return f"global:{budget.name}" if budget.name != "global" else "global"
    raise ValueError(f"unknown scope {budget.scope!r}")


def budget_claims(policy: Policy, req: RequestInfo, amount_micro: int, now: datetime) -> list[Claim]:
    """Every budget that applies to `req`, as claims of `amount_micro`, in the policy's order."""
    claims = []
    for budget in policy.budgets:
        start, resets = window_of(budget, now)
        claims.append(
            Claim(
                scope=scope_key(budget),
                window_start=start,
                resets=resets,
                limit_micro=limit_to_micro(budget.limit_usd),
                amount_micro=amount_micro,
                rule=RULE_PREFIX + budget.name,
            )
        )
    return claims


def budget_refusal(claim: Claim, settled_micro: int, held_micro: int) -> Refusal:
    """The refusal for a claim that did not fit its window's spend and holds, with every number
    the client needs."""
    limit = from_micro(claim.limit_micro)
    spent = from_micro(settled_micro)
    reserved = from_micro(held_micro)
    requested = from_micro(claim.amount_micro)
    remaining = max(limit - spent - reserved, from_micro(0))
    name = claim.rule.removeprefix(RULE_PREFIX)
    when = "never resets" if claim.resets == "never" else f"resets at {claim.resets}"
    return Refusal(
        rule=claim.rule,
        code="budget_exceeded",
        kind=RefusalKind.QUOTA,
        message=(
            f"spendfuse: budget '{name}' exhausted: limit {usd(limit)}, spent {usd(spent)}, "
            f"reserved by requests in flight {usd(reserved)}, remaining {usd(remaining)}; this "
            f"request needs up to {usd(requested)}. The budget {when}."
        ),
        limit=limit,
        spent=spent,
        reserved=reserved,
        remaining=remaining,
        requested=requested,
        resets=claim.resets,
    )
