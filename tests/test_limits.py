"""`governance.limits`: the version 2 models refuse what would silently do nothing or be wrong."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from governance.limits import BudgetRule, Key, RateLimitRule


@pytest.mark.parametrize("reset", ["never", "30s", "5m", "1h", "1d", "1w", "1M", "1Y", "90s", "3M"])
def test_budget_resets(reset):
    assert BudgetRule(id="b", max_usd=1, reset=reset).reset == reset


@pytest.mark.parametrize(
    "fields,fragment",
    [
        ({"reset": "5 minutes"}, "reset"),
        ({"reset": "0m"}, "reset"),
        ({"max_usd": -1}, "max_usd"),
        ({"max_usd": "NaN"}, "max_usd"),
        ({"calendar": True, "timezone": "Mars/Olympus"}, "unknown time zone"),
        ({"limit_usd": 1}, "limit_usd"),
        ({"id": "has space"}, "id"),
    ],
)
def test_bad_budgets(fields, fragment):
    with pytest.raises(ValidationError, match=fragment):
        BudgetRule.model_validate({"id": "b", "max_usd": 1, **fields})


def test_rate_limits_must_limit_something_and_their_windows_must_end():
    with pytest.raises(ValidationError, match="needs max_requests"):
        RateLimitRule(id="r")
    with pytest.raises(ValidationError, match="must end"):
        RateLimitRule(id="r", max_requests=1, requests_reset="never")
    assert RateLimitRule(id="r", max_in_flight=0).max_in_flight == 0


def test_keys():
    with pytest.raises(ValidationError, match="64 hex"):
        Key(id="k", secret_sha256="secret")
    with pytest.raises(ValidationError, match="time zone"):
        Key.model_validate({"id": "k", "expires_at": "2027-01-01T00:00:00"})
    with pytest.raises(ValidationError, match="not both"):
        Key(id="k", team="t", customer="c")
    assert Key(id="k", secret_sha256="A" * 64).secret_sha256 == "a" * 64
