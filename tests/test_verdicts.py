"""Dry run decided once, refusals as answers, and the provider header facts (pure)."""

from __future__ import annotations

import json
import logging

import pytest

from governance import refusals, verdicts
from governance.families import anthropic, openai
from governance.families.common import bearer_key
from governance.types import Endpoint, Metering

CHAT = Endpoint("openai", "chat", Metering.METERED, "api.openai.com", "/v1/chat/completions")
MESSAGES = Endpoint(
    "anthropic", "messages", Metering.METERED, "api.anthropic.com", "/v1/messages", "anthropic"
)


def test_a_refusal_is_carried_out_unless_in_dry_run(caplog):
    refusal = refusals.rewritten()
    assert verdicts.enforced(refusal, dry_run=False, what="f1") is refusal
    assert verdicts.enforced(None, dry_run=True, what="f1") is None
    with caplog.at_level(logging.WARNING, logger="spendfuse"):
        assert verdicts.enforced(refusal, dry_run=True, what="f1") is None
    assert "dry run: would refuse f1" in caplog.text


@pytest.mark.parametrize("endpoint,marker", [(CHAT, "error"), (MESSAGES, "type")])
def test_an_answer_is_the_refusal_in_its_providers_envelope(endpoint, marker):
    ans = verdicts.answer(endpoint, "x", "/", refusals.rewritten(), "req_1")
    assert ans.status == 403 and marker in json.loads(ans.body)
    if endpoint is MESSAGES:
        assert json.loads(ans.body)["type"] == "error"


def test_traffic_that_is_not_llm_gets_a_generic_answer():
    ans = verdicts.answer(None, "example.com", "/x", refusals.rewritten(), "req_1")
    assert ans.status == 403 and b"rewritten" in ans.body


def test_betas_are_split_at_commas():
    sent = {"anthropic-beta": ["a,b", "context-1m-2025-08-07"]}
    for family in (anthropic, openai):
        assert family.price_flags(lambda n: sent.get(n, [])) == ["a", "b", "context-1m-2025-08-07"]


@pytest.mark.parametrize(
    "status,answer,count",
    [
        (200, {"input_tokens": 42}, 42),
        (200, {"input_tokens": -1}, None),
        (200, {"input_tokens": True}, None),
        (200, {"input_tokens": 4.5}, None),
        (200, ["input_tokens"], None),
        (429, {"input_tokens": 42}, None),
    ],
)
def test_only_a_sound_count_from_the_counter_is_used(status, answer, count):
    for family in (anthropic, openai):
        assert family.read_counter_response(status, answer) == count


def test_api_keys_lose_their_bearer_prefix():
    assert bearer_key("Bearer sk-1 ") == "sk-1"
    assert bearer_key("sk-2") == "sk-2"
