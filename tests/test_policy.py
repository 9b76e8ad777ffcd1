from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from governance import DEFAULT_RULES, RULES_DIR, policy
from governance.errors import PolicyError


def test_shipped_rules_load():
    p = policy.load(DEFAULT_RULES)
    assert [(b.name, b.limit_usd, b.window) for b in p.budgets] == [("global", Decimal("1.0"), "never")]
    assert p.max_multiplier is None
    assert p.multiplier_table()["claude-opus-4-1"] == 5 and "default" not in p.multiplier_table()
    assert p.output_cap_table()["gpt-4o"] == 16384


def test_committed_schema_is_fresh():
    assert (RULES_DIR / "policy.schema.json").read_text() == policy.json_schema()


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("version: 1\nbudgets: [{limit_usd: 1, windw: never}]\n", "windw"),
        ("version: 1\nbudget: {limit_usd: 1}\n", "budget"),
        ("version: 2\n", "version"),
        ("version: 1\nbudgets: [{limit_usd: -1}]\n", "limit_usd"),
        ("version: 1\nbudgets: [{limit_usd: 1}, {limit_usd: 2}]\n", "duplicate"),
        ("version: 1\nmax_multiplier: lots\n", "max_multiplier"),
        ("version: 1\nmultipliers: missing.yaml\n", "missing.yaml"),
        ("[1, 2]\n", "mapping"),
        ("version: 1\n  bad: indent\n", "cannot read"),
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
    assert q.budgets[0].limit_usd == 5 and q.max_multiplier == 2
    empty = policy.parse({"multipliers": {}, "model_limits": {}}, Path("."))
    assert policy.with_overrides(empty, budget_usd=Decimal("3")).budgets[0].name == "global"
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
