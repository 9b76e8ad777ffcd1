from __future__ import annotations

import json
from pathlib import Path

import pytest

from governance.errors import RequestParseError
from governance.types import Refusal, RefusalKind, Usage
from governance.wire import openai
from governance.wire.tap import read_sse_body

FIX = Path(__file__).parent / "fixtures" / "openai"


class TestParseRequest:
    def test_chat_reads_model_cap_n_and_stream(self):
        p = openai.parse_request(
            "chat",
            {
                "model": "gpt-4o",
                "messages": [{"role": "user", "content": "x"}],
                "max_completion_tokens": 500,
                "max_tokens": 100,
                "n": 3,
                "stream": True,
            },
        )
        assert (p.model, p.max_output_tokens, p.choices, p.stream) == ("gpt-4o", 500, 3, True)

    def test_chat_without_cap(self):
        p = openai.parse_request("chat", {"model": "gpt-4o", "messages": []})
        assert p.max_output_tokens is None and p.choices == 1

    def test_responses_and_completions(self):
        r = openai.parse_request(
            "responses",
            {"model": "gpt-5", "input": "hi", "instructions": "be brief", "max_output_tokens": 800},
        )
        assert r.max_output_tokens == 800 and r.prompt == ("be brief", "hi")
        c = openai.parse_request(
            "completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "x", "n": 2, "best_of": 5}
        )
        assert c.max_output_tokens == 16 and c.choices == 5

    @pytest.mark.parametrize(
        "body",
        [
            {"messages": []},
            {"model": "", "messages": []},
            {"model": 5, "messages": []},
            {"model": "gpt-4o", "messages": [], "max_tokens": "100"},
            {"model": "gpt-4o", "messages": [], "max_tokens": True},
            {"model": "gpt-4o", "messages": [], "max_tokens": -1},
            {"model": "gpt-4o", "messages": [], "n": 0},
            {"model": "gpt-4o", "messages": [], "stream": "yes"},
            {"model": "gpt-4o"},
        ],
    )
    def test_refuses_what_it_cannot_meter(self, body):
        with pytest.raises(RequestParseError):
            openai.parse_request("chat", body)


class TestPrepareRequest:
    def test_injects_include_usage_on_chat_streams_only(self):
        body = {"model": "gpt-4o", "messages": [], "stream": True, "stream_options": {"other": 1}}
        new = openai.prepare_request("chat", body, openai.parse_request("chat", body))
        assert new["stream_options"] == {"other": 1, "include_usage": True}
        assert body["stream_options"] == {"other": 1}  # the original is untouched
        plain = {"model": "gpt-4o", "messages": []}
        assert openai.prepare_request("chat", plain, openai.parse_request("chat", plain)) is None
        done = {**body, "stream_options": {"include_usage": True}}
        assert openai.prepare_request("chat", done, openai.parse_request("chat", done)) is None
        resp = {"model": "gpt-5", "input": "x", "stream": True}
        assert openai.prepare_request("responses", resp, openai.parse_request("responses", resp)) is None


class TestUsage:
    def test_chat_body_includes_cached_in_input(self):
        u = openai.usage_from_body("chat", json.loads((FIX / "chat.json").read_text()))
        assert u == Usage(
            input_tokens=1200,
            output_tokens=300,
            cache_read_tokens=1024,
            model="gpt-4o-2024-08-06",
            service_tier="default",
            reasoning_tokens=64,  # reported; part of output_tokens on OpenAI
        )

    def test_chat_stream(self):
        u = read_sse_body(openai.StreamUsage("chat"), (FIX / "chat_stream.sse").read_bytes())
        assert u == Usage(1200, 300, 1024, 0, "gpt-4o-2024-08-06")

    def test_responses_stream_reads_the_terminal_event(self):
        u = read_sse_body(openai.StreamUsage("responses"), (FIX / "responses_stream.sse").read_bytes())
        assert u == Usage(5000, 800, 4096, 0, "gpt-5-2025-08-07", response_id="resp_1")

    @pytest.mark.parametrize(
        "body",
        [
            None,
            [],
            {},
            {"usage": None},
            {"usage": {"prompt_tokens": 5}},
            {"usage": {"prompt_tokens": "5", "completion_tokens": 1}},
        ],
    )
    def test_no_usage(self, body):
        assert openai.usage_from_body("chat", body) is None


def test_render_error_budget_is_429_insufficient_quota():
    r = Refusal(rule="budget:global", code="budget_exceeded", kind=RefusalKind.QUOTA, message="m")
    status, headers, body = openai.render_error(r, "req_1")
    err = json.loads(body)["error"]
    assert status == 429 and err["type"] == err["code"] == "insufficient_quota" and err["param"] is None
    assert headers["x-should-retry"] == "false" and headers["x-spendfuse-refused"] == "budget:global"


@pytest.mark.parametrize(
    "kind,status",
    [
        (RefusalKind.INVALID, 400),
        (RefusalKind.FORBIDDEN, 403),
        (RefusalKind.UPGRADE, 426),
        (RefusalKind.UNAVAILABLE, 503),
    ],
)
def test_render_error_statuses(kind, status):
    s, _, body = openai.render_error(Refusal(rule="r", code="c", kind=kind, message="m"), "id")
    assert s == status and json.loads(body)["error"]["code"] == "c"


@pytest.mark.parametrize(
    ("prompt", "n", "best_of", "choices"),
    [
        ("one prompt", None, None, 1),
        ([1, 2, 3], None, None, 1),  # one prompt, as token ids
        (["a", "b", "c"], None, None, 3),
        (["a", "b", "c"], 2, None, 6),
        (["a", "b"], 2, 5, 10),
        ([[1, 2], [3, 4]], None, 3, 6),  # a batch of token-id prompts
    ],
)
def test_legacy_completions_reserve_for_every_prompt_and_choice(prompt, n, best_of, choices):
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": prompt, "max_tokens": 10}
    if n:
        body["n"] = n
    if best_of:
        body["best_of"] = best_of
    assert openai.parse_request("completions", body).choices == choices


def test_input_audio_parts_are_seen():
    from governance.wire import openai as wire_openai

    body = {
        "model": "gpt-audio",
        "messages": [
            {
                "role": "user",
                "content": [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}],
            }
        ],
    }
    assert wire_openai.parse_request("chat", body).audio_input
    assert not wire_openai.parse_request(
        "chat", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    ).audio_input


def test_an_inline_file_is_prompt_and_a_file_by_id_is_server_input():
    url = "data:application/pdf;base64,JVBERi0xLjcK"
    inline = {"role": "user", "content": [{"type": "input_file", "filename": "a.pdf", "file_data": url}]}
    p = openai.parse_request("responses", {"model": "gpt-4o", "input": [inline]})
    assert p.server_input is None and p.prompt == ([inline],)
    chat = {"role": "user", "content": [{"type": "file", "file": {"filename": "a.pdf", "file_data": url}}]}
    assert openai.parse_request("chat", {"model": "gpt-4o", "messages": [chat]}).server_input is None
    by_id = {"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}
    p = openai.parse_request("responses", {"model": "gpt-4o", "input": [by_id]})
    assert "file by id" in (p.server_input or "")


def test_claude_behind_an_openai_compatible_api_counts_anthropics_tool_prompt():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    msgs = [{"role": "user", "content": "hi"}]
    routed = openai.parse_request(
        "chat", {"model": "anthropic/claude-sonnet-4.5", "messages": msgs, "tools": tools}
    )
    assert routed.provider_prompt_tokens == 530  # not in Anthropic's table by this name: the largest
    named = openai.parse_request(
        "chat", {"model": "claude-sonnet-4-5", "messages": msgs, "tools": tools, "tool_choice": "required"}
    )
    assert named.provider_prompt_tokens == 346  # a choice Anthropic's table does not name: its largest
    assert (
        openai.parse_request(
            "chat", {"model": "gpt-4o", "messages": msgs, "tools": tools}
        ).provider_prompt_tokens
        == 0
    )
    assert (
        openai.parse_request("chat", {"model": "claude-sonnet-4-5", "messages": msgs}).provider_prompt_tokens
        == 0
    )
