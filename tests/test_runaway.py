"""The runaway guard on its own: a stream whose output passes what its reservation covers is cut
at an event boundary, whatever the byte boundaries it arrives in, and ends with its API's own
error event; a stream within its cap passes untouched."""

from __future__ import annotations

import json
import random
from decimal import Decimal

import pytest

from governance.families import runaway
from governance.families.sse import SSEParser
from governance.settlement import stream_tap
from governance.types import RequestInfo

MARGINS = {"ascii": Decimal("1.3"), "emoji": Decimal("1.4"), "cjk": Decimal("1.35"), "other": Decimal("1.15")}


def _info(api: str, model: str, cap: int, **kw) -> RequestInfo:
    return RequestInfo("r1", "openai", api, model, "p", True, 10, cap, "request", **kw)


def _chat_event(text: str) -> bytes:
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": text}}],
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def _listed(passed: bytes | list[bytes]) -> list[bytes]:
    return [passed] if isinstance(passed, bytes) else passed


def _events(body: bytes) -> list:
    p = SSEParser()
    return p.feed(body) + p.close()


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("hidden", [False, True])
def test_a_runaway_chat_stream_is_cut_at_an_event_boundary(seed, hidden):
    rng = random.Random(seed)
    info = _info("chat", "gpt-4o", 30, hides_added_events=hidden)
    tap = stream_tap(info, "openai", "text/event-stream", "", margins=MARGINS)
    body = b"".join(_chat_event(" x") for _ in range(200)) + b"data: [DONE]\n\n"
    out = b""
    i = 0
    ends = 0
    while i < len(body):
        n = rng.randint(1, 300)
        passed = tap(body[i : i + n])
        i += n
        chunks = [passed] if isinstance(passed, bytes) else passed
        ends += chunks.count(b"")
        out += b"".join(chunks)
    assert tap(b"") in ([], b"")
    assert tap.cut is not None and ends == 1
    events = _events(out)
    *content, last = events
    assert all(json.loads(e.data)["choices"][0]["delta"]["content"] == " x" for e in content)
    # The chunk holding the event that passed the 30 tokens goes on up to its last whole event
    # (at most 300 bytes: 3 events), then nothing more.
    assert 31 <= len(content) <= 33
    assert json.loads(last.data)["error"]["message"].startswith("spendfuse: the stream was cut")


def test_a_stream_within_its_cap_passes_untouched_and_is_never_counted():
    info = _info("chat", "gpt-4o", 100_000)
    tap = stream_tap(info, "openai", "text/event-stream", "", margins=MARGINS)
    body = b"".join(_chat_event(" word") for _ in range(100)) + b"data: [DONE]\n\n"
    assert b"".join(tap(body[i : i + 7]) for i in range(0, len(body), 7)) == body
    assert tap.cut is None and tap.guard.counted == 0  # its bytes never came near the cap


def test_a_stream_at_its_cap_is_not_cut():
    info = _info("chat", "gpt-4o", 50)
    tap = stream_tap(info, "openai", "text/event-stream", "", margins=MARGINS)
    body = b"".join(_chat_event(" x") for _ in range(50)) + b"data: [DONE]\n\n"
    assert tap(body) == body and tap.cut is None and tap.guard.counted == 50


def test_responses_end_in_response_failed_then_error():
    info = _info("responses", "gpt-4o", 3)
    tap = stream_tap(info, "openai", "text/event-stream", "", margins=MARGINS)
    ev = b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","delta":" x"}\n\n'
    out = b"".join(c for _ in range(10) for c in _listed(tap(ev)) if c)  # an event per chunk
    names = [e.event for e in _events(out)]
    assert names == ["response.output_text.delta"] * 4 + ["response.failed", "error"]
    error = json.loads(_events(out)[-1].data)
    assert error["type"] == "error" and error["message"].startswith("spendfuse")


def test_anthropic_ends_in_an_error_event_and_counts_claude_high():
    info = _info("messages", "claude-sonnet-4-5", 10)
    tap = stream_tap(info, "anthropic", "text/event-stream", "", margins=MARGINS)
    delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " x"}}
    ev = b"event: content_block_delta\ndata: " + json.dumps(delta).encode() + b"\n\n"
    out = b"".join(c for _ in range(20) for c in _listed(tap(ev)) if c)
    *content, last = _events(out)
    # Each one-token delta counts ceil(1 x 1.3) = 2 for a model tiktoken only approximates.
    assert len(content) == 6 and last.event == "error"
    assert json.loads(last.data)["error"]["message"].startswith("spendfuse: the stream was cut")


def test_reported_usage_past_the_cap_cuts_too():
    info = _info("messages", "claude-sonnet-4-5", 10)
    tap = stream_tap(info, "anthropic", "text/event-stream", "", margins=MARGINS)
    start = {
        "type": "message_start",
        "message": {"model": "m", "usage": {"input_tokens": 5, "output_tokens": 1}},
    }
    delta = {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 11}}
    body = b"".join(
        b"event: %s\ndata: %s\n\n" % (e["type"].encode(), json.dumps(e).encode()) for e in (start, delta)
    )
    tap(body)
    assert tap.cut is not None


def test_a_stream_family_without_a_kit_is_not_guarded():
    assert runaway.kit("google", object()) is None
