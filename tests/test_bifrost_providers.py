"""import-bifrost follows the seed docs: provider keys become custody credentials reading the same
environment variables (never a key value in the rules), key lists name them, self-hosted
providers become operator hosts with a price never guessed, pricing overrides become prices, and
every config collected from Bifrost's repository imports or is refused naming each field."""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from governance import RULES_DIR, bifrost, policy
from governance.policy import Policy

FIXTURES = Path(__file__).parent / "fixtures" / "bifrost"
INDEX: dict[str, dict[str, Any]] = yaml.safe_load((FIXTURES / "INDEX.yaml").read_text())
LITERAL = "sk-proj-literal-provider-key-0123456789"


def load_rules(text: str) -> Policy:
    return policy.parse(yaml.safe_load(text), base=RULES_DIR)


def fixture(name: str) -> Any:
    text = (FIXTURES / name).read_text()
    return json.loads(text, parse_float=Decimal) if name.endswith(".json") else yaml.safe_load(text)


def problems(data: object, **kw: Any) -> list[str]:
    with pytest.raises(bifrost.BifrostImportError) as e:
        bifrost.convert(data, **kw)
    return e.value.problems


def cfg(providers: dict[str, Any] | None = None, **governance: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "governance": {"budgets": [{"id": "b", "max_limit": 5, "reset_duration": "1d"}], **governance}
    }
    if providers is not None:
        data["providers"] = providers
    return data


def vk(*configs: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "vk-1",
        "name": "vk-1",
        "value": "vk-1-secret-token-value",
        "provider_configs": list(configs),
    }


OPENAI_KEYS = {
    "openai": {
        "keys": [
            {"name": "openai-primary", "value": "env.OPENAI_KEY_A", "weight": 3, "models": ["*"]},
            {"name": "openai-batch", "value": "env.OPENAI_KEY_B", "weight": 1, "models": ["gpt-4o-mini"]},
        ]
    }
}


# -- provider keys ----------------------------------------------------------------------------


def test_provider_keys_become_credentials_reading_the_same_variables():
    rules = bifrost.convert(
        cfg(OPENAI_KEYS, virtual_keys=[vk({"provider": "openai", "allowed_models": ["*"]})])
    )
    assert rules["credentials"] == [
        {"id": "openai-primary", "provider": "openai", "env": "OPENAI_KEY_A", "weight": Decimal(3)},
        {"id": "openai-batch", "provider": "openai", "env": "OPENAI_KEY_B", "models": ["gpt-4o-mini"]},
    ]
    # No key list: every credential of the provider (credentials left unset on the key).
    assert "credentials" not in rules["keys"][0]
    p = load_rules(bifrost.to_yaml(rules))
    assert [c.env for c in p.credentials] == ["OPENAI_KEY_A", "OPENAI_KEY_B"]


@pytest.mark.parametrize(
    "pc",
    [
        {"provider": "openai", "allowed_models": ["*"], "key_ids": ["openai-batch"]},
        {"provider": "openai", "allowed_models": ["*"], "keys": [{"name": "openai-batch"}]},
    ],
)
def test_key_lists_name_custody_credentials(pc: dict[str, Any]):
    other = {"provider": "anthropic", "allowed_models": ["*"]}
    providers = {**OPENAI_KEYS, "anthropic": {"keys": [{"name": "ant", "value": "env.ANT_KEY", "weight": 1}]}}
    rules = bifrost.convert(cfg(providers, virtual_keys=[vk(pc, other)]))
    # The named openai key, and every anthropic key (its config names none).
    assert rules["keys"][0]["credentials"] == ["ant", "openai-batch"]
    assert load_rules(bifrost.to_yaml(rules)).keys[0].credentials == ["ant", "openai-batch"]


def test_a_literal_provider_key_is_refused_and_printed_nowhere():
    providers = {"openai": {"keys": [{"name": "k", "value": LITERAL, "weight": 1}]}}
    found = problems(cfg(providers))
    assert found == [
        "providers.openai.keys[0].value: a provider key written into the file: spendfuse reads provider "
        "keys from the environment or a file, never from its rules; put the key in an environment "
        "variable and write env.NAME here, or import with --secrets-dir DIR to have it written to a "
        "file there"
    ]
    assert not any(LITERAL in p for p in found)


def test_keys_spendfuse_cannot_hold_are_left_out_with_a_note():
    providers = {
        "bedrock": {
            "keys": [
                {"name": "aws-irsa", "value": "", "weight": 1, "bedrock_key_config": {"region": "us-east-1"}}
            ]
        }
    }
    pc = {"provider": "bedrock", "allowed_models": ["*"], "key_ids": ["aws-irsa"]}
    rules, notes = bifrost.convert_with_notes(cfg(providers, virtual_keys=[vk(pc)]))
    assert "credentials" not in rules
    assert rules["keys"][0]["allowed_providers"] == ["aws"]
    assert any(n.startswith("providers.bedrock.keys[0]: left out: it has no key value") for n in notes)


def test_docs_and_code_disagree_the_docs_win_with_a_warning():
    data = cfg(
        OPENAI_KEYS,
        virtual_keys=[{"id": "vk-0", "value": "vk-0-secret-token-value"}, vk({"provider": "openai"})],
    )
    rules, notes = bifrost.convert_with_notes(data)
    assert "allowed_providers" not in rules["keys"][0]  # no provider_configs: every provider
    assert rules["keys"][1]["allowed_providers"] == ["openai"]  # no allowed_models / key list: all
    assert "allowed_models" not in rules["keys"][1]
    warnings = [n for n in notes if n.startswith("warning: ")]
    assert [w.split(":")[1].strip() for w in warnings] == [
        "governance.virtual_keys[0].provider_configs",
        "governance.virtual_keys[1].provider_configs[0].key_ids",
        "governance.virtual_keys[1].provider_configs[0].allowed_models",
    ]


# -- self-hosted providers ----------------------------------------------------------------------

VLLM = {
    "vllm": {"keys": [{"name": "v", "value": "", "weight": 1, "vllm_key_config": {"url": "env.VLLM_URL"}}]}
}
PRICE = {"input_mtok": Decimal("0.5"), "output_mtok": Decimal("1.5")}


def test_a_self_hosted_provider_becomes_an_operator_host():
    data = cfg(VLLM, virtual_keys=[vk({"provider": "vllm", "allowed_models": ["*"]})])
    rules = bifrost.convert(data, environ={"VLLM_URL": "http://vllm.internal:8000"}, self_hosted_price=PRICE)
    assert rules["hosts"] == [
        {
            "name": "bifrost-vllm",
            "match": ["vllm.internal"],
            "family": "openai",
            "provider": "vllm",
            "base_path": "/v1",
            "default_price": PRICE,
        }
    ]
    assert rules["keys"][0]["allowed_providers"] == ["vllm"]
    assert load_rules(bifrost.to_yaml(rules)).hosts[0].default_price is not None


def test_a_self_hosted_provider_without_a_price_or_url_is_refused():
    data = cfg(VLLM)
    assert problems(data, environ={"VLLM_URL": "http://vllm.internal:8000"}) == [
        "providers.vllm: no price is known for models on vllm: pass --self-hosted-price INPUT:OUTPUT (USD "
        "per 1M tokens) or give it a provider-scoped pricing_override; spendfuse never guesses a price"
    ]
    assert problems(data, environ={}, self_hosted_price=PRICE) == [
        "providers.vllm.keys[0].vllm_key_config.url: names environment variable VLLM_URL, which is not "
        "set here; set it to the server's URL and run again"
    ]


def test_a_provider_scoped_override_prices_a_self_hosted_host():
    override = {
        "id": "o",
        "name": "o",
        "scope_kind": "provider",
        "provider_id": "vllm",
        "match_type": "exact",
        "pattern": "llama-3-70b",
        "request_types": ["chat_completion", "text_completion", "responses"],
        "patch": {
            "input_cost_per_token": Decimal("0.0000009"),
            "output_cost_per_token": Decimal("0.0000009"),
        },
    }
    rules = bifrost.convert(
        cfg(VLLM, pricing_overrides=[override]), environ={"VLLM_URL": "https://gpu.corp/serve"}
    )
    [host] = rules["hosts"]
    assert host["base_path"] == "/serve/v1" and "default_price" not in host
    assert host["prices"] == {"llama-3-70b": {"input_mtok": Decimal("0.9"), "output_mtok": Decimal("0.9")}}


# -- pricing overrides --------------------------------------------------------------------------


TIERED = {
    "input_cost_per_token": 1e-6,
    "output_cost_per_token": 2e-6,
    "input_cost_per_token_above_200k_tokens": 3e-6,
}


def _override(**fields: Any) -> dict[str, Any]:
    base = {
        "id": "p",
        "name": "p",
        "scope_kind": "global",
        "match_type": "exact",
        "pattern": "gpt-4o",
        "request_types": ["chat_completion"],
        "pricing_patch": '{"input_cost_per_token":0.0000025,"output_cost_per_token":0.00001}',
    }
    return {**base, **fields}


def test_a_global_override_becomes_a_price_with_a_warning_for_its_request_types():
    rules, notes = bifrost.convert_with_notes(cfg(pricing_overrides=[_override()]))
    assert rules["prices"] == {"gpt-4o": {"input_mtok": Decimal("2.5"), "output_mtok": Decimal("10")}}
    assert any(n.startswith("warning: governance.pricing_overrides[0].request_types:") for n in notes)
    p = load_rules(bifrost.to_yaml(rules))
    assert p.prices["gpt-4o"].input_mtok == Decimal("2.5") and p.prices["gpt-4o"].output_mtok == Decimal(10)


@pytest.mark.parametrize(
    "fields,problem",
    [
        (
            {"pricing_patch": json.dumps(TIERED)},
            "governance.pricing_overrides[0].pricing_patch.input_cost_per_token_above_200k_tokens:",
        ),
        (
            {"pricing_patch": '{"input_cost_per_token":1e-6}'},
            "governance.pricing_overrides[0].pricing_patch: sets no input or no output",
        ),
        (
            {"scope_kind": "provider", "provider_id": "openai"},
            "governance.pricing_overrides[0].provider_id: a price for 'openai' only",
        ),
        (
            {"match_type": "wildcard", "pattern": "gpt-4*"},
            "governance.pricing_overrides[0].pattern: 'gpt-4*': Bifrost prices",
        ),
    ],
)
def test_overrides_that_mean_something_else_here_are_refused(fields: dict[str, Any], problem: str):
    [found] = problems(cfg(pricing_overrides=[_override(**fields)]))
    assert found.startswith(problem)


# -- the configs collected from Bifrost's repository --------------------------------------------


def test_every_fixture_is_indexed():
    assert sorted(p.name for p in FIXTURES.iterdir() if p.name != "INDEX.yaml") == sorted(INDEX)


@pytest.mark.parametrize("name", sorted(INDEX))
def test_each_bifrost_config_imports_or_is_refused_naming_each_field(name: str):
    entry = INDEX[name]
    environ = entry.get("environ", {})
    data = fixture(name)
    if entry.get("imports"):
        rules, notes = bifrost.convert_with_notes(data, environ=environ)
        p = load_rules(bifrost.to_yaml(rules, source=name, notes=notes))
        assert p.keys
        return
    found = problems(data, environ=environ)
    assert len(found) == len(entry["problems"]), found
    for got, want in zip(found, entry["problems"], strict=True):
        assert got.startswith(want), (got, want)


# -- provider configs as key × provider entries -------------------------------------------------


def test_models_per_provider_and_limits_on_one_provider_config_become_key_provider_entries():
    data = cfg(
        rate_limits=[{"id": "r", "request_max_limit": 3, "request_reset_duration": "1h"}],
        virtual_keys=[
            vk(
                {"provider": "openai", "allowed_models": ["gpt-4o"], "budget_id": "b"},
                {"provider": "anthropic", "allowed_models": ["*"], "rate_limit_id": "r"},
            )
        ],
    )
    rules = bifrost.convert(data)
    key = rules["keys"][0]
    assert key["allowed_providers"] == ["anthropic", "openai"] and "allowed_models" not in key
    assert key["providers"] == [
        {"provider": "anthropic", "rate_limits": ["r"]},
        {"provider": "openai", "allowed_models": ["gpt-4o"], "budgets": ["b"]},
    ]
    p = load_rules(bifrost.to_yaml(rules))
    assert [(kp.provider, kp.allowed_models, kp.budgets) for kp in p.keys[0].providers] == [
        ("anthropic", None, []),
        ("openai", ["gpt-4o"], ["b"]),
    ]


def test_a_key_whose_id_is_its_value_is_renamed_and_the_value_printed_nowhere():
    secret = "sk-bf-vk-its-own-id-0001"
    data = cfg(virtual_keys=[{"id": secret, "value": secret, "provider_configs": [{"provider": "openai"}]}])
    rules, notes = bifrost.convert_with_notes(data)
    text = bifrost.to_yaml(rules, notes=notes)
    assert secret not in text
    assert load_rules(text).keys[0].id.startswith("vk-")


def test_secrets_dir_takes_literal_provider_keys_and_generates_missing_values(tmp_path: Path):
    import contextlib
    import io
    import os
    import stat

    from governance import cli

    providers = {"openai": {"keys": [{"name": "k", "value": LITERAL, "weight": 1}]}}
    source = tmp_path / "config.json"
    source.write_text(json.dumps(cfg(providers, virtual_keys=[{"id": "vk-new", "provider_configs": []}])))
    secrets = tmp_path / "secrets"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["import-bifrost", str(source), "--secrets-dir", str(secrets)]) == 0
    text = out.getvalue()
    assert LITERAL not in text
    p = load_rules(text)
    key_file, vk_file = secrets / "k.key", secrets / "vk-new.vk"
    assert p.credentials[0].file == key_file and p.credentials[0].env is None
    assert key_file.read_text().strip() == LITERAL
    generated = vk_file.read_text().strip()
    assert p.keys[0].secret_sha256 == hashlib.sha256(generated.encode()).hexdigest()
    for f in (key_file, vk_file):
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
    # A second import never overwrites a secret.
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        assert cli.main(["import-bifrost", str(source), "--secrets-dir", str(secrets)]) == 1
    assert "refusing to overwrite" in err.getvalue()
    assert key_file.read_text().strip() == LITERAL and vk_file.read_text().strip() == generated


def test_the_helm_values_example_with_secrets_dir_and_a_price_stops_only_at_google():
    """Bifrost's full provider example: given a secrets directory (its virtual keys have no
    value) and a self-hosted price, what remains is the one thing spendfuse cannot say: Vertex
    allowed where Gemini (configured in the same file) is not, both being `google` here."""
    name = "helm-values-providers-and-virtual-keys.yaml"
    price = {"input_mtok": Decimal(1), "output_mtok": Decimal(1)}
    with pytest.raises(bifrost.BifrostImportError) as e:
        bifrost.convert_with_files(
            fixture(name), environ=INDEX[name]["environ"], self_hosted_price=price, secrets_dir="/s"
        )
    assert [p.split(":")[0] for p in e.value.problems] == [
        "bifrost.governance.virtualKeys[3].provider_configs"
    ]
    # Without the conflicting key it imports: credentials, hosts and key lists included.
    data = fixture(name)
    del data["bifrost"]["governance"]["virtualKeys"][3]
    rules, _, files = bifrost.convert_with_files(
        data, environ=INDEX[name]["environ"], self_hosted_price=price, secrets_dir="/s"
    )
    assert sorted(files) == sorted(f"/s/{k['id']}.vk" for k in rules["keys"])
    assert {h["name"] for h in rules["hosts"]} == {
        "bifrost-huggingface",
        "bifrost-ollama",
        "bifrost-sgl",
        "bifrost-vllm",
    }
    scoped = {k["id"]: k.get("credentials") for k in rules["keys"]}
    assert scoped["vk-openai-scoped"] == ["openai-primary", "openai-secondary"]
    assert scoped["vk-multi-provider"] == [
        "anthropic-primary",
        "groq-primary",
        "groq-secondary",
        "openai-batch",
        "openai-primary",
        "openai-secondary",
    ]
    load_rules(bifrost.to_yaml(rules))


@pytest.mark.parametrize(
    "base,expected",
    [("openai", ("openai", "/v1")), ("anthropic", ("anthropic", "/v1")), ("gemini", None)],
)
def test_a_custom_provider_with_a_base_url(base: str, expected: tuple[str, str] | None):
    custom = {
        "corp-llm": {
            "custom_provider_config": {"base_provider_type": base},
            "network_config": {"base_url": "https://llm.corp.example"},
            "keys": [{"name": "corp", "value": "env.CORP_KEY", "weight": 1}],
        }
    }
    if expected is None:
        [found] = problems(cfg(custom), self_hosted_price=PRICE)
        assert found.startswith("providers.corp-llm.custom_provider_config.base_provider_type:")
        return
    rules = bifrost.convert(cfg(custom), self_hosted_price=PRICE)
    [host] = rules["hosts"]
    assert (host["family"], host["base_path"], host["match"]) == (*expected, ["llm.corp.example"])
    assert rules["credentials"] == [{"id": "corp", "provider": "corp-llm", "env": "CORP_KEY"}]
    load_rules(bifrost.to_yaml(rules))


def test_an_azure_key_names_its_endpoint_host_and_its_deployments_become_aliases():
    endpoint = {"endpoint": "https://res-a.openai.azure.com/", "deployments": {"gpt-4o": "prod-4o"}}
    providers = {
        "azure": {
            "keys": [
                {"name": "az-a", "value": "env.AZ_A", "azure_key_config": endpoint},
                {
                    "name": "az-nowhere",
                    "value": "env.AZ_B",
                    "azure_key_config": {"api_version": "2024-10-21"},
                },
            ]
        }
    }
    pc = {"provider": "azure", "allowed_models": ["*"]}
    rules, notes = bifrost.convert_with_notes(cfg(providers, virtual_keys=[vk(pc)]))
    assert rules["credentials"] == [
        {"id": "az-a", "provider": "azure", "env": "AZ_A", "hosts": ["res-a.openai.azure.com"]}
    ]
    assert rules["azure_deployments"] == {"res-a.openai.azure.com/prod-4o": "gpt-4o"}
    assert any(n.startswith("providers.azure.keys[1]: left out: an Azure key without") for n in notes)
    p = load_rules(bifrost.to_yaml(rules))
    assert p.credentials[0].hosts == ["res-a.openai.azure.com"]
