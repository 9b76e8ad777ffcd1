from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from governance import checks, policy
from governance.checks.multiplier import check_multiplier
from governance.checks.quota import claims as quota_claims
from governance.checks.quota import quota_refusal
from governance.scopes import Scopes
from governance.types import Claim, RefusalKind, RequestInfo

NOW = datetime(2026, 11, 22, tzinfo=UTC)


def make(**data) -> policy.Policy:
    return policy.parse(
        {"multipliers": {"gpt-4o": 0.78, "claude-opus-4-1": 5}, "model_limits": {}, **data}, Path(".")
    )


def info(model: str = "gpt-4o") -> RequestInfo:
    return RequestInfo("r1", "openai", "chat", model, "default", False, 10, 100, "request")


class TestMultiplier:
    def test_off_without_a_cap(self):
        assert check_multiplier("anything", make()) is None

    def test_over_the_cap_names_model_multiplier_and_cap(self):
        r = check_multiplier("claude-opus-4-1-20250805", make(max_multiplier=2))
        assert r.kind is RefusalKind.INVALID and r.code == "model_multiplier_cap_exceeded"
        assert "claude-opus-4-1-20250805" in r.message and "5" in r.message and "2" in r.message

    def test_unknown_model_is_refused_without_default(self):
        assert "no multiplier" in check_multiplier("gpt-9", make(max_multiplier=10)).message
        assert check_multiplier("gpt-9", make(max_multiplier=10, multipliers={"default": 1})) is None
        assert check_multiplier("gpt-9", make(max_multiplier=1, multipliers={"default": 3})) is not None

    def test_at_the_cap_passes(self):
        assert checks.stateless_checks(info(), make(max_multiplier=Decimal("0.78"))) is None


class TestBudget:
    def test_claims_for_every_budget(self):
        p = make(budgets=[{"name": "global", "limit_usd": 1}, {"name": "ci-run", "limit_usd": "0.5"}])
        claims = quota_claims(Scopes(p).applicable(None, "openai", "gpt-4o"), info(), 1234)
        assert [(c.scope, c.limit, c.amount, c.reset) for c in claims] == [
            ("global", 1_000_000, 1234, "never"),
            ("global:ci-run", 500_000, 1234, "never"),
        ]

    def test_refusal_carries_the_numbers(self):
        claim = Claim("global", "", "never", 1_000_000, 300_000, "budget:global")
        r = quota_refusal(claim, 600_000, 200_000, NOW)
        assert (r.limit, r.spent, r.reserved, r.remaining, r.requested) == (
            Decimal("1"),
            Decimal("0.6"),
            Decimal("0.2"),
            Decimal("0.2"),
            Decimal("0.3"),
        )
        assert r.kind is RefusalKind.QUOTA and r.rule == "budget:global"
        assert "limit $1.00, spent $0.60" in r.message and "never resets" in r.message


def test_limits_round_down_and_reservations_round_up():
    from governance.types import limit_to_micro, to_micro

    assert limit_to_micro(Decimal("0.0000019")) == 1 and to_micro(Decimal("0.0000011")) == 2
    assert limit_to_micro(Decimal("1")) == to_micro(Decimal("1")) == 1_000_000
