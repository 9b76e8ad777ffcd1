"""What every provider's refusal shares: headers and the structured numbers of a refusal."""

from __future__ import annotations

from decimal import Decimal

from governance.types import Refusal, RefusalKind


def _numbers(refusal: Refusal) -> list[tuple[str, str]]:
    """The refusal's amounts that are known, as `(name, "0.123456")` (whole numbers for limits
    that count tokens or requests)."""
    amounts: list[tuple[str, Decimal | None]] = [
        ("limit", refusal.limit),
        ("spent", refusal.spent),
        ("reserved", refusal.reserved),
        ("remaining", refusal.remaining),
        ("requested", refusal.requested),
    ]
    shown = "{:.6f}" if refusal.unit == "usd" else "{:.0f}"
    return [(name, shown.format(value)) for name, value in amounts if value is not None]


def refusal_headers(refusal: Refusal) -> dict[str, str]:
    """Headers on every refusal. `x-should-retry: false` is what makes Stainless SDKs and
    Claude Code stop at once; without it they retry a 429 up to ten times."""
    headers = {
        "content-type": "application/json",
        "x-should-retry": "false",
        "x-spendfuse-refused": refusal.rule,
        "x-spendfuse-code": refusal.code,
    }
    suffix = "usd" if refusal.unit == "usd" else refusal.unit.replace(":", "-").replace("_", "-")
    headers.update({f"x-spendfuse-{name}-{suffix}": value for name, value in _numbers(refusal)})
    if refusal.resets:
        headers["x-spendfuse-resets"] = refusal.resets
    if refusal.client:
        headers["x-spendfuse-client"] = refusal.client
    if refusal.kind is RefusalKind.RATE:
        # A window that will reset: the client may come back then. No `x-should-retry: false`,
        # and a Retry-After the SDKs honour (openai-python gives up on one above 120 s).
        del headers["x-should-retry"]
        headers["retry-after"] = str(refusal.retry_after or 1)
    if refusal.kind is RefusalKind.PROXY_AUTH:
        headers["proxy-authenticate"] = 'Basic realm="spendfuse"'
    headers.update(refusal.headers)
    return headers


def refusal_details(refusal: Refusal) -> dict[str, object]:
    """The refusal's numbers as JSON, placed beside the provider's own fields."""
    details: dict[str, object] = {"rule": refusal.rule, "code": refusal.code}
    suffix = "usd" if refusal.unit == "usd" else refusal.unit.replace(":", "_")
    details.update({f"{name}_{suffix}": value for name, value in _numbers(refusal)})
    if refusal.resets:
        details["resets"] = refusal.resets
    if refusal.retry_after is not None:
        details["retry_after_seconds"] = refusal.retry_after
    return details
