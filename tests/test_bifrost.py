"""Bifrost governance -> spendfuse rules: every field maps exactly, or the import is refused
naming the field; the printed rules load as spendfuse rules and never contain a key's value."""

from __future__ import annotations

import copy
import hashlib
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from governance import RULES_DIR, bifrost, policy
from governance.policy import Policy

EXAMPLES = RULES_DIR / "examples"
SECRET = "sk-bf-test-secret-value-0001"


def load_rules(text: str, base: Path = RULES_DIR) -> Policy:
    """The printed rules as spendfuse loads them."""
    return policy.parse(yaml.safe_load(text), base=Path(base))


def vk(ident: str = "vk-1", **fields: Any) -> dict[str, Any]:
    """A virtual key allowed every OpenAI model, plus `fields`."""
    key: dict[str, Any] = {
        "id": ident,
        "name": ident,
        "value": f"{SECRET}-{ident}",
        "provider_configs": [{"provider": "openai", "allowed_models": ["*"], "key_ids": ["*"]}],
    }
    key.update(fields)
    return key


def budget(ident: str = "b1", **fields: Any) -> dict[str, Any]:
    return {"id": ident, "max_limit": 10, "reset_duration": "1d", **fields}


def config(**governance: Any) -> dict[str, Any]:
    """A config.json with this governance section; a key holds every budget and rate limit
    that nothing else attaches, so the tests of one field stay short."""
    return {"governance": governance}


def convert(data: dict[str, Any], **kw: Any) -> tuple[dict[str, Any], str, Policy]:
    """Convert, print and load back: the rules, their text, and the loaded policy."""
    rules = bifrost.convert(data, **kw)
    text = bifrost.to_yaml(rules)
    return rules, text, load_rules(text)


def problems(data: object, **kw: Any) -> list[str]:
    with pytest.raises(bifrost.BifrostImportError) as e:
        bifrost.convert(data, **kw)
    return e.value.problems


# -- the shipped examples --------------------------------------------------------------------------


def _example(name: str) -> Any:
    text = (EXAMPLES / name).read_text()
    return json.loads(text, parse_float=Decimal) if name.endswith(".json") else yaml.safe_load(text)


@pytest.mark.parametrize("name", ["bifrost-config.json", "bifrost-values.yaml"])
def test_the_examples_convert_and_load_as_rules(name: str):
    data = _example(name)
    rules, notes = bifrost.convert_with_notes(data)
    text = bifrost.to_yaml(rules, source=f"rules/examples/{name}", notes=notes)
    p = load_rules(text)
    assert text.startswith("# spendfuse rules converted from Bifrost governance (rules/examples/")
    assert p.version == 2 and p.require_key is True
    assert p.keys and all(k.secret_sha256 for k in p.keys)
    raw = (EXAMPLES / name).read_text()
    for key in rules["keys"]:
        # Every virtual key value of the example is absent from the output.
        secret = next(v["value"] for v in _vks(data) if v["id"] == key["id"])
        assert secret in raw and secret not in text
        assert key["secret_sha256"] == hashlib.sha256(secret.encode()).hexdigest()
    policy.require_limits(p)


def _vks(data: Any) -> list[dict[str, Any]]:
    return (
        data["governance"]["virtual_keys"]
        if "governance" in data
        else data["bifrost"]["governance"]["virtualKeys"]
    )


def test_config_example_in_detail():
    p = load_rules(bifrost.to_yaml(bifrost.convert(_example("bifrost-config.json"))))
    budgets = {b.id: b for b in p.budgets}
    assert (budgets["budget-acme-monthly"].reset, budgets["budget-acme-monthly"].calendar) == ("30d", False)
    # The team is calendar-aligned, so its budget resets on the 1st (UTC), as in Bifrost.
    team_ml = budgets["budget-team-ml"]
    assert (team_ml.reset, team_ml.calendar, team_ml.timezone, team_ml.max_usd) == (
        "1M",
        True,
        "UTC",
        Decimal("500.5"),
    )
    keys = {k.id: k for k in p.keys}
    assert keys["vk-platform"].allowed_models == ["gpt-4o", "gpt-4o-mini"]
    assert keys["vk-platform"].budgets == ["budget-platform-daily"] and keys["vk-platform"].team == "team-ml"
    assert (
        keys["vk-research"].allowed_providers == ["anthropic", "openai"]
        and keys["vk-research"].allowed_models is None
    )
    assert keys["vk-retired"].active is False
    assert [(m.model, m.provider, m.budgets, m.rate_limits) for m in p.models] == [
        ("gpt-4o", "openai", ["budget-gpt-4o-daily"], ["rl-gpt-4o-tpm"])
    ]
    assert [(s.provider, s.budgets) for s in p.providers] == [("openai", ["budget-openai-weekly"])]


def test_values_example_in_detail():
    p = load_rules(bifrost.to_yaml(bifrost.convert(_example("bifrost-values.yaml"))))
    keys = {k.id: k for k in p.keys}
    assert keys["vk-dev"].allowed_models == ["gpt-4o-mini"] and keys["vk-dev"].rate_limits == [
        "rate-limit-burst"
    ]
    assert keys["vk-dev"].budgets == ["budget-dev"]
    assert [(t.id, t.customer, t.budgets) for t in p.teams] == [
        ("team-platform", "customer-acme", ["budget-platform"])
    ]


def test_printed_rules_load_wherever_they_are_saved(tmp_path: Path):
    """The printed rules name no table files, so the shipped tables apply wherever the rules
    file lives, not only beside the shipped ones."""
    text = bifrost.to_yaml(bifrost.convert(_example("bifrost-config.json")))
    assert "multipliers" not in text and "model_limits" not in text
    (tmp_path / "rules.yaml").write_text(text)
    assert policy.load(tmp_path / "rules.yaml").keys


# -- budgets -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reset_duration,calendar_aligned,reset,calendar",
    [
        ("30s", False, "30s", False),
        ("5m", False, "5m", False),
        ("1h", False, "1h", False),
        ("1h30m", False, "90m", False),
        ("1.5h", False, "90m", False),
        ("1d", False, "1d", False),
        ("2d", False, "2d", False),
        ("1w", False, "1w", False),
        ("1M", False, "30d", False),  # Bifrost's rolling month is 30 days
        ("1Y", False, "365d", False),  # and its rolling year 365
        ("monthly", False, "30d", False),
        ("Daily", False, "1d", False),
        ("1d", True, "1d", True),
        ("1w", True, "1w", True),
        ("1M", True, "1M", True),
        ("1Y", True, "1Y", True),
        ("monthly", True, "1M", True),
        ("1h", True, "1h", False),  # Bifrost aligns only d, w, M and Y; shorter stays rolling
    ],
)
def test_budget_reset(reset_duration: str, calendar_aligned: bool, reset: str, calendar: bool):
    data = config(
        budgets=[budget(reset_duration=reset_duration, virtual_key_id="vk-1")],
        virtual_keys=[vk(calendar_aligned=calendar_aligned)],
    )
    _, _, p = convert(data)
    (b,) = p.budgets
    assert (b.reset, b.calendar, b.timezone) == (reset, calendar, "UTC")
    assert p.keys[0].budgets == ["b1"]


@pytest.mark.parametrize("amount", [Decimal("100.50"), Decimal("0.1"), 25, "12.25", 7.5, Decimal("1E+2")])
def test_budget_amount_is_printed_exactly(amount: object):
    rules, text, p = convert(
        config(budgets=[budget(max_limit=amount, virtual_key_id="vk-1")], virtual_keys=[vk()])
    )
    expected = Decimal(str(amount))
    assert rules["budgets"][0]["max_usd"] == expected
    assert f"max_usd: {format(expected, 'f')}\n" in text  # a YAML number, not a quoted string
    assert p.budgets[0].max_usd == expected


def test_budget_owners_and_references():
    data = config(
        budgets=[
            budget("by-key", virtual_key_id="vk-1"),
            budget("by-team", team_id="t1"),
            budget("by-customer", customer_id="c1"),
            budget("by-model", model_config_id="mc-1"),
            budget("by-id"),
        ],
        customers=[{"id": "c1", "name": "C"}],
        teams=[{"id": "t1", "name": "T", "customer_id": "c1", "budget_id": "by-id"}],
        virtual_keys=[vk(team_id="t1")],
        model_configs=[{"id": "mc-1", "model_name": "gpt-4o"}],
    )
    _, _, p = convert(data)
    assert p.keys[0].budgets == ["by-key"]
    assert p.teams[0].budgets == ["by-id", "by-team"]
    assert p.customers[0].budgets == ["by-customer"]
    assert [(m.model, m.provider, m.budgets) for m in p.models] == [("gpt-4o", None, ["by-model"])]


def test_inline_customer_budgets():
    data = config(
        customers=[
            {
                "id": "c1",
                "name": "Acme",
                "calendar_aligned": True,
                "budgets": [
                    {"id": "c1-daily", "max_limit": 5, "reset_duration": "1d"},
                    {"id": "c1-monthly", "max_limit": 100, "reset_duration": "1M"},
                ],
            }
        ]
    )
    _, _, p = convert(data)
    assert p.customers[0].budgets == ["c1-daily", "c1-monthly"] and p.customers[0].name == "Acme"
    assert [(b.reset, b.calendar) for b in p.budgets] == [("1d", True), ("1M", True)]


def test_unattached_limits_are_left_out_with_a_note():
    rules, notes = bifrost.convert_with_notes(
        config(budgets=[budget("used", virtual_key_id="vk-1"), budget("idle")], virtual_keys=[vk()])
    )
    assert [b["id"] for b in rules["budgets"]] == ["used"]
    assert any("'idle' is attached to nothing" in n for n in notes)
    text = bifrost.to_yaml(rules, notes=notes)
    assert "# note: governance.budgets[1]: budget 'idle' is attached to nothing" in text
    load_rules(text)


# -- rate limits -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "limit,expected",
    [
        (
            {
                "token_max_limit": 1000,
                "token_reset_duration": "1h",
                "request_max_limit": 10,
                "request_reset_duration": "1m",
            },
            {
                "max_tokens": 1000,
                "tokens_reset": "1h",
                "max_requests": 10,
                "requests_reset": "1m",
                "count_tokens": "total",
            },
        ),
        (
            {"token_max_limit": 500, "token_reset_duration": "1d"},
            {"max_tokens": 500, "tokens_reset": "1d", "max_requests": None},
        ),
        (
            {"request_max_limit": 60, "request_reset_duration": "1m"},
            {"max_requests": 60, "requests_reset": "1m", "max_tokens": None},
        ),
        (
            {"request_max_limit": 60, "request_reset_duration": "1M"},
            {"max_requests": 60, "requests_reset": "30d"},
        ),
        (
            {"token_max_limit": 9, "token_reset_duration": "1w", "metric": "tokens"},
            {"max_tokens": 9, "tokens_reset": "1w"},
        ),
    ],
)
def test_rate_limit(limit: dict[str, Any], expected: dict[str, Any]):
    _, _, p = convert(config(rate_limits=[{"id": "r1", **limit}], virtual_keys=[vk(rate_limit_id="r1")]))
    (r,) = p.rate_limits
    for field, value in expected.items():
        assert getattr(r, field) == value, field
    assert p.keys[0].rate_limits == ["r1"]


def test_a_calendar_aligned_owner_aligns_its_rate_limit():
    limit = {"id": "r1", "request_max_limit": 100, "request_reset_duration": "1d"}
    _, _, p = convert(
        config(
            rate_limits=[limit],
            teams=[{"id": "t", "name": "t", "rate_limit_id": "r1", "calendar_aligned": True}],
        )
    )
    assert (p.rate_limits[0].requests_reset, p.rate_limits[0].calendar) == ("1d", True)
    assert p.teams[0].rate_limits == ["r1"]


# -- customers, teams, keys --------------------------------------------------------------------


def test_customers_and_teams():
    data = config(
        budgets=[budget("cb"), budget("tb")],
        rate_limits=[{"id": "cr", "request_max_limit": 1, "request_reset_duration": "1h"}],
        customers=[{"id": "acme", "name": "Acme Corp", "budget_id": "cb", "rate_limit_id": "cr"}],
        teams=[{"id": "ml", "name": "ML", "customer_id": "acme", "budget_id": "tb", "source_id": "scim-1"}],
    )
    rules, _, p = convert(data)
    assert rules["customers"] == [
        {"id": "acme", "name": "Acme Corp", "budgets": ["cb"], "rate_limits": ["cr"]}
    ]
    assert rules["teams"] == [{"id": "ml", "name": "ML", "customer": "acme", "budgets": ["tb"]}]
    assert p.teams[0].customer == "acme"


def test_keys_hash_their_value_and_never_print_it():
    data = config(
        customers=[{"id": "c", "name": "c"}],
        teams=[{"id": "t", "name": "t"}],
        virtual_keys=[
            vk("on-team", team_id="t", description="not printed"),
            vk("on-customer", customer_id="c", is_active=False, expires_at="2027-01-01T00:00:00Z"),
        ],
    )
    rules, text, p = convert(data)
    a, b = p.keys
    assert a.secret_sha256 == hashlib.sha256(f"{SECRET}-on-team".encode()).hexdigest()
    assert (a.team, a.customer, a.active) == ("t", None, True)
    assert (b.team, b.customer, b.active) == (None, "c", False)
    assert b.expires_at is not None and b.expires_at.isoformat() == "2027-01-01T00:00:00+00:00"
    assert SECRET not in text and SECRET not in repr(rules)
    assert "not printed" not in text


def test_a_key_value_from_the_environment():
    data = config(virtual_keys=[vk(value="env.VK_ONE")])
    assert any("VK_ONE, which is not set" in p for p in problems(data))
    rules = bifrost.convert(data, environ={"VK_ONE": "from-env-secret"})
    assert rules["keys"][0]["secret_sha256"] == hashlib.sha256(b"from-env-secret").hexdigest()


# -- allow-lists -------------------------------------------------------------------------------


def _pc(provider: str, models: list[str] | None = None, **fields: Any) -> dict[str, Any]:
    pc: dict[str, Any] = {"provider": provider, "key_ids": ["*"], **fields}
    if models is not None:
        pc["allowed_models"] = models
    return pc


@pytest.mark.parametrize(
    "version,configs,expected",
    [
        (
            2,
            [_pc("openai", ["gpt-4o", "GPT-4o-mini"])],
            {"allowed_providers": ["openai"], "allowed_models": ["GPT-4o-mini", "gpt-4o"]},
        ),
        (2, [_pc("openai", ["*"]), _pc("anthropic", ["*"])], {"allowed_providers": ["anthropic", "openai"]}),
        (
            2,
            [_pc("openai", ["gpt-4o"]), _pc("anthropic", ["gpt-4o"])],
            {"allowed_providers": ["anthropic", "openai"], "allowed_models": ["gpt-4o"]},
        ),
        (
            2,
            [_pc("openai", ["*"], blacklisted_models=["o1-pro"])],
            {"allowed_providers": ["openai"], "denied_models": ["o1-pro"]},
        ),
        (
            2,
            [_pc("openai", ["gpt-4o", "o1"], blacklisted_models=["o1"])],
            {"allowed_providers": ["openai"], "allowed_models": ["gpt-4o"]},
        ),
        (2, [_pc("openai", ["*"], blacklisted_models=[])], {"allowed_providers": ["openai"]}),
        # Since Bifrost 1.5 an empty list allows nothing; a missing one follows the Helm
        # governance docs (every model, every provider), with a warning...
        (2, [_pc("openai", [])], {"allowed_providers": []}),
        (2, [_pc("openai")], {"allowed_providers": ["openai"]}),
        (2, [_pc("openai", ["*"], key_ids=[])], {"allowed_providers": []}),
        (2, [_pc("anthropic", []), _pc("openai", ["*"])], {"allowed_providers": ["openai"]}),
        (2, [], {"allowed_providers": []}),
        (2, None, {}),
        # ...and with "version": 1 everything, as in 1.4: spendfuse leaves its list unset.
        (1, [_pc("openai", [])], {"allowed_providers": ["openai"]}),
        (
            1,
            [_pc("openai", ["gpt-4o"], key_ids=[])],
            {"allowed_providers": ["openai"], "allowed_models": ["gpt-4o"]},
        ),
        (1, [], {}),
        (1, None, {}),
    ],
)
def test_allow_lists(version: int, configs: list[dict[str, Any]] | None, expected: dict[str, Any]):
    key = vk()
    if configs is None:
        del key["provider_configs"]
    else:
        key["provider_configs"] = configs
    rules, _, p = convert({"version": version, **config(virtual_keys=[key])})
    out = rules["keys"][0]
    for field in ("allowed_providers", "allowed_models", "denied_models"):
        assert out.get(field) == expected.get(field), field
    assert p.keys[0].allowed_models == expected.get("allowed_models")
    assert p.keys[0].denied_models == expected.get("denied_models", [])


def test_google_and_aws_names_must_be_governed_alike():
    same = [_pc("gemini", ["gemini-2.5-pro"]), _pc("vertex", ["gemini-2.5-pro"])]
    rules, _, _ = convert(config(virtual_keys=[vk(provider_configs=same)]))
    assert rules["keys"][0]["allowed_providers"] == ["google"]
    [problem] = problems(config(virtual_keys=[vk(provider_configs=[_pc("gemini", ["*"])])]))
    assert problem.startswith("governance.virtual_keys[0].provider_configs:") and "'google'" in problem


# -- providers and model configs ---------------------------------------------------------------


def test_provider_governance():
    data = config(
        budgets=[budget("ob"), budget("ab")],
        rate_limits=[{"id": "or", "request_max_limit": 5, "request_reset_duration": "1m"}],
        providers=[
            {"name": "openai", "budget_id": "ob", "rate_limit_id": "or", "send_back_raw_response": False},
            {"name": "anthropic", "budget_id": "ab"},
        ],
    )
    _, _, p = convert(data)
    assert [(s.provider, s.budgets, s.rate_limits) for s in p.providers] == [
        ("openai", ["ob"], ["or"]),
        ("anthropic", ["ab"], []),
    ]


@pytest.mark.parametrize(
    "model_config,where",
    [
        (
            {"model_name": "gpt-4o", "provider": "openai"},
            ("models", {"model": "gpt-4o", "provider": "openai"}),
        ),
        ({"model_name": "gpt-4o"}, ("models", {"model": "gpt-4o"})),
        ({"model_name": "claude-sonnet-4-5", "scope": "global"}, ("models", {"model": "claude-sonnet-4-5"})),
        ({"model_name": "*", "provider": "anthropic"}, ("providers", {"provider": "anthropic"})),
        ({"model_name": "*"}, ("global", {})),
        ({"model_name": "*", "scope": "virtual_key", "scope_id": "vk-1"}, ("keys", {"id": "vk-1"})),
    ],
)
def test_model_configs(model_config: dict[str, Any], where: tuple[str, dict[str, Any]]):
    data = config(
        budgets=[budget("mb")],
        rate_limits=[{"id": "mr", "token_max_limit": 5, "token_reset_duration": "1m"}],
        model_configs=[{"id": "mc", "budget_id": "mb", "rate_limit_id": "mr", **model_config}],
        virtual_keys=[vk()],
    )
    rules, text, _ = convert(data)
    section, fields = where
    scope = (
        rules[section]
        if section == "global"
        else next(s for s in rules[section] if fields.items() <= s.items())
    )
    assert scope["budgets"] == ["mb"] and scope["rate_limits"] == ["mr"]
    if section == "models":
        # The exact model name, not a prefix: spendfuse reads a name without `*` as that model.
        assert scope["model"] == model_config["model_name"] and "*" not in scope["model"]


def test_model_config_budget_ids_list():
    data = config(
        budgets=[budget("daily"), budget("monthly", reset_duration="1M")],
        model_configs=[
            {"id": "mc", "model_name": "gpt-4o", "provider": "openai", "budget_ids": ["daily", "monthly"]}
        ],
    )
    _, _, p = convert(data)
    assert p.models[0].budgets == ["daily", "monthly"]


# -- requiring a key ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "top,expected",
    [
        ({}, None),
        ({"client": {"enforce_auth_on_inference": True}}, True),
        ({"client": {"enforce_auth_on_inference": False}}, False),
        ({"client": {"enforce_governance_header": True}}, True),
        ({"plugins": [{"name": "governance", "enabled": True, "config": {"is_vk_mandatory": True}}]}, True),
        ({"plugins": [{"name": "governance", "enabled": False, "config": {"is_vk_mandatory": True}}]}, None),
        ({"plugins": [{"name": "governance", "enabled": True, "config": {"is_vk_mandatory": False}}]}, False),
        (
            {
                "client": {"enforce_auth_on_inference": True},
                "governance": {"auth_config": {"disable_auth_on_inference": True}},
            },
            False,
        ),
    ],
)
def test_is_vk_mandatory_in_config_json(top: dict[str, Any], expected: bool | None):
    data = {"governance": {}, **copy.deepcopy(top)}
    section, mandatory = bifrost.find_governance(data)
    assert mandatory is expected and section == data["governance"]
    rules = bifrost.convert(data)
    assert rules.get("require_key") is expected
    assert load_rules(bifrost.to_yaml(rules)).require_key is bool(expected)


@pytest.mark.parametrize(
    "values,expected",
    [
        ({}, None),
        ({"plugins": {"governance": {"enabled": True, "config": {"is_vk_mandatory": True}}}}, True),
        ({"plugins": {"governance": {"enabled": False, "config": {"is_vk_mandatory": True}}}}, None),
        ({"client": {"enforceAuthOnInference": True, "enforceGovernanceHeader": False}}, True),
        ({"client": {"enforceAuthOnInference": False}}, False),
    ],
)
def test_is_vk_mandatory_in_helm_values(values: dict[str, Any], expected: bool | None):
    data = {"bifrost": {"governance": {"virtualKeys": [vk()]}, **values}}
    section, mandatory = bifrost.find_governance(data)
    assert mandatory is expected and "virtualKeys" in section
    assert bifrost.convert(data).get("require_key") is expected


def test_find_governance_refuses_a_flag_that_is_not_a_boolean():
    with pytest.raises(
        bifrost.BifrostImportError, match="client.enforce_auth_on_inference: must be true or false"
    ):
        bifrost.find_governance({"governance": {}, "client": {"enforce_auth_on_inference": "yes"}})


# -- what cannot be translated -----------------------------------------------------------------


def _vk_with_pc(**pc: Any) -> dict[str, Any]:
    return config(
        budgets=[budget()],
        rate_limits=[{"id": "r1", "request_max_limit": 1, "request_reset_duration": "1m"}],
        virtual_keys=[vk(provider_configs=[_pc("openai", ["*"], **pc)])],
    )


UNTRANSLATABLE = [
    (
        _vk_with_pc(key_ids=["openai-primary"]),
        "governance.virtual_keys[0].provider_configs[0].key_ids: names provider key 'openai-primary', "
        "which this file does not define under providers.openai.keys",
    ),
    (
        _vk_with_pc(key_ids=None, keys=[{"id": 1}]),
        "governance.virtual_keys[0].provider_configs[0].keys: must be a list of {name: provider key name}",
    ),
    (_vk_with_pc(unknown=1), "governance.virtual_keys[0].provider_configs[0].unknown: unknown field"),
    (
        config(virtual_keys=[vk(provider_configs=[_pc("openai", ["gpt-*"])])]),
        "governance.virtual_keys[0].provider_configs[0].allowed_models[0]: 'gpt-*': Bifrost matches it",
    ),
    (
        config(virtual_keys=[vk(provider_configs=[_pc("openai", ["*", "gpt-4o"])])]),
        "governance.virtual_keys[0].provider_configs[0].allowed_models: Bifrost allows '*' only alone",
    ),
    (
        config(virtual_keys=[vk(provider_configs=[_pc("ollama", ["*"])])]),
        "governance.virtual_keys[0].provider_configs[0].provider: unknown provider 'ollama'",
    ),
    (
        config(virtual_keys=[vk(provider_configs=[_pc("openai", ["*"]), _pc("openai", ["*"])])]),
        "governance.virtual_keys[0].provider_configs[1].provider: 'openai' has two provider configs",
    ),
    (
        config(budgets=[budget(provider_config_id=3)]),
        "governance.budgets[0].provider_config_id: a budget on one provider of one key",
    ),
    (
        config(budgets=[budget(virtual_key_id="vk-1", team_id="t")]),
        "governance.budgets[0]: a budget has at most one owner",
    ),
    (
        config(virtual_keys=[{k: v for k, v in vk().items() if k != "value"}]),
        "governance.virtual_keys[0].value: missing",
    ),
    (
        config(virtual_keys=[vk(value="vault.bifrost/vk#value")]),
        "governance.virtual_keys[0].value: is a vault reference",
    ),
    (
        config(virtual_keys=[vk(mcp_configs=[{"mcp_client_name": "github", "tools_to_execute": ["*"]}])]),
        "governance.virtual_keys[0].mcp_configs: spendfuse does not govern MCP tools",
    ),
    (
        config(virtual_keys=[vk(access_profile_id=4)]),
        "governance.virtual_keys[0].access_profile_id: spendfuse has no access profiles",
    ),
    (config(virtual_keys=[vk(colour="blue")]), "governance.virtual_keys[0].colour: unknown field"),
    (
        config(
            teams=[{"id": "t", "name": "t"}],
            customers=[{"id": "c", "name": "c"}],
            virtual_keys=[vk(team_id="t", customer_id="c")],
        ),
        "governance.virtual_keys[0].customer_id: a virtual key belongs to a team or to a customer, not both",
    ),
    (config(virtual_keys=[vk(team_id="nope")]), "governance.virtual_keys[0].team_id: unknown team 'nope'"),
    (
        config(virtual_keys=[vk(rate_limit_id="nope")]),
        "governance.virtual_keys[0].rate_limit_id: unknown rate limit id 'nope'",
    ),
    (
        config(virtual_keys=[vk("has space")]),
        "governance.virtual_keys[0].id: 'has space' is not a spendfuse id",
    ),
    (config(virtual_keys=[vk(name=f"{SECRET}-vk-1")]), "governance.virtual_keys[0].value: appears elsewhere"),
    (
        config(virtual_keys=[vk(expires_at="tomorrow")]),
        "governance.virtual_keys[0].expires_at: 'tomorrow' is not an RFC 3339",
    ),
    (
        config(budgets=[budget(reset_duration="1fortnight")]),
        "governance.budgets[0].reset_duration: '1fortnight' is not a Bifrost duration",
    ),
    (
        config(budgets=[budget(reset_duration="500ms", virtual_key_id="vk-1")], virtual_keys=[vk()]),
        "governance.budgets[0].reset_duration: '500ms' is not a whole number of seconds",
    ),
    (
        config(
            budgets=[budget(reset_duration="2M", virtual_key_id="vk-1")],
            virtual_keys=[vk(calendar_aligned=True)],
        ),
        "governance.budgets[0].reset_duration: '2M' is calendar-aligned",
    ),
    (
        config(budgets=[budget(reset_duration=None)]),
        "governance.budgets[0].reset_duration: None is not a duration",
    ),
    (
        config(budgets=[budget(max_limit=-1)]),
        "governance.budgets[0].max_limit: must be a non-negative number",
    ),
    (
        config(budgets=[budget(max_limit="lots")]),
        "governance.budgets[0].max_limit: must be a non-negative number",
    ),
    (config(budgets=[budget(current_usage=3.5)]), "governance.budgets[0].current_usage: usage already spent"),
    (
        config(budgets=[budget(last_reset="2026-01-01T00:00:00Z")]),
        "governance.budgets[0].last_reset: a window's start",
    ),
    (
        config(budgets=[budget(calendar_aligned=True)]),
        "governance.budgets[0].calendar_aligned: deprecated in Bifrost",
    ),
    (config(budgets=[budget(), budget()]), "governance.budgets[1].id: duplicate budget id 'b1'"),
    (
        config(
            budgets=[
                budget(virtual_key_id="vk-1"),
            ],
            teams=[{"id": "t", "name": "t", "budget_id": "b1", "calendar_aligned": True}],
            virtual_keys=[vk()],
        ),
        "governance.budgets[0]: shared by calendar-aligned (governance.teams[0].budget_id) and rolling",
    ),
    (
        config(rate_limits=[{"id": "r", "token_max_limit": 0, "token_reset_duration": "1h"}]),
        "governance.rate_limits[0].token_max_limit: must be a whole number above 0",
    ),
    (
        config(rate_limits=[{"id": "r", "token_max_limit": 10}]),
        "governance.rate_limits[0].token_reset_duration: None is not a duration",
    ),
    (
        config(
            rate_limits=[
                {"id": "r", "request_max_limit": 10, "request_reset_duration": "1h", "metric": "tokens"}
            ]
        ),
        "governance.rate_limits[0].metric: 'tokens' does not match",
    ),
    (
        config(
            rate_limits=[
                {
                    "id": "r",
                    "request_max_limit": 9,
                    "request_reset_duration": "1h",
                    "request_current_usage": 4,
                }
            ]
        ),
        "governance.rate_limits[0].request_current_usage: usage already spent",
    ),
    (
        config(
            rate_limits=[
                {
                    "id": "r",
                    "request_max_limit": 9,
                    "request_reset_duration": "1h",
                    "token_max_limit": 9,
                    "token_reset_duration": "1d",
                }
            ],
            virtual_keys=[vk(rate_limit_id="r", calendar_aligned=True)],
        ),
        "governance.rate_limits[0]: calendar-aligned, and Bifrost aligns one of its windows",
    ),
    (
        config(teams=[{"id": "t", "name": "t", "business_unit_id": "bu"}]),
        "governance.teams[0].business_unit_id: spendfuse has no business units",
    ),
    (
        config(teams=[{"id": "t", "name": "t", "claims": {"group": "x"}}]),
        "governance.teams[0].claims: free-form team data",
    ),
    (
        config(teams=[{"id": "t", "name": "t", "customer_id": "c"}]),
        "governance.teams[0].customer_id: unknown customer 'c'",
    ),
    (
        config(
            customers=[{"id": "c", "name": "c", "budget_id": "b1", "budgets": [budget("b2")]}],
            budgets=[budget()],
        ),
        "governance.customers[0].budget_id: Bifrost takes budgets or budget_id on a customer, not both",
    ),
    (
        config(
            model_configs=[{"id": "m", "model_name": "gpt-4o", "scope": "virtual_key", "scope_id": "vk-1"}],
            virtual_keys=[vk()],
        ),
        "governance.model_configs[0].scope: a limit on one model or provider of one virtual key",
    ),
    (
        config(
            model_configs=[
                {
                    "id": "m",
                    "model_name": "*",
                    "provider": "openai",
                    "scope": "virtual_key",
                    "scope_id": "vk-1",
                }
            ],
            virtual_keys=[vk()],
        ),
        "governance.model_configs[0].scope: a limit on one model or provider of one virtual key",
    ),
    (
        config(model_configs=[{"id": "m", "model_name": "*", "scope": "user", "scope_id": "u"}]),
        "governance.model_configs[0].scope: 'user' scope",
    ),
    (
        config(model_configs=[{"id": "m", "model_name": "gpt-4*"}]),
        "governance.model_configs[0].model_name: 'gpt-4*'",
    ),
    (
        config(model_configs=[{"id": "m", "model_name": "gpt-4o", "provider": "vllm"}]),
        "governance.model_configs[0].provider: unknown provider 'vllm'",
    ),
    (
        config(
            model_configs=[
                {"id": "m", "model_name": "gemini-2.5-pro", "provider": "gemini", "budget_id": "b1"}
            ],
            budgets=[budget()],
        ),
        "governance.model_configs[0]: limits on model 'gemini-2.5-pro' of gemini",
    ),
    (
        config(providers=[{"name": "bedrock", "budget_id": "b1"}], budgets=[budget()]),
        "governance.providers[0]: limits on bedrock",
    ),
    (
        config(providers=[{"name": "custom-llm"}]),
        "governance.providers[0].name: unknown provider 'custom-llm'",
    ),
    (
        config(routing_rules=[{"id": "r", "name": "r", "targets": [{"weight": 1}]}]),
        "governance.routing_rules: routing rules change",
    ),
    (
        config(
            pricing_overrides=[{"id": "p", "scope_kind": "user", "pattern": "gpt-4o", "match_type": "exact"}]
        ),
        "governance.pricing_overrides[0].scope_kind: 'user': spendfuse prices a model alike",
    ),
    (
        config(business_units=[{"id": "bu", "name": "bu"}]),
        "governance.business_units: spendfuse has no business units",
    ),
    (config(roles=[{"name": "admin"}]), "governance.roles: spendfuse has no dashboard roles"),
    (config(guardrails=[]), "governance.guardrails: unknown key"),
    ({"version": 3, "governance": {}}, "version: 3 is not a Bifrost config version"),
    # Helm: only what the chart passes on reaches Bifrost.
    (
        {"bifrost": {"governance": {"virtual_keys": []}}},
        "bifrost.governance.virtual_keys: unknown key; the Bifrost chart reads only",
    ),
    (
        {
            "bifrost": {
                "governance": {
                    "rateLimits": [
                        {
                            "id": "r",
                            "request_max_limit": 1,
                            "request_reset_duration": "1h",
                            "calendar_aligned": False,
                        }
                    ]
                }
            }
        },
        "bifrost.governance.rateLimits[0].calendar_aligned: unknown field (the Bifrost chart passes only",
    ),
    (
        {
            "bifrost": {
                "governance": {
                    "virtualKeys": [vk(provider_configs=[_pc("openai", ["*"], rate_limit_id="x")])]
                }
            }
        },
        "bifrost.governance.virtualKeys[0].provider_configs[0].rate_limit_id: unknown rate limit id 'x'",
    ),
    ({"something": "else"}, "(top level): no governance section"),
    ([1, 2], "(top level): expected a Bifrost config.json object or Helm values mapping"),
]


@pytest.mark.parametrize("data,problem", UNTRANSLATABLE, ids=[p.split(":")[0] for _, p in UNTRANSLATABLE])
def test_untranslatable_fields_are_refused_by_name(data: object, problem: str):
    found = problems(data)
    assert any(p.startswith(problem) or problem in p for p in found), found


def test_every_problem_is_reported_at_once():
    data = config(
        budgets=[budget(provider_config_id=1)],
        virtual_keys=[
            vk(provider_configs=[_pc("ollama", ["*"])]),
            {k: v for k, v in vk("vk-2").items() if k != "value"},
        ],
        routing_rules=[{"id": "r"}],
    )
    found = problems(data)
    assert len(found) == 4, found
    text = str(bifrost.BifrostImportError(found))
    assert text.startswith("cannot translate this Bifrost governance into spendfuse rules:")
    assert all(p in text for p in found)


# -- odds and ends -----------------------------------------------------------------------------


def test_no_limits_at_all_means_unlimited_as_in_bifrost():
    rules, notes = bifrost.convert_with_notes(config(virtual_keys=[vk()]))
    assert rules["allow_unlimited"] is True and any("allow_unlimited" in n for n in notes)
    p = load_rules(bifrost.to_yaml(rules, notes=notes))
    policy.require_limits(p)


def test_an_empty_governance_section_converts():
    rules = bifrost.convert({"governance": None})
    assert rules == {"version": 2, "allow_unlimited": True}


def test_ignored_settings_do_not_govern_spend():
    data = config(
        auth_config={"is_enabled": True, "admin_username": "env.A", "admin_password": "env.P"},
        complexity_analyzer_config={"tier_boundaries": {}},
        providers=[{"name": "openai", "network_config": {"max_retries": 3}, "budget_id": "b1"}],
        budgets=[budget()],
        virtual_keys=[vk(description="d", provider_configs=[_pc("openai", ["*"], weight=2, id=7)])],
    )
    rules, notes = bifrost.convert_with_notes(data)
    assert any("dashboard credentials left out" in n for n in notes)
    assert "env.P" not in bifrost.to_yaml(rules, notes=notes)


def test_to_yaml_header_and_numbers():
    text = bifrost.to_yaml(
        {
            "version": 2,
            "budgets": [{"id": "b", "max_usd": Decimal("1E+2")}, {"id": "c", "max_usd": Decimal("0.000010")}],
        },
        source="config.json",
        notes=["one note"],
    )
    assert text.splitlines()[:3] == [
        "# spendfuse rules converted from Bifrost governance (config.json) by `spendfuse import-bifrost`.",
        "# Clients keep sending their virtual key in the x-bf-vk header.",
        "# note: one note",
    ]
    assert "max_usd: 100\n" in text and "max_usd: 0.000010\n" in text
    assert yaml.safe_load(text)["budgets"][1]["max_usd"] == pytest.approx(0.00001)
