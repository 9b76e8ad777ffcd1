"""The model multiplier cap (gh-aw-firewall's `maxModelMultiplier`), failing closed."""

from __future__ import annotations

from decimal import Decimal

from governance.matching import lookup_model
from governance.policy import Policy
from governance.types import Refusal, RefusalKind

CODE = "model_multiplier_cap_exceeded"
RULE = "model_multiplier_cap"


def multiplier_of(model: str, table: dict[str, Decimal]) -> tuple[str, Decimal] | None:
    """`(entry, multiplier)`: the exact entry, the longest prefix entry, else `default`."""
    found = lookup_model({k: v for k, v in table.items() if k != "default"}, model)
    if found is not None:
        return found
    if "default" in table:
        return "default", table["default"]
    return None


def check_multiplier(model: str, policy: Policy, *, key_cap: Decimal | None = None) -> Refusal | None:
    """Refuse a model whose multiplier is above `max_multiplier` (or the key's own cap, when
    lower), or that has none at all.

    gh-aw-firewall resolves an unknown model to 1, so any new model passes its cap; here an
    unknown model with no `default` entry is refused, naming the table to extend."""
    caps = [c for c in (policy.max_multiplier, key_cap) if c is not None]
    if not caps:
        return None
    cap = min(caps)
    found = multiplier_of(model, policy.multiplier_table())
    if found is None:
        return Refusal(
            rule=RULE,
            code=CODE,
            kind=RefusalKind.INVALID,
            message=(
                f"spendfuse: model '{model}' has no multiplier and the multiplier table has no "
                f"'default' entry, so the cap of {cap} cannot be checked. Add the model to the "
                f"rules' multipliers table."
            ),
        )
    entry, multiplier = found
    if multiplier <= cap:
        return None
    via = "" if entry.lower() == model.lower() else f" (table entry '{entry}')"
    return Refusal(
        rule=RULE,
        code=CODE,
        kind=RefusalKind.INVALID,
        message=(
            f"spendfuse: model '{model}' has multiplier {multiplier}{via}, which exceeds the "
            f"configured maximum of {cap}. Use a cheaper model or raise the cap."
        ),
    )
