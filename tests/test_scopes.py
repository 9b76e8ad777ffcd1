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


def test_a_key_on_one_provider_has_its_own_scope_and_model_lists():
    """A key's `providers:` entry: limits that count only its requests to that provider (after
    the key's own scope), and model lists that replace the key's there."""
    from governance.checks.access import access_refusal

    rules = {
        **RULES,
        "budgets": [*RULES["budgets"], {"id": "kp", "max_usd": 1}],
        "keys": [
            *RULES["keys"],
            {
                "id": "split",
                "secret_sha256": secret_hash("s"),
                "budgets": ["k"],
                "allowed_models": ["gpt-4o"],
                "providers": [
                    {"provider": "azure", "budgets": ["kp"], "allowed_models": ["gpt-4o-mini"]},
                    {"provider": "openai", "denied_models": ["gpt-4o"]},
                ],
            },
        ],
    }
    scopes = Scopes(policy.parse(rules, Path(".")))
    key = scopes.keys["split"]
    names = [s.name for s in scopes.applicable(key, "azure", "gpt-4o-mini")]
    assert names == ["key=split", "key=split/provider=azure", "model=azure/gpt-4o*", "global"]
    assert [s.name for s in scopes.applicable(key, "openai", "gpt-4o")][:2] == ["key=split", "model=gpt-4o"]
    assert "key=split/provider=azure" in [s.name for s in scopes.every_scope()]
    assert access_refusal(key, "azure", "gpt-4o-mini") is None
    assert access_refusal(key, "azure", "gpt-4o") is not None  # azure's list replaces the key's
    assert access_refusal(key, "openai", "gpt-4o") is not None  # denied on openai
    assert access_refusal(key, "anthropic", "gpt-4o") is None  # the key's own list elsewhere


def test_a_key_names_each_provider_once():
    import pytest

    from governance.policy import PolicyError

    twice = {
        **RULES,
        "keys": [
            {
                "id": "k2",
                "secret_sha256": secret_hash("q"),
                "budgets": ["k"],
                "providers": [{"provider": "openai"}, {"provider": "openai"}],
            }
        ],
    }
    with pytest.raises(PolicyError, match="provider 'openai' has two entries on key 'k2'"):
        policy.parse(twice, Path("."))
