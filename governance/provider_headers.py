"""Provider wire facts carried in headers, for the proxy side (to fold into `governance.wire`).

Which headers name an upstream API key, which ones the provider's free token counter needs, which
ones change what a request is billed (Anthropic's betas), and how the counter answers. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# Upstream API keys, in the order they identify a principal.
API_KEY_HEADERS = ("x-api-key", "api-key", "authorization", "x-goog-api-key")
# The client's credentials and API versions, sent on to the provider's token counter.
COUNTER_HEADERS = frozenset(
    {
        "authorization",
        "x-api-key",
        "api-key",
        "anthropic-version",
        "anthropic-beta",
        "openai-organization",
        "openai-project",
        "openai-beta",
    }
)
# Headers that change what the provider bills for the same body (the 1M-token context beta).
PRICED_HEADERS = ("anthropic-beta",)


def betas(values: Iterable[str]) -> list[str]:
    """Anthropic's betas: every `anthropic-beta` header value, split at its commas."""
    return [b for v in values for b in v.split(",")]


def api_key(value: str) -> str:
    """The key in an API-key header (`Authorization: Bearer <key>` or the bare key)."""
    return value.removeprefix("Bearer ").strip()


def counted_tokens(status: int, answer: Any) -> int | None:
    """The input tokens a token counter's answer reports (`{"input_tokens": N}` with 200), or
    None when it reports no sound count."""
    counted = answer.get("input_tokens") if status == 200 and isinstance(answer, dict) else None
    if isinstance(counted, bool) or not isinstance(counted, int) or counted < 0:
        return None
    return counted
