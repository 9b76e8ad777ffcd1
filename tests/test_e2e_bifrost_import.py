"""`spendfuse import-bifrost` end to end: each collected Bifrost config that imports runs as the
rules of a real mitmdump (provider key variables set to dummy values in its environment), and
one promise of the config holds for a client sending its virtual key as `x-bf-vk`; the
`refusal_codes: bifrost` switch answers Bifrost's statuses (402, 403, 429) through the proxy."""

from __future__ import annotations

import contextlib
import io
import json
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from governance import cli
from tests.support.proxy import Proxy

FIXTURES = Path(__file__).parent / "fixtures" / "bifrost"
INDEX: dict[str, dict[str, Any]] = yaml.safe_load((FIXTURES / "INDEX.yaml").read_text())
IMPORTABLE = sorted(name for name, entry in INDEX.items() if entry.get("imports"))


def import_bifrost(source: Path, out: Path, *flags: str) -> Path:
    """Run `spendfuse import-bifrost` as a user would, and save what it prints."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert cli.main(["import-bifrost", str(source), *flags]) == 0
    out.write_text(buf.getvalue())
    return out


def post(proxy: Proxy, vk: str | None, model: str, host: str = "api.openai.com") -> httpx.Response:
    """One chat request to `host` through the proxy, identified by `x-bf-vk`."""
    headers = {"authorization": "Bearer sk-test-not-real"}
    if vk is not None:
        headers["x-bf-vk"] = vk
    with httpx.Client(proxy=proxy.url, verify=ssl.create_default_context(cafile=str(proxy.ca))) as c:
        return c.post(
            f"https://{host}/v1/chat/completions",
            headers=headers,
            json={"model": model, "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]},
        )


def dummy_provider_env(rules: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every environment variable the imported credentials read, set to a dummy value."""
    for cred in yaml.safe_load(rules.read_text()).get("credentials", []):
        monkeypatch.setenv(cred["env"], f"dummy-{cred['id']}")


@pytest.mark.parametrize("name", IMPORTABLE)
def test_each_imported_bifrost_config_is_enforced(name, start, upstream, tmp_path, monkeypatch):
    check = INDEX[name]["e2e"]
    for var, value in INDEX[name].get("environ", {}).items():
        monkeypatch.setenv(var, value)
    rules = import_bifrost(FIXTURES / name, tmp_path / "imported.yaml")
    dummy_provider_env(rules, monkeypatch)
    proxy = start(rules=rules)
    allowed = post(proxy, check["allowed"]["key"], check["allowed"]["model"])
    assert allowed.status_code == 200, allowed.text
    assert upstream.hits["/v1/chat/completions"] == 1
    blocked = post(proxy, check["blocked"]["key"], check["blocked"]["model"])
    assert blocked.status_code == 400
    assert blocked.headers["x-spendfuse-refused"].startswith("model_access@key=")
    assert upstream.hits["/v1/chat/completions"] == 1


# A Bifrost config with each kind of refusal Bifrost gives its own status: a budget of one
# request's worth, a rate limit of one request, and a key allowed one model.
CODES_CONFIG = {
    "governance": {
        "budgets": [
            {"id": "tiny", "max_limit": "0.0011", "reset_duration": "1d", "virtual_key_id": "vk-budget"}
        ],
        "rate_limits": [{"id": "one", "request_max_limit": 1, "request_reset_duration": "1h"}],
        "virtual_keys": [
            {
                "id": "vk-budget",
                "value": "vk-budget-secret-token",
                "provider_configs": [{"provider": "openai"}],
            },
            {
                "id": "vk-rate",
                "value": "vk-rate-secret-token",
                "rate_limit_id": "one",
                "provider_configs": [{"provider": "openai", "allowed_models": ["gpt-4o"]}],
            },
        ],
        "pricing_overrides": [
            {
                "id": "p",
                "name": "seed prices",
                "scope_kind": "global",
                "match_type": "exact",
                "pattern": "gpt-4o",
                "request_types": ["chat_completion", "text_completion", "responses"],
                "pricing_patch": '{"input_cost_per_token":0.0000025,"output_cost_per_token":0.00001}',
            }
        ],
    },
    "plugins": [{"name": "governance", "config": {"is_vk_mandatory": True}}],
}


@pytest.mark.parametrize(
    "flags,expected",
    [
        ((), {"budget": 429, "rate": 429, "model": 400}),
        (("--bifrost-codes",), {"budget": 402, "rate": 429, "model": 403}),
    ],
)
def test_refusal_codes_switch(flags, expected, start, upstream, tmp_path):
    source = tmp_path / "config.json"
    source.write_text(json.dumps(CODES_CONFIG))
    rules = import_bifrost(source, tmp_path / "imported.yaml", *flags)
    proxy = start(rules=rules)
    # At $2.50/$10 per 1M a request reserves its 100 output tokens ($0.001) plus its input, and
    # bills 11 in + 7 out ($0.0000975): the $0.0011 budget admits one and refuses the next.
    assert post(proxy, "vk-budget-secret-token", "gpt-4o").status_code == 200
    budget = post(proxy, "vk-budget-secret-token", "gpt-4o")
    assert budget.status_code == expected["budget"], budget.text
    assert budget.headers["x-spendfuse-refused"] == "budget:tiny@key=vk-budget"
    # A daily budget resets: OpenAI's rate-limit body and Retry-After, whatever the status.
    assert budget.json()["error"]["code"] == "rate_limit_exceeded" and "retry-after" in budget.headers
    assert post(proxy, "vk-rate-secret-token", "gpt-4o").status_code == 200
    rate = post(proxy, "vk-rate-secret-token", "gpt-4o")
    assert rate.status_code == expected["rate"]
    assert rate.headers["x-spendfuse-refused"] == "rate_limit:one:requests@key=vk-rate"
    model = post(proxy, "vk-rate-secret-token", "gpt-4o-mini")
    assert model.status_code == expected["model"]
    assert model.headers["x-spendfuse-refused"] == "model_access@key=vk-rate"
    assert upstream.hits["/v1/chat/completions"] == 2


def test_a_budget_on_one_provider_config_caps_that_key_on_that_provider(start, upstream, tmp_path):
    """Bifrost's per-provider-config budget becomes a key × provider scope: it refuses the key's
    second OpenAI request, and names that scope."""
    config = {
        "governance": {
            "budgets": [{"id": "openai-only", "max_limit": "0.0011", "reset_duration": "1d"}],
            "virtual_keys": [
                {
                    "id": "vk-split",
                    "value": "vk-split-secret-token",
                    "provider_configs": [
                        {"provider": "openai", "allowed_models": ["gpt-4o"], "budget_id": "openai-only"},
                        {"provider": "anthropic", "allowed_models": ["*"]},
                    ],
                }
            ],
            "pricing_overrides": CODES_CONFIG["governance"]["pricing_overrides"],
        }
    }
    source = tmp_path / "config.json"
    source.write_text(json.dumps(config))
    proxy = start(rules=import_bifrost(source, tmp_path / "imported.yaml"))
    assert post(proxy, "vk-split-secret-token", "gpt-4o").status_code == 200
    second = post(proxy, "vk-split-secret-token", "gpt-4o")
    assert second.status_code == 429
    assert second.headers["x-spendfuse-refused"] == "budget:openai-only@key=vk-split/provider=openai"
    assert upstream.hits["/v1/chat/completions"] == 1


def test_a_self_hosted_provider_is_metered_at_the_price_it_is_given(start, upstream, tmp_path, monkeypatch):
    """A Bifrost vllm provider becomes an operator host, its URL read from the environment and
    priced at --self-hosted-price: $1000/M tokens makes 100 output tokens cost $0.10, so a $0.05
    budget refuses the request by that budget and a $1 budget lets it reach the server."""
    keys = [{"name": "v", "value": "", "weight": 1, "vllm_key_config": {"url": "env.VLLM_URL"}}]
    vllm = [{"provider": "vllm", "allowed_models": ["*"]}]
    config = {
        "providers": {"vllm": {"keys": keys}},
        "governance": {
            "budgets": [
                {"id": "small", "max_limit": "0.05", "reset_duration": "1d", "virtual_key_id": "vk-small"},
                {"id": "large", "max_limit": "1", "reset_duration": "1d", "virtual_key_id": "vk-large"},
            ],
            "virtual_keys": [
                {"id": "vk-small", "value": "vk-small-secret-token", "provider_configs": vllm},
                {"id": "vk-large", "value": "vk-large-secret-token", "provider_configs": vllm},
            ],
        },
    }
    monkeypatch.setenv("VLLM_URL", "https://vllm.internal:8000")
    source = tmp_path / "config.json"
    source.write_text(json.dumps(config))
    rules = import_bifrost(source, tmp_path / "imported.yaml", "--self-hosted-price", "1000:1000")
    proxy = start(rules=rules)
    small = post(proxy, "vk-small-secret-token", "llama-3-70b", host="vllm.internal:8000")
    assert small.headers["x-spendfuse-refused"] == "budget:small@key=vk-small", small.text
    assert upstream.hits["/v1/chat/completions"] == 0
    large = post(proxy, "vk-large-secret-token", "llama-3-70b", host="vllm.internal:8000")
    assert large.status_code == 200, large.text
    assert upstream.hits["/v1/chat/completions"] == 1
