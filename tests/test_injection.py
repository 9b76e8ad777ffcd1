"""`governance.injection` (through `Engine.custody`): which custody key a request is sent with,
only ever to a shipped host of the key's own provider, or why it is refused."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from governance import policy, wire
from governance.engine import Engine
from governance.families import ENVELOPES
from governance.hosts import UNKNOWN_ENTRY
from governance.identity import Identity
from governance.injection import UNTOUCHED, Plan
from governance.keyring import HeldKey, Keyring, Secret
from governance.ledger import Ledger
from governance.types import Refusal, RefusalKind

CREDENTIALS = [
    {"id": "oa", "provider": "openai", "env": "OA", "models": ["gpt-4o*"]},
    {"id": "oa2", "provider": "openai", "env": "OA2"},
    {"id": "an", "provider": "anthropic", "env": "AN"},
    {"id": "go", "provider": "google", "env": "GO"},
    {"id": "az", "provider": "azure", "env": "AZ", "hosts": ["Mine.OpenAI.Azure.com."]},
]
HOSTS = [{"name": "my-vllm", "match": ["vllm.internal"], "family": "openai", "provider": "openai"}]


def engine(tmp_path: Path, custody: str = "optional") -> Engine:
    rules = policy.parse(
        {
            "version": 2,
            "allow_unlimited": True,
            "credentials": CREDENTIALS,
            "custody": custody,
            "hosts": HOSTS,
            "keys": [
                {"id": "k", "secret_sha256": "0" * 64},
                {"id": "only-oa2", "secret_sha256": "1" * 64, "credentials": ["oa2"]},
            ],
        },
        Path("."),
    )
    held = [HeldKey(c, Secret(f"real-{c.id}")) for c in rules.credentials]
    return Engine(rules, Ledger.open(tmp_path / "l.db"), keyring=Keyring(held, rand=lambda: 0.0))


def endpoint(e: Engine, host: str, path: str = "/v1/chat/completions", method: str = "POST"):
    found = wire.detect(method, host, path, e.hosts)
    assert found is not None
    return found


def key(e: Engine, id: str, *, virtual: bool) -> Identity:
    return Identity(f"key:{id}", e.scopes.keys[id], virtual)


@pytest.mark.parametrize("custody", ["optional", "required"])
def test_a_virtual_key_is_replaced_by_a_custody_key_of_the_hosts_provider(tmp_path, custody):
    e = engine(tmp_path, custody)
    who = key(e, "k", virtual=True)
    plan = e.custody(endpoint(e, "api.openai.com"), "gpt-4o", who, has_api_key=True)
    assert isinstance(plan, Plan) and plan.strip and plan.key is not None
    assert (plan.key.id, plan.auth.header, plan.auth.value("x")) == ("oa", "authorization", "Bearer x")
    messages = endpoint(e, "api.anthropic.com", "/v1/messages")
    plan = e.custody(messages, "claude-sonnet-4-5", who, has_api_key=True)
    assert (plan.key.id, plan.auth.header, plan.auth.value("x")) == ("an", "x-api-key", "x")
    # A model the first key does not serve: the other key of the provider.
    assert e.custody(endpoint(e, "api.openai.com"), "o3", who, has_api_key=True).key.id == "oa2"
    # Free reads (no model) are served too.
    models = endpoint(e, "api.openai.com", "/v1/models", "GET")
    assert e.custody(models, None, who, has_api_key=True).key.id == "oa"


def test_google_and_azure_take_the_key_in_their_own_headers_where_it_is_safe(tmp_path):
    e = engine(tmp_path)
    who = key(e, "k", virtual=True)
    google = e.custody(
        endpoint(e, "generativelanguage.googleapis.com", "/v1beta/models", "GET"), None, who, has_api_key=True
    )
    assert (google.key.id, google.auth.header, google.auth.value("x")) == ("go", "x-goog-api-key", "x")
    # Azure takes its key in `api-key`, but its shipped hosts are customers' own resource names
    # (an agent can create one): a custody key goes only to the hosts its credential names.
    assert ENVELOPES["openai"].auth("azure").header == "api-key"
    azure = e.custody(
        endpoint(e, "me.openai.azure.com", "/openai/models", "GET"), None, who, has_api_key=True
    )
    assert isinstance(azure, Refusal) and azure.code == "no_custody_key"
    chat = endpoint(e, "mine.openai.azure.com", "/openai/v1/chat/completions")
    mine = e.custody(chat, "gpt-4o", who, has_api_key=True)
    assert (mine.key.id, mine.auth.header, mine.auth.value("x")) == ("az", "api-key", "x")
    assert ENVELOPES["bedrock"].auth("bedrock") is None


@pytest.mark.parametrize(
    "host",
    [
        "vllm.internal",  # the operator's host, though its provider is openai
        "llm.attacker.test",  # an unknown host metered as OpenAI-compatible would be too
    ],
)
def test_a_custody_key_goes_only_to_a_shipped_host_of_its_provider(tmp_path, host):
    e = engine(tmp_path)
    found = wire.detect("POST", host, "/v1/chat/completions", e.hosts) or wire.detect(
        "POST", "api.openai.com", "/v1/chat/completions", e.hosts
    )
    if host == "llm.attacker.test":
        found = replace(found, host=host, entry=UNKNOWN_ENTRY)
    virtual = e.custody(found, "gpt-4o", key(e, "k", virtual=True), has_api_key=True)
    assert isinstance(virtual, Refusal) and virtual.kind is RefusalKind.FORBIDDEN
    assert virtual.code == "no_custody_key" and "virtual key" in virtual.message and host in virtual.message
    # A caller known otherwise gets no key there either: the request goes as it came.
    assert e.custody(found, "gpt-4o", key(e, "k", virtual=False), has_api_key=False) is UNTOUCHED


def test_a_key_uses_only_the_credentials_it_is_allowed(tmp_path):
    e = engine(tmp_path)
    who = key(e, "only-oa2", virtual=True)
    assert e.custody(endpoint(e, "api.openai.com"), "gpt-4o", who, has_api_key=True).key.id == "oa2"
    refused = e.custody(
        endpoint(e, "api.anthropic.com", "/v1/messages"), "claude-sonnet-4-5", who, has_api_key=True
    )
    assert (
        isinstance(refused, Refusal)
        and "provider 'anthropic' and model 'claude-sonnet-4-5'" in refused.message
    )


def test_custody_required_refuses_a_stray_key_and_serves_the_rest(tmp_path):
    e = engine(tmp_path, "required")
    chat = endpoint(e, "api.openai.com")
    stray = e.custody(chat, "gpt-4o", key(e, "k", virtual=False), has_api_key=True)
    assert isinstance(stray, Refusal) and stray.code == "custody_required" and stray.kind is RefusalKind.AUTH
    anonymous = e.custody(chat, "gpt-4o", Identity("default"), has_api_key=True)
    assert isinstance(anonymous, Refusal) and anonymous.code == "custody_required"
    served = e.custody(chat, "gpt-4o", key(e, "k", virtual=False), has_api_key=False)
    assert served.key.id == "oa" and served.strip
    # Fail closed: nothing can serve a request to the operator's host.
    closed = e.custody(endpoint(e, "vllm.internal"), "gpt-4o", key(e, "k", virtual=False), has_api_key=False)
    assert (
        isinstance(closed, Refusal)
        and closed.code == "no_custody_key"
        and "custody is required" in closed.message
    )


def test_optional_custody_leaves_a_real_key_alone(tmp_path):
    e = engine(tmp_path)
    chat = endpoint(e, "api.openai.com")
    assert e.custody(chat, "gpt-4o", Identity("default"), has_api_key=True) is UNTOUCHED
    assert e.custody(chat, "gpt-4o", Identity("default"), has_api_key=False).key.id == "oa"


def test_rules_without_custody_decide_nothing(tmp_path):
    e = Engine(
        policy.parse({"version": 2, "allow_unlimited": True}, Path(".")), Ledger.open(tmp_path / "l.db")
    )
    chat = endpoint(e, "api.openai.com")
    assert e.custody(chat, "gpt-4o", Identity("default"), has_api_key=True) is UNTOUCHED
    assert e.custody(chat, "gpt-4o", Identity("default"), has_api_key=False) is UNTOUCHED


def test_a_custody_key_is_never_sent_in_cleartext(tmp_path):
    e = engine(tmp_path)
    chat = endpoint(e, "api.openai.com")
    plain = e.custody(chat, "gpt-4o", key(e, "k", virtual=True), has_api_key=True, tls=False)
    assert (
        isinstance(plain, Refusal) and plain.code == "custody_needs_tls" and "api.openai.com" in plain.message
    )
    # Nothing of ours to send: plain HTTP goes on as before.
    assert e.custody(chat, "gpt-4o", Identity("default"), has_api_key=True, tls=False) is UNTOUCHED
