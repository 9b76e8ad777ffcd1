from __future__ import annotations

from pathlib import Path

import pytest

from governance.wire.sse import Event, SSEParser

FIXTURES = Path(__file__).parent / "fixtures"
STREAMS = sorted(FIXTURES.glob("*/*.sse"))


def parse_in_pieces(data: bytes, cuts: list[int]) -> list[Event]:
    parser = SSEParser()
    events: list[Event] = []
    prev = 0
    for cut in [*cuts, len(data)]:
        events += parser.feed(data[prev:cut])
        prev = cut
    return events + parser.close()


@pytest.mark.parametrize("path", STREAMS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_single_split_gives_the_same_events(path: Path):
    data = path.read_bytes()
    whole = parse_in_pieces(data, [])
    assert whole and all(e.data for e in whole)
    for cut in range(1, len(data)):
        assert parse_in_pieces(data, [cut]) == whole, f"split at byte {cut}"


@pytest.mark.parametrize("path", STREAMS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_byte_by_byte_and_crlf(path: Path):
    data = path.read_bytes()
    whole = parse_in_pieces(data, [])
    assert parse_in_pieces(data, list(range(1, len(data)))) == whole
    crlf = data.replace(b"\n", b"\r\n")
    assert parse_in_pieces(crlf, list(range(1, len(crlf)))) == whole
    cr = data.replace(b"\n", b"\r")
    assert parse_in_pieces(cr, []) == whole


def test_fields_comments_and_multiline_data():
    p = SSEParser()
    events = p.feed(b": keep-alive\n\nevent: x\ndata: a\ndata:b\nid: 1\nretry: 5\n\ndata: [DONE]\n\n")
    assert events == [Event("x", "a\nb"), Event("", "[DONE]")]


def test_a_final_event_without_blank_line_counts_at_close():
    p = SSEParser()
    assert p.feed(b'data: {"usage": 1}') == []
    assert p.close() == [Event("", '{"usage": 1}')]


def test_oversized_events_are_dropped_not_buffered(monkeypatch):
    monkeypatch.setattr("governance.wire.sse.MAX_EVENT_BYTES", 100)
    p = SSEParser()
    assert p.feed(b"data: " + b"x" * 500 + b"\n\ndata: ok\n\n") == [Event("", "ok")]
