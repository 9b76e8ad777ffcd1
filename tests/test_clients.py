"""Refusal shapes per client (`governance.clients`, `rules/refusal_clients.yaml`): each real agent
gets the shape it stops on at once, showing spendfuse's message (shared reference providers.md §7)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from governance import RULES_DIR, clients, policy, verdicts
from governance.errors import PolicyError
from governance.types import Endpoint, Metering, Refusal, RefusalKind

OPENAI = Endpoint("openai", "chat", Metering.METERED, "api.openai.com", "/v1/chat/completions")
ANTHROPIC = Endpoint(
    "anthropic", "messages", Metering.METERED, "api.anthropic.com", "/v1/messages", envelope="anthropic"
)
QUOTA = Refusal("budget:run", "budget_exceeded", RefusalKind.QUOTA, "spendfuse: the run's $1 budget is spent")
RATE = Refusal(
    "rate:rpm", "rate_limited", RefusalKind.RATE, "spendfuse: 10 requests a minute", retry_after=30
)


def headers(**values: str):
    table = {k.replace("_", "-").lower(): [v] for k, v in values.items()}
    return lambda name: table.get(name.lower(), [])


def answer(endpoint, refusal, hdrs, table=None):
    return verdicts.answer(
        endpoint,
        endpoint.host,
        endpoint.path,
        refusal,
        "req_1",
        headers=hdrs,
        clients=table or clients.shipped(),
    )


@pytest.mark.parametrize(
    "hdrs",
    [headers(originator="codex_exec"), headers(user_agent="codex_cli_rs/0.169.0 (Linux; x86_64)")],
)
def test_codex_gets_a_400_that_shows_the_message(hdrs):
    ans = answer(OPENAI, QUOTA, hdrs)
    error = json.loads(ans.body)["error"]
    assert ans.status == 400 and error["type"] == "invalid_request_error"
    assert error["message"] == QUOTA.message and error["code"] == "insufficient_quota"
    assert ans.headers["x-spendfuse-client"] == "codex"
    assert answer(OPENAI, RATE, hdrs).status == 400


def test_other_openai_clients_keep_the_envelopes_shape():
    for hdrs in (headers(user_agent="OpenAI/Python 2.3.0"), headers()):
        ans = answer(OPENAI, QUOTA, hdrs)
        assert ans.status == 429 and "x-spendfuse-client" not in ans.headers
        assert json.loads(ans.body)["error"]["type"] == "insufficient_quota"


def test_a_client_is_shaped_only_in_its_own_envelope():
    ans = answer(ANTHROPIC, QUOTA, headers(originator="codex_exec"))
    assert ans.status == 429 and json.loads(ans.body)["error"]["type"] == "rate_limit_error"


def test_claude_code_stops_on_the_anthropic_default():
    ans = answer(ANTHROPIC, QUOTA, headers(user_agent="claude-cli/2.1.330 (external, cli)"))
    assert ans.status == 429 and ans.headers["x-should-retry"] == "false"


def test_gemini_cli_gets_failed_precondition_for_a_rate_limit():
    google = Endpoint(
        "google", "", Metering.UNMETERED, "generativelanguage.googleapis.com", "/v1beta/x", envelope="google"
    )
    ans = answer(google, RATE, headers(user_agent="GeminiCLI/0.61.0 (linux; x64)"))
    assert ans.status == 400 and json.loads(ans.body)["error"]["status"] == "FAILED_PRECONDITION"
    plain = answer(google, RATE, headers(user_agent="google-genai-sdk/1.0"))
    assert plain.status == 429


def test_the_rules_own_clients_come_first_and_bifrost_codes_still_win():
    p = policy.parse(
        {
            "version": 2,
            "allow_unlimited": True,
            "refusal_clients": [
                {
                    "name": "harness",
                    "envelope": "openai",
                    "match": {"x-harness": ["eval-*"]},
                    "shapes": {"quota": {"status": 402, "type": "insufficient_quota"}},
                }
            ],
        },
        Path("."),
    )
    table = (*p.refusal_clients, *clients.shipped())
    assert answer(OPENAI, QUOTA, headers(x_harness="eval-7", originator="codex_exec"), table).status == 402
    assert answer(OPENAI, QUOTA, headers(originator="codex_exec"), table).status == 400
    bifrost = Refusal(**{**QUOTA.__dict__, "status": 402, "limit": Decimal(1)})
    assert answer(OPENAI, bifrost, headers(originator="codex_exec")).status == 402


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ({"name": "x", "envelope": "nope", "match": {"a": ["b"]}, "shapes": {}}, "unknown envelope"),
        ({"name": "x", "envelope": "openai", "match": {"a": []}, "shapes": {}}, "never be recognised"),
        (
            {
                "name": "x",
                "envelope": "openai",
                "match": {"a": ["b"]},
                "shapes": {"qouta": {"status": 400, "type": "t"}},
            },
            "unknown refusal kinds",
        ),
    ],
)
def test_a_bad_client_entry_stops_the_rules(entry, fragment):
    with pytest.raises(PolicyError, match=fragment):
        policy.parse({"version": 2, "allow_unlimited": True, "refusal_clients": [entry]}, Path("."))


def test_committed_refusal_clients_schema_is_fresh():
    assert (RULES_DIR / "refusal_clients.schema.json").read_text() == clients.json_schema()
