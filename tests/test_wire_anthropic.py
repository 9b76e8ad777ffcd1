from __future__ import annotations

import json
from pathlib import Path

import pytest

from governance.errors import RequestParseError
from governance.types import Refusal, RefusalKind, Usage
from governance.wire import anthropic
from governance.wire.tap import read_sse_body

FIX = Path(__file__).parent / "fixtures" / "anthropic"


def test_parse_request():
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 4096,
        "stream": True,
        "system": "s",
        "messages": [{"role": "user", "content": "hi"}],
    }
    p = anthropic.parse_request("messages", body)
    assert (p.model, p.max_output_tokens, p.stream, p.cache_write_hint) == (
        "claude-sonnet-4-5",
        4096,
        True,
        None,
    )
    assert p.prompt == ("s", body["messages"])


def test_cache_control_asks_for_cache_write_pricing():
    cached = {"type": "text", "text": "big", "cache_control": {"type": "ephemeral"}}
    body = {"model": "m", "max_tokens": 1, "messages": [], "system": [cached]}
    assert anthropic.parse_request("messages", body).cache_write_hint == "5m"
    body["system"] = [{**cached, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    assert anthropic.parse_request("messages", body).cache_write_hint == "1h"


@pytest.mark.parametrize(
    "body",
    [{"max_tokens": 1, "messages": []}, {"model": "m", "max_tokens": 1}, {"model": "m", "messages": "hi"}],
)
def test_refuses_what_it_cannot_meter(body):
    with pytest.raises(RequestParseError):
        anthropic.parse_request("messages", body)


def test_body_usage_adds_cache_to_input():
    u = anthropic.usage_from_body("messages", json.loads((FIX / "messages.json").read_text()))
    assert u == Usage(13_020, 400, 10_000, 3_000, "claude-sonnet-4-5-20250929")


def test_stream_usage_is_cumulative_never_summed():
    u = read_sse_body(anthropic.StreamUsage("messages"), (FIX / "messages_stream.sse").read_bytes())
    # Two message_deltas (150 then 400): the last one is the total, not 550.
    assert u == Usage(13_020, 400, 10_000, 3_000, "claude-sonnet-4-5-20250929")


def test_stream_without_message_delta_has_no_usage():
    data = (FIX / "messages_stream.sse").read_bytes().split(b"event: message_delta")[0]
    assert read_sse_body(anthropic.StreamUsage("messages"), data) is None


def test_render_error_budget():
    status, headers, body = anthropic.render_error(
        Refusal(rule="budget:global", code="budget_exceeded", kind=RefusalKind.QUOTA, message="m"), "req_x"
    )
    obj = json.loads(body)
    assert status == 429 and obj["type"] == "error" and obj["error"]["type"] == "rate_limit_error"
    assert obj["error"]["details"]["error_code"] == "enforced_spend_limit_reached"
    assert obj["request_id"] == "req_x" and headers["x-should-retry"] == "false"
    s, _, b = anthropic.render_error(
        Refusal(rule="ledger", code="c", kind=RefusalKind.UNAVAILABLE, message="m"), "r"
    )
    assert s == 503 and json.loads(b)["error"]["type"] == "api_error"  # never overloaded_error


def test_one_hour_cache_writes_are_read_from_bodies_and_streams():
    body = json.loads((FIX / "messages.json").read_text())
    body["usage"]["cache_creation"] = {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 2000}
    assert anthropic.usage_from_body("messages", body).cache_write_1h_tokens == 2000
    stream = (
        (FIX / "messages_stream.sse")
        .read_bytes()
        .replace(
            b'"cache_read_input_tokens":10000,',
            b'"cache_read_input_tokens":10000,"cache_creation":'
            b'{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":3000},',
        )
    )
    u = read_sse_body(anthropic.StreamUsage("messages"), stream)
    assert (u.cache_write_tokens, u.cache_write_1h_tokens) == (3000, 3000)


@pytest.mark.parametrize(
    ("extra", "hint"),
    [
        ({}, None),
        ({"cache_control": {"type": "ephemeral"}}, "5m"),
        ({"cache_control": {"type": "ephemeral", "ttl": "1h"}}, "1h"),
        (
            {"system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]},
            "1h",
        ),
    ],
)
def test_cache_writes_asked_anywhere_are_reserved(extra, hint):
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}],
        **extra,
    }
    assert anthropic.parse_request("messages", body).cache_write_hint == hint
