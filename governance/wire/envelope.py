"""What every provider's refusal shares: headers and the structured numbers of a refusal."""

from __future__ import annotations

from decimal import Decimal

from governance.types import Refusal


def _numbers(refusal: Refusal) -> list[tuple[str, str]]:
    """The refusal's amounts that are known, as `(name, "0.123456")`."""
    amounts: list[tuple[str, Decimal | None]] = [
        ("limit", refusal.limit),
        ("spent", refusal.spent),
        ("reserved", refusal.reserved),
        ("remaining", refusal.remaining),
        ("requested", refusal.requested),
    ]
    return [(name, f"{value:.6f}") for name, value in amounts if value is not None]


def refusal_headers(refusal: Refusal) -> dict[str, str]:
    """Headers on every refusal. `x-should-retry: false` is what makes Stainless SDKs and
    Claude Code stop at once; without it they retry a 429 up to ten times."""
    headers = {
        "content-type": "application/json",
        "x-should-retry": "false",
        "x-spendfuse-refused": refusal.rule,
        "x-spendfuse-code": refusal.code,
    }
    headers.update({f"x-spendfuse-{name}-usd": value for name, value in _numbers(refusal)})
    if refusal.resets:
        headers["x-spendfuse-resets"] = refusal.resets
    headers.update(refusal.headers)
    return headers


def refusal_details(refusal: Refusal) -> dict[str, object]:
    """The refusal's numbers as JSON, placed beside the provider's own fields."""
    details: dict[str, object] = {"rule": refusal.rule, "code": refusal.code}
    details.update({f"{name}_usd": value for name, value in _numbers(refusal)})
    if refusal.resets:
        details["resets"] = refusal.resets
    return details
