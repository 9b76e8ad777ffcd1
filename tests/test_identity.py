"""`governance.identity`: the first credential wins, claimed keys prove themselves, and require_key."""

from __future__ import annotations

from pathlib import Path

import pytest

from governance import policy
from governance.identity import Credentials, Identity, api_key_principal, identify
from governance.scopes import Scopes, secret_hash
from governance.types import Refusal, RefusalKind


def scopes(**data) -> Scopes:
    return Scopes(policy.parse({"version": 2, "multipliers": {}, "model_limits": {}, **data}, Path(".")))


KEYS = scopes(
    keys=[
        {"id": "a", "secret_sha256": secret_hash("sa")},
        {"id": "b", "secret_sha256": secret_hash("sb"), "listeners": ["8081"]},
        {"id": "port-only", "listeners": ["regular@9000"]},
    ]
)
NONE = scopes()


@pytest.mark.parametrize(
    "creds,principal",
    [
        (Credentials(proxy_user="a", proxy_secret="sa", key_header="sb", listeners=("8081",)), "key:a"),
        (Credentials(key_header="sb", listeners=("9000", "regular@9000")), "key:b"),
        (Credentials(listeners=("9000", "regular@9000"), api_key="sk-1"), "key:port-only"),
        (Credentials(listeners=("8081",)), "key:b"),
        (Credentials(listeners=("7000",)), "default"),
    ],
)
def test_first_credential_wins_once_keys_exist(creds, principal):
    who = identify(creds, KEYS, salt="s", require_key=False)
    assert isinstance(who, Identity) and who.principal == principal


@pytest.mark.parametrize(
    "creds,kind",
    [
        (Credentials(proxy_user="a", proxy_secret="sb"), RefusalKind.PROXY_AUTH),  # another key's secret
        (Credentials(proxy_user="a", proxy_secret=None), RefusalKind.PROXY_AUTH),
        (Credentials(proxy_user="port-only", proxy_secret=""), RefusalKind.PROXY_AUTH),  # no secret to match
        (Credentials(proxy_user="nobody", proxy_secret="sa"), RefusalKind.PROXY_AUTH),
        (Credentials(key_header="a"), RefusalKind.AUTH),  # a key's id is not its secret
        (Credentials(key_header="sa "), None),  # surrounding blanks are not part of a secret
    ],
)
def test_a_claimed_key_must_prove_itself(creds, kind):
    who = identify(creds, KEYS, salt="s", require_key=False)
    if kind is None:
        assert isinstance(who, Identity) and who.principal == "key:a"
    else:
        assert isinstance(who, Refusal) and who.kind is kind and who.rule == "identity"


def test_without_keys_names_are_labels():
    assert identify(
        Credentials(proxy_user="team-a", proxy_secret="x"), NONE, salt="s", require_key=False
    ) == Identity("proxy:team-a")
    assert identify(Credentials(key_header="ci"), NONE, salt="s", require_key=False) == Identity("header:ci")


def test_require_key_refuses_anonymous_clients():
    r = identify(Credentials(api_key="sk-1"), KEYS, salt="s", require_key=True)
    assert isinstance(r, Refusal) and r.kind is RefusalKind.AUTH and r.code == "key_required"
    assert isinstance(identify(Credentials(listeners=("8081",)), KEYS, salt="s", require_key=True), Identity)


def test_api_keys_are_hashed_with_the_ledgers_salt():
    a = api_key_principal("sk-secret", "salt1")
    assert a == api_key_principal("sk-secret", "salt1") != api_key_principal("sk-secret", "salt2")
    assert "sk-secret" not in a and a.startswith("apikey:")


def test_without_keys_a_bifrost_virtual_key_is_hashed_never_a_label():
    who = identify(
        Credentials(key_header="sk-bf-secret", key_header_name="x-bf-vk"), NONE, salt="s", require_key=False
    )
    assert who.principal.startswith("header:") and "sk-bf-secret" not in who.principal


def test_require_key_without_keys_refuses_everyone():
    for creds in (Credentials(proxy_user="x", proxy_secret="y"), Credentials(key_header="k"), Credentials()):
        assert isinstance(identify(creds, NONE, salt="s", require_key=True), Refusal)
    warnings: list = []
    policy.parse(
        {"version": 2, "multipliers": {}, "model_limits": {}, "require_key": True},
        Path("."),
        warnings=warnings,
    )
    assert [w.where() for w in warnings] == ["require_key"]


def test_a_keys_secret_as_the_provider_api_key_is_a_virtual_key():
    who = identify(Credentials(api_key="sa", listeners=("8081",)), KEYS, salt="s", require_key=True)
    assert who == Identity("key:a", KEYS.keys["a"], virtual_api_key=True)
    # The earlier sources still name the principal; the API key is still known to be virtual.
    by_header = identify(Credentials(key_header="sb", api_key="sa"), KEYS, salt="s", require_key=False)
    assert by_header.principal == "key:b" and by_header.virtual_api_key
    by_proxy = identify(
        Credentials(proxy_user="b", proxy_secret="sb", api_key="sa"), KEYS, salt="s", require_key=False
    )
    assert by_proxy.principal == "key:b" and by_proxy.virtual_api_key
    # A virtual key beats the listener; an unknown API key is not one, and the listener names the key.
    assert (
        identify(Credentials(api_key="sa", listeners=("8081",)), KEYS, salt="s", require_key=False).principal
        == "key:a"
    )
    real = identify(Credentials(api_key="sk-real", listeners=("8081",)), KEYS, salt="s", require_key=False)
    assert real == Identity("key:b", KEYS.keys["b"]) and not real.virtual_api_key
    # Without keys there are no virtual keys: the API key is hashed as before.
    plain = identify(Credentials(api_key="sa"), NONE, salt="s", require_key=False)
    assert plain == Identity(api_key_principal("sa", "s"))
