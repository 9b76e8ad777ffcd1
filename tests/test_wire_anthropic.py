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


def _with_tools(model: str, tools: list, tool_choice: dict | None = None) -> int:
    body = {"model": model, "max_tokens": 10, "messages": [], "tools": tools}
    if tool_choice is not None:
        body["tool_choice"] = tool_choice
    return anthropic.parse_request("messages", body).provider_prompt_tokens


WEATHER = {"name": "weather", "description": "d", "input_schema": {"type": "object"}}


@pytest.mark.parametrize(
    ("model", "choice", "tokens"),
    [
        # Anthropic's published tool-use system prompt sizes (pricing page, "Tool use").
        ("claude-sonnet-4-5-20250929", None, 346),
        ("claude-sonnet-4-5", {"type": "auto"}, 346),
        ("claude-opus-4-1", {"type": "none"}, 346),
        ("claude-haiku-4-5", {"type": "any"}, 313),
        ("claude-opus-4-7", {"type": "tool", "name": "weather"}, 313),
        ("claude-3-5-haiku-20241022", {"type": "any"}, 340),
        ("claude-3-opus-20240229", None, 530),
        ("claude-3-haiku-20240307", {"type": "tool", "name": "weather"}, 340),
        # An unknown model counts the largest known prompt; an unknown choice, its model's largest.
        ("claude-mythos-9", {"type": "tool", "name": "weather"}, 530),
        ("claude-3-5-haiku", {"type": "someday"}, 340),
    ],
)
def test_tools_add_anthropics_tool_use_system_prompt(model, choice, tokens):
    assert _with_tools(model, [WEATHER], choice) == tokens


def test_anthropic_defined_tools_add_their_own_tokens():
    # Bash 245, text editor 700, computer use 735 per definition plus up to 499 of system prompt.
    model = "claude-sonnet-4-5"
    assert _with_tools(model, [{"type": "bash_20250124", "name": "bash"}]) == 346 + 245
    editor = {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"}
    assert _with_tools(model, [editor]) == 346 + 700
    computer = {"type": "computer_20250124", "name": "computer", "display_width_px": 1024}
    assert _with_tools(model, [computer, WEATHER]) == 346 + 735 + 499


def test_no_tools_no_tool_prompt():
    body = {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": []}
    assert anthropic.parse_request("messages", body).provider_prompt_tokens == 0


def test_the_structured_output_schema_is_prompt():
    schema = {"type": "object", "properties": {"answer": {"type": "string", "description": "x" * 50}}}
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}],
        "output_config": {"format": {"type": "json_schema", "schema": schema}},
    }
    parsed = anthropic.parse_request("messages", body)
    assert body["output_config"] in parsed.prompt
    assert anthropic.count_request("messages", body)[1]["output_config"] == body["output_config"]
