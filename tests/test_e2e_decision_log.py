"""End to end: with `spendfuse_log_format=json`, a real mitmdump writes one JSON line per
decision, each valid against the published schema (rules/decision-log.schema.json), naming the
ledger's requests and money, and never a secret."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import jsonschema
import openai
import pytest

from governance import money
from governance.decision_log import SCHEMA_FILE
from governance.decisions import Record
from tests.test_e2e_custody import assert_nowhere
from tests.test_e2e_flowmarks import CHAT, REAL_AN, REAL_OA, VIRTUAL, marked_rules
from tests.test_e2e_governance import ledger_rows

VALIDATOR = jsonschema.Draft202012Validator(
    json.loads(SCHEMA_FILE.read_text()), format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
)


def session(oa: openai.OpenAI, upstream) -> None:
    """Two settled, one released (the provider's 500), a budget and an endpoint refusal, one
    unmetered pass and one free read."""
    oa.chat.completions.create(**CHAT)
    for _ in oa.chat.completions.create(**CHAT, stream=True):
        pass
    upstream.knobs.status = 500
    with pytest.raises(openai.InternalServerError):
        oa.chat.completions.create(**CHAT)
    upstream.knobs.status = 200
    with pytest.raises(openai.RateLimitError):
        oa.chat.completions.create(**{**CHAT, "max_tokens": 16_000})
    with pytest.raises(openai.PermissionDeniedError):
        oa.images.generate(model="gpt-image-1", prompt="a fuse")
    with pytest.raises(openai.NotFoundError):
        oa.embeddings.create(model="text-embedding-3-small", input="hi")
    oa.models.list()


def lines(path: Path) -> list[dict]:
    found = [json.loads(line) for line in path.read_text().splitlines()]
    for line in found:
        VALIDATOR.validate(line)
    return found


def test_every_decision_is_one_schema_valid_json_line(start, upstream, client_env, monkeypatch, tmp_path):
    log = tmp_path / "decisions.jsonl"
    upstream.knobs.accepted_keys = frozenset({REAL_OA, REAL_AN})
    env = {"OA_REAL": REAL_OA, "AN_REAL": REAL_AN}
    proxy = start(
        rules=marked_rules(tmp_path), env=env, spendfuse_log_format="json", spendfuse_log_file=str(log)
    )
    client_env(proxy)
    monkeypatch.setenv("OPENAI_API_KEY", VIRTUAL)
    session(openai.OpenAI(max_retries=0), upstream)
    proxy.stop()

    found = lines(log)
    assert [x["event"] for x in found] == [
        "admitted",
        "settled",
        "admitted",
        "settled",
        "admitted",
        "released",
        "refused",
        "refused",
        "unmetered_allowed",
        "free",
    ]
    ledger = ledger_rows(
        tmp_path / "ledger.sqlite",
        "SELECT id, state, reserved_micro, cost_micro, cost_submicro, rule FROM requests ORDER BY created_at",
    )
    assert [r["state"] for r in ledger] == ["settled", "settled", "released", "refused", "refused"]
    settles = [x for x in found if x["event"] in ("settled", "released")]
    for x, row in zip(settles, ledger[:3], strict=True):
        assert x["request_id"] == row["id"] and x["principal"] == "key:agent"
        assert Decimal(x["reserved_usd"]) == Decimal(row["reserved_micro"]) / 1_000_000
        assert Decimal(x["cost_usd"]) == money.to_usd(row["cost_micro"] or 0, row["cost_submicro"] or 0)
    assert [Decimal(x["cost_usd"]) for x in settles] == [Decimal(b["usd"]) for b in upstream.bills][:2] + [0]
    assert settles[2]["outcome"] == "upstream_error_500"
    budget, endpoint = found[6], found[7]
    assert (budget["rule"], budget["kind"], budget["request_id"]) == ("budget:all", "quota", ledger[3]["id"])
    assert (endpoint["code"], endpoint["kind"]) == ("endpoint_not_metered", "forbidden")
    # No secret: neither the agent's virtual key nor a custody key.
    assert_nowhere(log.read_bytes(), "the decision log")
    assert VIRTUAL.encode() not in log.read_bytes()
    # The human log stays as it was.
    assert "spendfuse: refused POST api.openai.com/v1/images/generations" in proxy.output()


def test_the_default_writes_no_json_lines(start, upstream, client_env, tmp_path):
    proxy = start()
    client_env(proxy)
    openai.OpenAI(max_retries=0).chat.completions.create(**CHAT)
    proxy.stop()
    assert not any(line.startswith("{") for line in proxy.output().splitlines())


def test_reaped_lines_and_every_record_follow_the_schema(tmp_path):
    from governance.decision_log import DecisionLog
    from tests.test_governance import T0

    path = tmp_path / "d.jsonl"
    log = DecisionLog.open(str(path), lambda: T0)
    log(Record("reaped", count=3))
    log(Record("dry_run", request_id="r", rule="budget:g", code="budget_exceeded", kind="quota"))
    log.close()
    assert lines(path) == [
        {"v": 1, "ts": T0.isoformat(), "event": "reaped", "count": 3},
        {
            "v": 1,
            "ts": T0.isoformat(),
            "event": "dry_run",
            "request_id": "r",
            "rule": "budget:g",
            "code": "budget_exceeded",
            "kind": "quota",
        },
    ]
    with pytest.raises(jsonschema.ValidationError):  # a refusal must name its rule
        VALIDATOR.validate({"v": 1, "ts": T0.isoformat(), "event": "refused"})
