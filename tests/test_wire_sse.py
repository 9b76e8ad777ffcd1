from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

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


def whatwg_events(data: bytes) -> list[Event]:
    """The oracle: the WHATWG event-stream rules applied to the whole stream at once."""
    import re

    events: list[Event] = []
    name, lines = "", []
    for line in re.split(rb"\r\n|\r|\n", data.decode("utf-8", "replace").encode()) + [b""]:
        if not line:
            if lines:
                events.append(Event(name, "\n".join(lines)))
            name, lines = "", []
            continue
        if line.startswith(b":"):
            continue
        field, _, value = line.partition(b":")
        value = value[1:] if value.startswith(b" ") else value
        if field == b"data":
            lines.append(value.decode())
        elif field == b"event":
            name = value.decode()
    return events


_ends = st.sampled_from([b"\n", b"\r\n", b"\r"])
_fields = st.sampled_from([b"data: ", b"data:", b"event: ", b": ", b"id: "])
_values = st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


@given(
    st.lists(st.tuples(_fields, _values, _ends, st.booleans()), max_size=25),
    st.lists(st.integers(0, 400), max_size=12),
)
def test_any_stream_at_any_splits_gives_the_whatwg_events(lines, cuts):
    data = b"".join(f + v + e + (e if blank else b"") for f, v, e, blank in lines)
    want = whatwg_events(data)
    assert parse_in_pieces(data, sorted(c for c in cuts if c <= len(data))) == want
    for cut in range(1, len(data)):
        assert parse_in_pieces(data, [cut]) == want, f"split at byte {cut}"


def test_an_oversized_line_fed_in_pieces_is_dropped_and_the_stream_goes_on(monkeypatch):
    monkeypatch.setattr("governance.wire.sse.MAX_EVENT_BYTES", 100)
    data = b"data: " + b"x" * 500 + b"\r\n\r\ndata: ok\r\n\r\n"
    assert parse_in_pieces(data, list(range(7, len(data), 7))) == [Event("", "ok")]
