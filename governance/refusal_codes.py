"""The rules' `refusal_codes` switch: which HTTP status a refusal answers with.

`provider` (the default): each provider's own shape from `rules/refusal_shapes.yaml`, chosen so
that its clients stop at once (a budget is OpenAI's 429 `insufficient_quota`, a blocked model a
400 `invalid_request_error`, ...). `bifrost`: Bifrost's statuses, for harnesses that check them:
402 for a budget, 403 for a blocked key, model or provider, 429 for a rate limit. The body and
headers stay the provider's envelope; only the status changes, and only for those refusals.
`bifrost_status` is pure; the engine applies it to every refusal it returns.
"""

from __future__ import annotations

from dataclasses import replace

from governance.checks.access import ACCESS_RULE, KEY_RULE
from governance.checks.quota import BUDGET_PREFIX, RATE_PREFIX
from governance.types import Refusal

# Rule name prefix -> Bifrost's status for it (Bifrost's governance plugin: 402 budget exceeded,
# 403 virtual key blocked / model or provider not allowed, 429 rate limit exceeded).
_BIFROST: tuple[tuple[str, int], ...] = (
    (BUDGET_PREFIX, 402),
    (RATE_PREFIX, 429),
    (ACCESS_RULE, 403),
    (KEY_RULE, 403),
)


def bifrost_status(refusal: Refusal) -> Refusal:
    """`refusal` with Bifrost's status for its rule, when Bifrost has one; else unchanged."""
    for prefix, status in _BIFROST:
        if refusal.rule.startswith(prefix):
            return replace(refusal, status=status)
    return refusal
