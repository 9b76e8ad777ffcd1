"""The rules' logic. Pure: (request, policy, now) -> a refusal, or the claims to reserve.

Stateless checks run first, in a fixed order, so the rule a refusal names never depends on
iteration order. Quota checks then emit claims, which the ledger takes all or none of.
"""

from __future__ import annotations

from governance.checks.budget import budget_claims, budget_refusal
from governance.checks.multiplier import check_multiplier
from governance.policy import Policy
from governance.types import Refusal, RequestInfo

__all__ = ["budget_claims", "budget_refusal", "stateless_checks"]


def stateless_checks(req: RequestInfo, policy: Policy) -> Refusal | None:
    """The first stateless rule the request breaks, or None."""
    return check_multiplier(req.model, policy)
