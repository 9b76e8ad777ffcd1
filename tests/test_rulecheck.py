"""`spendfuse check`: every problem in a rules file at its line, and the effective policy in words."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from governance import DEFAULT_RULES, RULES_DIR
from governance.rulecheck import Located, check_file, check_text, describe, locate, render

# Model tables by absolute path, so a rules file in tmp_path loads the shipped ones.
TABLES = f"multipliers: {RULES_DIR / 'multipliers.yaml'}\nmodel_limits: {RULES_DIR / 'model_limits.yaml'}\n"
MARK = "# <-"  # marks the line a case expects its problem on
SECRET_HASH = hashlib.sha256(b"correct horse battery staple").hexdigest()


def v2(body: str) -> str:
    return "version: 2\n" + TABLES + body


def marked_line(text: str) -> int:
    lines = [i for i, line in enumerate(text.splitlines(), 1) if MARK in line]
    assert len(lines) == 1, "a case marks exactly one line"
    return lines[0]


def check(tmp_path: Path, text: str) -> tuple[object, list[Located], Path]:
    f = tmp_path / "rules.yaml"
    f.write_text(text)
    policy, problems = check_file(f)
    return policy, problems, f


ERROR_CASES = [
    pytest.param(
        v2(
            "budgets: [{id: run, max_usd: 1}]\nglobal: {budgets: [run]}\n"
            "keys:\n"
            "  - id: a\n"
            '    listeners: ["8081"]\n'
            f"    colour: red  {MARK}\n"
        ),
        "keys.0.colour",
        "Extra inputs",
        id="unknown-key-in-a-key",
    ),
    pytest.param(
        v2(
            "budgets:\n"
            "  - id: day\n"
            "    max_usd: 5\n"
            f"    reset: 5 minutes  {MARK}\n"
            "global: {budgets: [day]}\n"
        ),
        "budgets.0.reset",
        "5 minutes",
        id="bad-duration",
    ),
    pytest.param(
        v2(
            "budgets: [{id: run, max_usd: 1}]\nglobal: {budgets: [run]}\n"
            "keys:\n"
            "  - id: a\n"
            '    listeners: ["8081"]\n'
            "  - id: b\n"
            '    listeners: ["8082"]\n'
            "    budgets:\n"
            f"      - nope  {MARK}\n"
            "      - run\n"
        ),
        "keys.1.budgets.0",
        "unknown budget id 'nope'",
        id="unknown-budget-id",
    ),
    pytest.param(
        v2(
            "budgets: [{id: run, max_usd: 1}]\nglobal: {budgets: [run]}\n"
            "teams: [{id: t}]\n"
            "keys:\n"
            "  - id: a\n"
            '    listeners: ["8081"]\n'
            f"    team: ghost  {MARK}\n"
        ),
        "keys.0.team",
        "unknown team 'ghost'",
        id="unknown-team",
    ),
    pytest.param(
        v2(
            "budgets:\n"
            "  - {id: run, max_usd: 1}\n"
            f"  - {{id: run, max_usd: 2}}  {MARK}\n"
            "global: {budgets: [run]}\n"
        ),
        "budgets.1.id",
        "duplicate id 'run'",
        id="duplicate-budget-ids",
    ),
    pytest.param(
        v2(
            "budgets: [{id: run, max_usd: 1}]\nglobal: {budgets: [run]}\n"
            "keys:\n"
            '  - {id: a, listeners: ["8081"]}\n'
            f'  - {{id: a, listeners: ["8082"]}}  {MARK}\n'
        ),
        "keys.1.id",
        "duplicate id 'a'",
        id="duplicate-key-ids",
    ),
    pytest.param(
        v2(
            "budgets: [{id: run, max_usd: 1}]\nglobal: {budgets: [run]}\n"
            "keys:\n"
            "  - id: a\n"
            '    listeners: ["8081"]\n'
            "    team: x\n"
            f"    team: y  {MARK}\n"
        ),
        "keys.0.team",
        "duplicate key 'team'",
        id="duplicate-yaml-key",
    ),
    pytest.param(
        f"version: 2\n  bad: indent  {MARK}\n",
        "(yaml)",
        "mapping values are not allowed",
        id="yaml-syntax-error",
    ),
    pytest.param(
        f"version: 2\nbudgets: [{{id: run, max_usd: 1}}\nglobal: {{budgets: [run]}}  {MARK}\n",
        "(yaml)",
        "(while parsing a flow sequence on line 2)",
        id="yaml-unclosed-flow",
    ),
    pytest.param(
        v2(f"budgets: [{{id: run, max_usd: 1}}]\nglobal: !!python/object:os.system {{}}  {MARK}\n"),
        "global",
        "could not determine a constructor",
        id="yaml-unsafe-tag",
    ),
    pytest.param(
        v2(
            "budgets: [{id: run, max_usd: 1}]\nglobal: {budgets: [run]}\n"
            "rate_limits:\n"
            f"  - id: rpm  {MARK}\n"
            "    requests_reset: 1m\n"
        ),
        "rate_limits.0",
        "needs max_requests",
        id="rate-limit-without-limit",
    ),
    pytest.param(
        v2(f"budgets: [{{id: run, max_usd: 1}}]\nglobal: {{budgets: [run]}}\nmax_multiplier: lots  {MARK}\n"),
        "max_multiplier",
        "decimal",
        id="bad-scalar",
    ),
    pytest.param(
        "version: 1\n" + TABLES + f"budgets:\n  - name: g  {MARK}\n    limit: 1\n",
        "budgets.0.limit_usd",
        "Field required",
        id="v1-missing-field-at-its-item",
    ),
    pytest.param(
        "version: 1\n" + TABLES + f"budgets: [{{name: g, limit_usd: 1}}]\nkeys: []  {MARK}\n",
        "keys",
        "needs `version: 2`",
        id="v1-with-a-v2-key",
    ),
    pytest.param(
        f"version: 2\nmultipliers: missing.yaml  {MARK}\nmodel_limits: {RULES_DIR / 'model_limits.yaml'}\n",
        "multipliers",
        "does not exist",
        id="missing-model-table",
    ),
]


@pytest.mark.parametrize("text,where,fragment", ERROR_CASES)
def test_each_problem_is_an_error_at_its_line(tmp_path: Path, text: str, where: str, fragment: str):
    policy, problems, f = check(tmp_path, text)
    assert policy is None
    hits = [p for p in problems if fragment in p.message]
    assert hits, problems
    hit = hits[0]
    assert (hit.line, hit.where, hit.fatal) == (marked_line(text), where, True), hit
    out = render(str(f), policy, problems)
    assert f"{f}:{hit.line}:{hit.column}: error: {where}: " in out
    errors = sum(p.fatal for p in problems)
    assert out.splitlines()[-1] == (f"{errors} error" + ("s" if errors > 1 else ""))


def test_columns_point_at_the_key_or_item(tmp_path: Path):
    text = v2(
        "budgets:\n  - id: day\n    max_usd: 5\n    reset: 5 minutes\n"
        "global: {budgets: [day, nope]}\n"
        "keys:\n  - id: a\n    listeners: ['8081']\n    colour: red\n"
    )
    _, problems, _ = check(tmp_path, text)
    by_where = {p.where: (p.line, p.column) for p in problems}
    assert by_where["budgets.0.reset"] == (7, 5)
    assert by_where["keys.0.colour"] == (12, 5)


def test_problems_come_in_file_order(tmp_path: Path):
    text = v2(
        "budgets:\n  - id: day\n    max_usd: 5\n    reset: 5 minutes\n"
        "keys:\n  - id: a\n    listeners: ['8081']\n    colour: red\n"
        "rate_limits:\n  - id: r\n    max_requests: -1\n"
    )
    _, problems, _ = check(tmp_path, text)
    assert len(problems) >= 3
    lines = [p.line or 0 for p in problems]
    assert 0 not in lines and lines == sorted(lines)


def test_a_yaml_duplicate_key_reports_both_lines(tmp_path: Path):
    text = "version: 2\nversion: 2\n"
    _, problems, _ = check(tmp_path, text)
    assert [(p.line, p.column, p.where) for p in problems] == [(2, 1, "version")]
    assert "first on line 1, again on line 2" in problems[0].message


def test_an_empty_allow_list_is_a_warning_and_the_file_is_ok(tmp_path: Path):
    text = v2(
        "budgets: [{id: run, max_usd: 1}]\nglobal: {budgets: [run]}\n"
        "keys:\n"
        "  - id: a\n"
        '    listeners: ["8081"]\n'
        f"    allowed_models: []  {MARK}\n"
    )
    policy, problems, f = check(tmp_path, text)
    assert policy is not None
    assert [(p.line, p.where, p.fatal) for p in problems] == [
        (marked_line(text), "keys.0.allowed_models", False)
    ]
    out = render(str(f), policy, problems)
    assert f"{f}:{marked_line(text)}:5: warning: keys.0.allowed_models: empty" in out
    assert "allowed models: none" in out
    assert out.endswith("\nok\n")


def test_rules_without_any_limit_warn(tmp_path: Path):
    policy, problems, f = check(tmp_path, v2(""))
    assert policy is not None
    assert [(p.where, p.fatal) for p in problems] == [("(top level)", False)]
    assert "no limit at all" in problems[0].message
    assert render(str(f), policy, problems).endswith("\nok\n")


FULL = v2(
    f"""\
budgets:
  - {{id: org-day, max_usd: 100, reset: 1d, calendar: true, timezone: Europe/Berlin}}
  - {{id: run-cap, max_usd: 1.5}}
  - {{id: acme-month, max_usd: 1000, reset: 1M}}
  - {{id: team-week, max_usd: 50, reset: 1w}}
  - {{id: key-hour, max_usd: 2, reset: 1h}}
  - {{id: openai-day, max_usd: 20, reset: 1d}}
  - {{id: opus-day, max_usd: 10, reset: 1d}}
rate_limits:
  - {{id: rpm-60, max_requests: 60, requests_reset: 1m}}
  - {{id: tpm-1k, max_tokens: 1000, tokens_reset: 1m, count_tokens: output, max_in_flight: 3}}
global:
  budgets: [org-day, run-cap]
  rate_limits: [rpm-60]
providers:
  - {{provider: openai, budgets: [openai-day]}}
models:
  - {{model: "claude-opus-*", provider: anthropic, budgets: [opus-day]}}
customers:
  - {{id: acme, name: Acme Corp, budgets: [acme-month]}}
teams:
  - {{id: research, customer: acme, budgets: [team-week]}}
keys:
  - id: alice
    secret_sha256: {SECRET_HASH}
    team: research
    expires_at: 2030-01-01T00:00:00Z
    allowed_providers: [openai]
    denied_models: [gpt-4.5-preview]
    max_multiplier: 2
    budgets: [key-hour]
    rate_limits: [tpm-1k]
  - id: sandbox-7
    customer: acme
    active: false
    listeners: ["8087"]
require_key: true
max_multiplier: 3
egress:
  mode: allowlist
  allow: [{{host: pypi.org, ports: [443]}}]
clamp_output: {{floor_tokens: 2048}}
ledger: {{hold_ttl_seconds: 600}}
"""
)


def test_a_valid_file_with_every_scope_is_described(tmp_path: Path):
    policy, problems, f = check(tmp_path, FULL)
    assert problems == [] and policy is not None
    text = describe(policy)
    for ident in (
        "org-day",
        "run-cap",
        "acme-month",
        "team-week",
        "key-hour",
        "openai-day",
        "opus-day",
        "rpm-60",
        "tpm-1k",
        "provider openai",
        "model claude-opus-*",
        "customer acme (Acme Corp)",
        "team research",
        "key alice",
        "key sandbox-7",
    ):
        assert ident in text, ident
    for fragment in (
        "version: 2",
        "org-day: max $100.00 per 1d (calendar, Europe/Berlin)",
        "run-cap: max $1.50, never resets",
        "rpm-60: 60 requests per 1m (rolling)",
        "tpm-1k: 1000 output tokens per 1m; 3 in flight",
        "customer: acme",
        "team research; active, expires 2030-01-01T00:00:00+00:00",
        "customer acme; inactive, never expires",
        "secret: yes",
        "secret: no",
        "listeners: 8087",
        "allowed models: any",
        "denied models: gpt-4.5-preview",
        "allowed providers: openai",
        "multiplier cap: 2",
        "require_key: yes",
        "max_multiplier: 3",
        "egress: allowlist (pypi.org:443)",
        "clamp_output: on, floor 2048 tokens",
        "ledger hold TTL: 600s",
    ):
        assert fragment in text, fragment
    out = render(str(f), policy, problems)
    assert out == text + "\n\nok\n"


def test_describe_never_prints_a_secret_hash(tmp_path: Path):
    policy, _, _ = check(tmp_path, FULL)
    assert policy is not None and policy.keys[0].secret_sha256 == SECRET_HASH
    assert SECRET_HASH not in describe(policy)
    assert SECRET_HASH[:12] not in describe(policy)


def test_a_version_1_file_checks_ok(tmp_path: Path):
    text = "version: 1\n" + TABLES + "budgets:\n  - name: run\n    limit_usd: 2.5\n"
    policy, problems, f = check(tmp_path, text)
    assert problems == [] and policy is not None
    out = render(str(f), policy, problems)
    assert "run: max $2.50, never resets" in out and "budgets: run" in out
    assert out.endswith("\nok\n")


def test_the_shipped_rules_check_ok():
    policy, problems = check_file(DEFAULT_RULES)
    assert problems == [] and policy is not None
    assert render(str(DEFAULT_RULES), policy, problems).endswith("\nok\n")


def test_an_unreadable_file_is_one_error_without_a_line(tmp_path: Path):
    missing = tmp_path / "nope.yaml"
    policy, problems = check_file(missing)
    assert policy is None and [(p.line, p.fatal) for p in problems] == [(None, True)]
    assert render(str(missing), policy, problems) == f"{missing}: error: (file): no such file\n1 error\n"
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    assert "cannot read" in check_file(binary)[1][0].message


@pytest.mark.parametrize(
    "text,where",
    [("", "(top level)"), ("# only a comment\n", "(top level)"), ("[1, 2]\n", "(top level)")],
)
def test_an_empty_or_non_mapping_file_is_an_error(tmp_path: Path, text: str, where: str):
    policy, problems = check_text(text, tmp_path, "r.yaml")
    assert policy is None and [(p.where, p.fatal) for p in problems] == [(where, True)]


LOCATE_TEXT = """\
version: 2
base: &base
  budgets: [a, b]
global:
  <<: *base
  rate_limits:
    - r1
keys:
  - id: k
    team: t
  - {id: j, listeners: ["1"]}
multipliers: multipliers.yaml
"""


@pytest.mark.parametrize(
    "loc,expected",
    [
        ((), (1, 1)),
        (("version",), (1, 1)),
        (("global", "rate_limits", 0), (7, 7)),
        (("keys", 0, "team"), (10, 5)),
        (("keys", 1, "listeners", 0), (11, 25)),
        (("keys", 0, "missing"), (9, 5)),  # a missing key: its mapping
        (("keys", 5), (9, 3)),  # no such item: the list
        (("nothing", "here"), (1, 1)),  # the root mapping
        (("global", "budgets", 1), (3, 16)),  # merged in with <<
        (("multipliers", "gpt-4o"), (12, 1)),  # into a scalar: its key
        (("multipliers", "dict[str,decimal]", "gpt-4o"), (12, 1)),
        (("keys", 0, "function-after[x]", "team"), (10, 5)),  # a union member's tag is skipped
    ],
)
def test_locate(loc: tuple[str | int, ...], expected: tuple[int, int]):
    assert locate(LOCATE_TEXT, loc) == expected


def test_locate_without_a_document():
    assert locate("", ("a",)) is None
    assert locate("a: [1\n", ("a",)) is None


def test_locate_never_executes_tags(tmp_path: Path):
    target = tmp_path / "pwned"
    text = f'x: !!python/object/apply:os.system ["touch {target}"]\n'
    assert locate(text, ("x",)) == (1, 1)
    check_text(text, tmp_path, "r.yaml")
    assert not target.exists()


def test_render_counts_errors_and_ignores_warnings_in_the_count():
    warn = Located(3, 5, "keys.0.allowed_models", "empty", False)
    err = Located(1, 1, "version", "bad", True)
    assert render("r.yaml", None, [err]).splitlines() == ["r.yaml:1:1: error: version: bad", "1 error"]
    out = render("r.yaml", None, [err, err, warn]).splitlines()
    assert out[-1] == "2 errors" and "r.yaml:3:5: warning: keys.0.allowed_models: empty" in out
