"""End to end: a session through a real mitmdump saved with `-w` and read back with mitmproxy's
own reader shows, on every governed flow, what spendfuse decided: its mark, a comment with the
rule, the reservation and the settled cost, and the same facts, versioned, in its metadata. The
settled cost is the fake provider's own bill; the custody key appears nowhere in the file."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import anthropic
import openai
import pytest
from mitmproxy import io as mitmio

from governance import money
from governance.scopes import secret_hash
from tests.test_e2e_custody import assert_nowhere
from tests.test_e2e_governance import ledger_rows, rules

REAL_OA = "sk-proj-REALopenaiCUSTODY0001"
REAL_AN = "sk-ant-api03-REALanthropicCUSTODY"
VIRTUAL = "sk-proxy"
# The fake provider's own prices (tests/support/fake_upstream.py bills with them).
PRICES = {
    "gpt-4o": {"input_mtok": "2.5", "output_mtok": 10},
    "claude-sonnet-4-5": {"input_mtok": 3, "output_mtok": 15},
}
CHAT = {"model": "gpt-4o", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}


def marked_rules(tmp_path: Path) -> Path:
    return rules(
        tmp_path / "r.yaml",
        # $0.1: 20 output tokens fit; 16,000 ($0.16 at gpt-4o's $10/M) do not.
        budgets=[{"id": "all", "max_usd": "0.1"}],
        **{"global": {"budgets": ["all"]}},
        keys=[{"id": "agent", "secret_sha256": secret_hash(VIRTUAL)}],
        credentials=[
            {"id": "oa", "provider": "openai", "env": "OA_REAL"},
            {"id": "an", "provider": "anthropic", "env": "AN_REAL"},
        ],
        allow_unmetered=[{"host": "api.openai.com", "path": "/v1/embeddings"}],
        prices=PRICES,
    )


def read_flows(path: Path) -> list:
    with path.open("rb") as f:
        return [f for f in mitmio.FlowReader(f).stream() if f.request.path != "/health"]


def test_saved_flows_show_marks_comments_and_metadata(start, upstream, client_env, monkeypatch, tmp_path):
    saved = tmp_path / "flows.mitm"
    upstream.knobs.accepted_keys = frozenset({REAL_OA, REAL_AN})
    env = {"OA_REAL": REAL_OA, "AN_REAL": REAL_AN}
    proxy = start(rules=marked_rules(tmp_path), env=env, save_stream_file=str(saved))
    client_env(proxy)
    monkeypatch.setenv("OPENAI_API_KEY", VIRTUAL)
    monkeypatch.setenv("ANTHROPIC_API_KEY", VIRTUAL)
    oa = openai.OpenAI(max_retries=0)
    an = anthropic.Anthropic(max_retries=0)
    oa.chat.completions.create(**CHAT)
    for _ in oa.chat.completions.create(**CHAT, stream=True):
        pass
    an.messages.create(model="claude-sonnet-4-5", max_tokens=20, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.RateLimitError):  # the budget: 16,000 tokens cannot be reserved
        oa.chat.completions.create(**{**CHAT, "max_tokens": 16_000})
    with pytest.raises(openai.PermissionDeniedError):  # not metered, not allowed
        oa.images.generate(model="gpt-image-1", prompt="a fuse")
    with pytest.raises(openai.NotFoundError):  # allowed unmetered; the fake provider has no such route
        oa.embeddings.create(model="text-embedding-3-small", input="hi")
    assert [m.id for m in oa.models.list()] == ["gpt-4o"]  # free
    proxy.stop()

    bills = [Decimal(b["usd"]) for b in upstream.bills]
    assert len(bills) == 3
    flows = read_flows(saved)
    assert [(f.request.method, f.request.path) for f in flows] == [
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/messages"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/images/generations"),
        ("POST", "/v1/embeddings"),
        ("GET", "/v1/models"),
    ]
    facts = [f.metadata["spendfuse"] for f in flows]
    assert all(x["v"] == 1 for x in facts)
    assert [f.marked for f in flows] == [":white_check_mark:"] * 3 + [":no_entry:"] * 2 + [
        ":warning:",
        ":heavy_check_mark:",
    ]
    assert [x["decision"] for x in facts] == ["admitted"] * 3 + ["refused"] * 2 + [
        "unmetered_allowed",
        "free",
    ]

    # Admitted and settled: the reservation, and the provider's own bill as the settled cost.
    ledger = ledger_rows(
        tmp_path / "ledger.sqlite",
        "SELECT id, reserved_micro, cost_micro, cost_submicro FROM requests WHERE state = 'settled' "
        "ORDER BY created_at",
    )
    assert len(ledger) == 3
    for f, x, bill, row in zip(flows[:3], facts[:3], bills, ledger, strict=True):
        assert x["principal"] == "key:agent" and x["rule"] == "budget:all" and x["settled"] == "settled"
        assert x["request_id"] == row["id"] and x["outcome"] == "usage"
        assert Decimal(x["cost_usd"]) == money.to_usd(row["cost_micro"], row["cost_submicro"])
        assert Decimal(x["reserved_usd"]) == Decimal(row["reserved_micro"]) / 1_000_000
        assert Decimal(x["cost_usd"]) == bill < Decimal(x["reserved_usd"])
        assert f.comment == (
            f"spendfuse: admitted; rule budget:all; model {x['model']}; reserved ${x['reserved_usd']}; "
            f"settled ${x['cost_usd']} (usage)"
        )
    assert [x["model"] for x in facts[:3]] == ["gpt-4o", "gpt-4o", "claude-sonnet-4-5"]
    # Refused: the rule and the code the client got, and no cost.
    budget, endpoint = facts[3], facts[4]
    assert (budget["rule"], budget["code"], budget["kind"]) == ("budget:all", "budget_exceeded", "quota")
    assert budget["model"] == "gpt-4o" and "cost_usd" not in budget and "reserved_usd" not in budget
    assert flows[3].comment == "spendfuse: refused; rule budget:all; model gpt-4o; code budget_exceeded"
    assert endpoint["code"] == "endpoint_not_metered" and flows[4].response.status_code == 403
    assert flows[5].comment == "spendfuse: unmetered allowed"
    # The custody keys were sent, then redacted before Save wrote the flows.
    assert_nowhere(saved.read_bytes(), "the saved flows")
    assert flows[0].request.headers["authorization"] == "Bearer <spendfuse custody key 'oa'>"
