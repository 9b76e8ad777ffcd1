"""What every provider's refusal shares: headers and the structured numbers of a refusal."""

from __future__ import annotations

from governance.types import Refusal


def _plain(amount) -> str:
    return f"{amount:.6f}" if amount is not None else ""


def refusal_headers(refusal: Refusal) -> dict[str, str]:
    """Headers on every refusal. `x-should-retry: false` is what makes Stainless SDKs and
    Claude Code stop at once; without it they retry a 429 up to ten times."""
    headers = {
        "content-type": "application/json",
        "x-should-retry": "false",
        "x-spendfuse-refused": refusal.rule,
        "x-spendfuse-code": refusal.code,
    }
    for name, value in (
        ("limit", refusal.limit),
        ("spent", refusal.spent),
        ("reserved", refusal.reserved),
        ("remaining", refusal.remaining),
        ("requested", refusal.requested),
    ):
        if value is not None:
            headers[f"x-spendfuse-{name}-usd"] = _plain(value)
    if refusal.resets:
        headers["x-spendfuse-resets"] = refusal.resets
    headers.update(refusal.headers)
    return headers


def refusal_details(refusal: Refusal) -> dict[str, object]:
    """The refusal's numbers as JSON, placed beside the provider's own fields."""
    details: dict[str, object] = {"rule": refusal.rule, "code": refusal.code}
    for name, value in (
        ("limit_usd", refusal.limit),
        ("spent_usd", refusal.spent),
        ("reserved_usd", refusal.reserved),
        ("remaining_usd", refusal.remaining),
        ("requested_usd", refusal.requested),
    ):
        if value is not None:
            details[name] = _plain(value)
    if refusal.resets:
        details["resets"] = refusal.resets
    return details
