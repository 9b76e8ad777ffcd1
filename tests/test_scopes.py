"""`governance.scopes`: which scopes a request counts against, in check order."""

from __future__ import annotations

from pathlib import Path

from governance import policy
from governance.scopes import Scopes, secret_hash

RULES = {
    "version": 2,
    "multipliers": {},
    "model_limits": {},
    "budgets": [{"id": x, "max_usd": 1} for x in ("k", "t", "c", "m", "g2", "p", "g")],
    "rate_limits": [{"id": "r", "max_requests": 5}],
    "customers": [{"id": "acme", "budgets": ["c"]}],
    "teams": [{"id": "research", "customer": "acme", "budgets": ["t"]}, {"id": "idle"}],
    "keys": [
        {
            "id": "a",
            "team": "research",
            "secret_sha256": secret_hash("x"),
            "budgets": ["k"],
            "rate_limits": ["r"],
        },
        {"id": "direct", "customer": "acme", "secret_sha256": secret_hash("y")},
        {"id": "bare", "team": "idle", "secret_sha256": secret_hash("z")},
    ],
    "models": [
        {"model": "gpt-4o", "budgets": ["m"]},
        {"model": "gpt-4o*", "provider": "azure", "budgets": ["g2"]},
    ],
    "providers": [{"provider": "openai", "budgets": ["p"]}],
    "global": {"budgets": ["g"]},
    # Azure is metered with the openai family under a provider name of its own.
    "hosts": [{"name": "azure", "match": ["*.openai.azure.com"], "family": "openai", "provider": "azure"}],
}
S = Scopes(policy.parse(RULES, Path(".")))


def names(key: str | None, provider: str, model: str) -> list[str]:
    return [s.name for s in S.applicable(S.keys.get(key) if key else None, provider, model)]


def test_key_team_customer_models_providers_global_in_order():
    assert names("a", "openai", "gpt-4o") == [
        "key=a",
        "team=research",
        "customer=acme",
        "model=gpt-4o",
        "provider=openai",
        "global",
    ]


def test_a_model_scope_is_that_exact_model_unless_it_is_a_glob():
    assert names(None, "openai", "gpt-4o-mini") == ["provider=openai", "global"]
    assert names(None, "azure", "GPT-4o-mini") == ["model=azure/gpt-4o*", "global"]


def test_model_and_provider_limits_apply_without_a_key_and_empty_scopes_are_left_out():
    assert names(None, "openai", "gpt-4o") == ["model=gpt-4o", "provider=openai", "global"]
    assert names("bare", "anthropic", "claude") == ["global"]
    assert names("direct", "anthropic", "claude") == ["customer=acme", "global"]


def test_every_scope_lists_what_status_shows():
    assert [s.name for s in S.every_scope()] == [
        "global",
        "provider=openai",
        "model=gpt-4o",
        "model=azure/gpt-4o*",
        "customer=acme",
        "team=research",
        "key=a",
    ]


def test_secrets_are_found_by_hash_only():
    assert S.key_by_secret("x").id == "a" and S.key_by_secret("X") is None
    assert S.key_with_secret("a", "x").id == "a" and S.key_with_secret("a", "y") is None
