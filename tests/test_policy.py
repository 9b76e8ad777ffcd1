from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from governance import DEFAULT_RULES, RULES_DIR, policy
from governance.errors import PolicyError


def test_shipped_rules_load():
    p = policy.load(DEFAULT_RULES)
    assert [(b.id, b.max_usd, b.reset) for b in p.budgets] == [("global", Decimal("1.0"), "never")]
    assert p.global_scope.budgets == ["global"]
    assert p.max_multiplier is None
    assert p.multiplier_table()["claude-opus-4-1"] == 5 and "default" not in p.multiplier_table()
    assert p.output_cap_table()["gpt-4o"] == 16384
    assert p.unknown_llm_hosts == "refuse"  # LLM-shaped traffic to unknown hosts: refused


def test_committed_schema_is_fresh():
    assert (RULES_DIR / "policy.schema.json").read_text() == policy.json_schema()


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("version: 1\nbudgets: [{limit_usd: 1, windw: never}]\n", "windw"),
        ("version: 1\nbudget: {limit_usd: 1}\n", "budget"),
        ("version: 3\n", "version"),
        ("version: 1\nkeys: []\n", "needs `version: 2`"),
        ("version: 1\nbudgets: [{limit_usd: -1}]\n", "limit_usd"),
        ("version: 1\nbudgets: [{limit_usd: 1}, {limit_usd: 2}]\n", "duplicate"),
        ("version: 1\nmax_multiplier: lots\n", "max_multiplier"),
        ("version: 1\nmultipliers: missing.yaml\n", "missing.yaml"),
        ("[1, 2]\n", "mapping"),
        ("version: 1\n  bad: indent\n", "cannot read"),
        ("version: 1\nbudgets: [{limit_usd: 1}]\nunknown_llm_hosts: allow\n", "unknown_llm_hosts"),
        ("version: 1\nbudgets: [{limit_usd: 1}]\nunknown_llm_hosts: meter\n", "needs a default_price"),
        (
            "version: 1\nbudgets: [{limit_usd: 1}]\nhosts: [{name: a, match: [a.test], path_prefix: /x}]\n",
            "path_prefix",
        ),
    ],
)
def test_bad_rules_are_refused_with_the_reason(tmp_path: Path, text, fragment):
    (tmp_path / "multipliers.yaml").write_text("gpt-4o: 1\n")
    (tmp_path / "model_limits.yaml").write_text("gpt-4o: 100\n")
    f = tmp_path / "rules.yaml"
    f.write_text(text)
    with pytest.raises(PolicyError, match=fragment):
        policy.load(f)


def test_missing_rules_file():
    with pytest.raises(PolicyError, match="does not exist"):
        policy.load("/nonexistent/rules.yaml")


def test_overrides():
    p = policy.load(DEFAULT_RULES)
    q = policy.with_overrides(p, budget_usd=Decimal("5"), max_multiplier=Decimal("2"))
    assert q.budgets[0].max_usd == 5 and q.max_multiplier == 2
    empty = policy.parse({"multipliers": {}, "model_limits": {}}, Path("."))
    added = policy.with_overrides(empty, budget_usd=Decimal("3"))
    assert added.budgets[0].id == "global" and added.global_scope.budgets == ["global"]
    with pytest.raises(PolicyError):
        policy.with_overrides(p, budget_usd=Decimal("-1"))


def test_allow_unmetered_matching():
    a = policy.UnmeteredAllowance(host="API.openai.com", path="/v1/files*", methods=["post"])
    assert a.matches("POST", "api.openai.com", "/v1/files/abc")
    assert not a.matches("DELETE", "api.openai.com", "/v1/files/abc")
    assert not a.matches("POST", "api.openai.com", "/v1/embeddings")


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n", "---\n# nothing\n"])
def test_an_empty_rules_file_does_not_load(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError, match="empty"):
        policy.load(path)


TABLES = "multipliers: {}\nmodel_limits: {}\n"


@pytest.mark.parametrize("text", ["version: 1\n", "version: 1\nbudgets: []\n", "prices: {}\n"])
def test_rules_without_any_limit_need_allow_unlimited(tmp_path, text):
    path = tmp_path / "r.yaml"
    text += TABLES
    path.write_text(text)
    loaded = policy.load(path)
    with pytest.raises(PolicyError, match="no limit at all"):
        policy.require_limits(loaded)
    path.write_text(text + "allow_unlimited: true\n")
    policy.require_limits(policy.load(path))
    # A budget given by option is a limit too.
    policy.require_limits(policy.with_overrides(loaded, budget_usd=Decimal(1)))


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (
            "version: 1\nbudgets:\n  - name: global\n    limit_usd: 1\n    limit_usd: 100\n",
            "line 4, again on line 5",
        ),
        (
            "version: 1\nbudgets: [{limit_usd: 1}]\nmax_multiplier: 1\nbudgets: []\n",
            "line 2, again on line 4",
        ),
        (
            "version: 1\nprices:\n  m: {input_mtok: 1, output_mtok: 1, input_mtok: 0}\n",
            "duplicate key 'input_mtok'",
        ),
    ],
)
def test_duplicate_keys_are_errors_that_name_the_line(tmp_path, text, where):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError, match="duplicate key") as e:
        policy.load(path)
    assert where in str(e.value)


def test_operator_hosts_validate(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        TABLES + "budgets: [{limit_usd: 1}]\nhosts:\n  - {name: vllm, match: ['*'], family: openai}\n"
    )
    with pytest.raises(PolicyError, match="every host"):
        policy.load(path)
    path.write_text(
        TABLES + "budgets: [{limit_usd: 1}]\nhosts:\n  - {name: vllm, match: [10.0.0.5], family: gemini}\n"
    )
    with pytest.raises(PolicyError, match="family"):
        policy.load(path)


def test_shipped_host_table_is_valid():
    table = policy.host_table(())
    assert table.lookup("api.openai.com").family == "openai" and table.families["openai"].metered


V2 = {"version": 2, "multipliers": {}, "model_limits": {}}


@pytest.mark.parametrize(
    "data,where,fragment",
    [
        ({"budgets": [{"id": "b", "max_usd": 1}]}, "budgets.0", "attached to no scope"),
        ({"rate_limits": [{"id": "r", "max_requests": 1}]}, "rate_limits.0", "attached to no scope"),
        ({"global": {"budgets": ["nope"]}}, "global.budgets.0", "unknown budget id 'nope'"),
        (
            {"keys": [{"id": "k", "listeners": ["1"], "rate_limits": ["x"]}]},
            "keys.0.rate_limits.0",
            "unknown rate",
        ),
        (
            {"budgets": [{"id": "b", "max_usd": 1}, {"id": "b", "max_usd": 2}], "global": {"budgets": ["b"]}},
            "budgets.1.id",
            "duplicate id 'b'",
        ),
        ({"keys": [{"id": "k", "team": "t", "listeners": ["1"]}]}, "keys.0.team", "unknown team 't'"),
        ({"teams": [{"id": "t", "customer": "c"}]}, "teams.0.customer", "unknown customer 'c'"),
        ({"keys": [{"id": "k"}]}, "keys.0", "nothing can use it"),
        (
            {"keys": [{"id": "k", "listeners": ["1"]}, {"id": "j", "listeners": ["1"]}]},
            "keys.1.listeners.0",
            "already key 'k'",
        ),
        ({"budgets": [{"id": "b", "max_usd": 1, "reset": "5 minutes"}]}, "budgets.0.reset", ""),
        (
            {"global": {"budgets": ["b", "b"]}, "budgets": [{"id": "b", "max_usd": 1}]},
            "global",
            "attached twice",
        ),
    ],
)
def test_v2_problems_are_named_with_their_place(data, where, fragment):
    with pytest.raises(policy.RulesInvalid) as bad:
        policy.parse({**V2, **data}, Path("."))
    assert any(p.where() == where and fragment in p.message for p in bad.value.problems), bad.value.problems


def test_an_empty_allow_list_is_legal_but_warned():
    warnings: list[policy.Problem] = []
    p = policy.parse(
        {**V2, "keys": [{"id": "k", "listeners": ["1"], "allowed_models": []}]}, Path("."), warnings=warnings
    )
    assert p.keys[0].allowed_models == []
    assert [(w.where(), w.fatal) for w in warnings] == [("keys.0.allowed_models", False)]


def test_a_version_1_file_is_the_same_policy_as_its_version_2_form():
    v1 = policy.parse(
        {
            "multipliers": {},
            "model_limits": {},
            "budgets": [{"limit_usd": 2}, {"name": "ci", "limit_usd": 1}],
        },
        Path("."),
    )
    v2 = policy.parse(
        {
            **V2,
            "budgets": [{"id": "global", "max_usd": 2}, {"id": "ci", "max_usd": 1}],
            "global": {"budgets": ["global", "ci"]},
        },
        Path("."),
    )
    assert (v1.budgets, v1.global_scope) == (v2.budgets, v2.global_scope)


@pytest.mark.parametrize(
    "name", ["default.yaml", "per-run.yaml", "team.yaml", "firewall.yaml", "eval-harness.yaml"]
)
def test_every_shipped_rules_file_loads_and_enforces_something(name):
    p = policy.load(RULES_DIR / name)
    policy.require_limits(p)


@pytest.mark.parametrize(
    "data,fragment",
    [
        (
            {"providers": [{"provider": "OpenAI", "budgets": ["b"]}], "budgets": [{"id": "b", "max_usd": 1}]},
            "unknown provider",
        ),
        (
            {
                "models": [{"model": "gpt-4o", "budgets": ["b"]}, {"model": "gpt-4o", "rate_limits": ["r"]}],
                "budgets": [{"id": "b", "max_usd": 1}],
                "rate_limits": [{"id": "r", "max_requests": 1}],
            },  # fmt: skip
            "the same scope",
        ),
        ({"models": [{"model": "a|b"}]}, "models.0.model"),
    ],
)
def test_v2_settings_that_would_do_nothing_or_collide_are_refused(data, fragment):
    with pytest.raises(policy.RulesInvalid, match=fragment.replace("|", r"\|")):
        policy.parse({**V2, **data}, Path("."))
