"""The rules' logic. Pure: (request, policy, now) -> a refusal, or the claims to reserve.

The order is fixed, documented and tested; the first failure wins:
identity (in `governance.identity`), key state, model and provider access, multiplier cap,
then rate limits and budgets (claims the ledger takes all or none of, rate limits first).
"""

from __future__ import annotations

from datetime import datetime

from governance.checks.access import access_refusal, key_state_refusal
from governance.checks.multiplier import check_multiplier
from governance.checks.quota import claims, quota_refusal
from governance.limits import Key
from governance.policy import Policy
from governance.types import Refusal, RequestInfo

__all__ = ["claims", "quota_refusal", "stateless_checks"]


def stateless_checks(
    req: RequestInfo, policy: Policy, key: Key | None = None, now: datetime | None = None
) -> Refusal | None:
    """The first stateless rule the request breaks, or None: key state, access, multiplier."""
    if key is not None:
        if now is not None and (refusal := key_state_refusal(key, now)) is not None:
            return refusal
        if (refusal := access_refusal(key, req.provider, req.model)) is not None:
            return refusal
    return check_multiplier(req.model, policy, key_cap=key.max_multiplier if key else None)
