"""The custody section of the rules: where provider keys are read from, and who may use them."""

from __future__ import annotations

from pathlib import Path

import pytest

from governance import policy
from governance.errors import PolicyError

BASE = {"version": 2, "allow_unlimited": True}


def rules(**extra: object) -> dict:
    return {**BASE, **extra}


def test_a_credential_reads_from_env_or_file() -> None:
    p = policy.parse(
        rules(
            credentials=[
                {"id": "oa", "provider": "openai", "env": "OPENAI_REAL_KEY"},
                {"id": "an", "provider": "anthropic", "file": "/run/secrets/anthropic", "weight": "2.5"},
            ]
        ),
        Path("."),
    )
    assert [c.id for c in p.credentials] == ["oa", "an"]
    assert str(p.credentials[1].weight) == "2.5"
    assert p.custody == "optional"


@pytest.mark.parametrize(
    ("credential", "fragment"),
    [
        ({"id": "x", "provider": "openai"}, "exactly one of `env` or `file`"),
        ({"id": "x", "provider": "openai", "env": "A", "file": "/k"}, "exactly one of `env` or `file`"),
        ({"id": "x", "provider": "openai", "env": "A", "secret": "sk-1"}, "secret"),
        ({"id": "x", "provider": "openai", "env": "A", "weight": 0}, "weight"),
    ],
)
def test_a_credential_never_holds_its_key(credential: dict, fragment: str) -> None:
    with pytest.raises(PolicyError, match=fragment):
        policy.parse(rules(credentials=[credential]), Path("."))


def test_ids_are_unique_and_keys_name_known_credentials() -> None:
    with pytest.raises(PolicyError, match="duplicate id 'oa'"):
        policy.parse(
            rules(credentials=[{"id": "oa", "provider": "openai", "env": "A"}] * 2),
            Path("."),
        )
    with pytest.raises(PolicyError, match="unknown credential 'nope'"):
        policy.parse(
            rules(
                credentials=[{"id": "oa", "provider": "openai", "env": "A"}],
                keys=[{"id": "k", "secret_sha256": "0" * 64, "credentials": ["oa", "nope"]}],
            ),
            Path("."),
        )


def test_custody_required_is_a_setting() -> None:
    assert policy.parse(rules(custody="required"), Path(".")).custody == "required"
    with pytest.raises(PolicyError, match="custody"):
        policy.parse(rules(custody="always"), Path("."))
