from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import brotli
import pytest

try:
    from compression import zstd  # Python 3.14+
except ImportError:
    from backports import zstd

from governance.wire import anthropic, openai
from governance.wire.tap import StreamTap, make_decoder

FIX = Path(__file__).parent / "fixtures"


def compress(data: bytes, enc: str) -> bytes:
    return {
        "": lambda d: d,
        "gzip": gzip.compress,
        "deflate": zlib.compress,
        "br": brotli.compress,
        "zstd": zstd.compress,
    }[enc](data)


ENCODINGS = ["", "gzip", "deflate", "br", "zstd"]
STREAM = (FIX / "anthropic" / "messages_stream.sse").read_bytes()


def run_tap(raw: bytes, enc: str, cuts: list[int]) -> StreamTap:
    """Feed `raw` to a tap in pieces cut at `cuts`; the bytes out must be the bytes in."""
    tap = StreamTap(anthropic.StreamUsage("messages"), enc)
    bounds = [0, *cuts, len(raw)]
    out = [tap(raw[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)] + [tap(b"")]
    assert b"".join(out) == raw and out[-1] == b""
    return tap


@pytest.mark.parametrize("enc", ENCODINGS)
def test_every_split_point_passes_bytes_unchanged_and_reads_usage(enc):
    raw = compress(STREAM, enc)
    for cut in range(1, len(raw)):
        tap = run_tap(raw, enc, [cut])
        assert tap.usage is not None and tap.usage.output_tokens == 400 and tap.ended, cut
        assert tap.broken is None


@pytest.mark.parametrize("enc", ENCODINGS)
def test_byte_by_byte(enc):
    raw = compress(STREAM, enc)
    tap = run_tap(raw, enc, list(range(1, len(raw))))
    assert tap.usage is not None and tap.usage.output_tokens == 400 and tap.broken is None


@pytest.mark.parametrize(
    ("enc", "frames"),
    [
        ("gzip", lambda d: gzip.compress(d[:500]) + gzip.compress(d[500:])),
        ("zstd", lambda d: zstd.compress(d[:500]) + zstd.compress(d[500:])),
        ("deflate", lambda d: zlib.compress(d)[2:-4]),  # raw deflate, as some servers send it
    ],
)
def test_multi_frame_and_raw_deflate_bodies(enc, frames):
    raw = frames(STREAM)
    for size in (1, 7, 64, len(raw)):
        tap = run_tap(raw, enc, list(range(size, len(raw), size)))
        assert tap.usage is not None and tap.usage.output_tokens == 400 and tap.broken is None


def test_decoders_come_from_mitmproxys_own_libraries():
    """mitmproxy decodes zstd with the standard library (3.14+) or backports.zstd, and br with
    brotli; a decoder library that mitmproxy drops must not silently drop ours."""
    import importlib.metadata

    requires = " ".join(importlib.metadata.requires("mitmproxy") or [])
    assert "backports.zstd" in requires.lower() or "backports-zstd" in requires.lower()
    assert "brotli" in requires.lower()
    assert not any(r.lower().startswith("zstandard") for r in importlib.metadata.requires("spendfuse") or [])


@pytest.mark.expect_errors("stream tap stopped reading usage: RuntimeError: boom")
def test_a_reader_bug_never_touches_the_stream():
    class Broken:
        usage = None

        def on_event(self, event):
            raise RuntimeError("boom")

    tap = StreamTap(Broken())
    data = (FIX / "openai" / "chat_stream.sse").read_bytes()
    assert tap(data) == data and tap.broken and tap(b"more") == b"more"


def test_unknown_encoding_is_refused_up_front():
    with pytest.raises(ValueError):
        make_decoder("compress")


def test_openai_usage_through_tap():
    tap = StreamTap(openai.StreamUsage("chat"))
    for b in (FIX / "openai" / "chat_stream.sse").read_bytes():
        tap(bytes([b]))
    assert tap.usage.input_tokens == 1200 and tap.chunks > 100


def test_the_end_of_a_stream_hands_its_usage_to_on_end_once():
    ended = []
    tap = StreamTap(anthropic.StreamUsage("messages"))
    tap.on_end = ended.append
    assert tap(STREAM) == STREAM and ended == []
    assert tap(b"") == b""
    assert len(ended) == 1 and ended[0].output_tokens == 400
    broken = StreamTap(anthropic.StreamUsage("messages"))
    broken.on_end = ended.append
    broken.broken = "a parse problem"  # usage read past a problem is not trusted
    broken(b"")
    assert ended[-1] is None


# -- events spendfuse added (the usage-only chunk of `include_usage`) ------------------------

CHAT = (FIX / "openai" / "chat_stream.sse").read_bytes()
# The oracle: the fixture's events, by hand, and the one the client did not ask for.
CHAT_EVENTS = [e + b"\n\n" for e in CHAT.split(b"\n\n") if e.strip()]
USAGE_ONLY = [e for e in CHAT_EVENTS if b'"choices":[]' in e]


def sent(result: bytes | list[bytes]) -> bytes:
    """What mitmproxy sends for a stream function's result: each chunk framed on its own, so an
    empty chunk would end an HTTP/1 chunked body early. Only the end may return b""."""
    chunks = [result] if isinstance(result, bytes) else result
    assert all(chunks), "an empty chunk ends a chunked body"
    return b"".join(chunks)


def filtered(raw: bytes, cuts: list[int], **kw) -> tuple[bytes, StreamTap]:
    tap = StreamTap(openai.StreamUsage("chat"), drop=lambda e: openai.added_event("chat", e), **kw)
    bounds = [0, *cuts, len(raw)]
    out = b"".join(sent(tap(raw[a:b])) for a, b in zip(bounds, bounds[1:], strict=False) if a < b)
    end = tap(b"")
    return out + (end if isinstance(end, bytes) else sent(end)), tap


def test_the_added_usage_chunk_is_taken_out_at_every_split_and_usage_is_still_read():
    assert len(USAGE_ONLY) == 1
    want = b"".join(e for e in CHAT_EVENTS if e not in USAGE_ONLY)
    for cut in range(1, len(CHAT)):
        out, tap = filtered(CHAT, [cut])
        assert out == want, f"split at byte {cut}"
        assert tap.usage is not None and tap.usage.output_tokens == 300


@pytest.mark.parametrize("ending", [b"\r\n", b"\r"])
def test_other_line_endings_byte_by_byte(ending):
    raw = CHAT.replace(b"\n", ending)
    want = b"".join(e.replace(b"\n", ending) for e in CHAT_EVENTS if e not in USAGE_ONLY)
    out, tap = filtered(raw, list(range(1, len(raw))))
    assert out == want and tap.usage is not None and tap.usage.input_tokens == 1200


@pytest.mark.parametrize(
    "event",
    [
        b'data: {"choices":[],"prompt_filter_results":[{"prompt_index":0}]}\n\n',  # Azure's filter chunk
        b'data: {"choices":[],"usage":{"prompt_tokens":1},"x_provider_field":1}\n\n',  # not only usage
        b'data: {"choices":[{"index":0,"delta":{}}],"usage":{"prompt_tokens":1}}\n\n',  # usage on content
        b": keep-alive\n\n",
        b'data: {"choices":[],"usage":\n\n',  # not JSON
    ],
)
def test_every_other_event_passes_as_it_came(event):
    out, _ = filtered(event, list(range(1, len(event))))
    assert out == event


def test_a_compressed_stream_is_never_rewritten():
    raw = gzip.compress(CHAT)
    out, tap = filtered(raw, [len(raw) // 2], content_encoding="gzip")
    assert out == raw and tap.usage is not None


def test_an_event_too_large_to_hold_passes_as_it_comes(monkeypatch):
    monkeypatch.setattr("governance.families.tap.MAX_EVENT_BYTES", 64)
    big = b'data: {"choices":[],"usage":{"prompt_tokens":1}, "pad": "' + b"x" * 200 + b'"}\n\n'
    tap = StreamTap(openai.StreamUsage("chat"), drop=lambda e: True)
    first = tap(big[:100])
    assert first == big[:100]  # not held past the bound
    assert first + sent(tap(big[100:])) + tap(b"") == big


@pytest.mark.expect_errors(r"stream filter passed an event it could not read: RuntimeError: bug")
def test_a_filter_bug_leaves_the_event_in_the_stream(caplog):
    def broken(event):
        raise RuntimeError("bug")

    tap = StreamTap(openai.StreamUsage("chat"), drop=broken)
    assert tap(CHAT) + tap(b"") == CHAT
    assert "could not read" in caplog.text


def test_another_addons_stream_function_sees_every_byte_once_and_the_end_once():
    seen: list[bytes] = []

    def other(data: bytes) -> bytes:
        seen.append(data)
        return data.upper()

    tap = StreamTap(openai.StreamUsage("chat"), drop=lambda e: openai.added_event("chat", e))
    chained = tap.then(other)
    cut = CHAT.index(b"data: [DONE]") + 3
    # The stream ends without its last blank line: its last event is held until the end.
    out = b"".join(sent(chained(piece)) for piece in (CHAT[:cut], CHAT[cut:-1]))
    end = chained(b"")
    want = b"".join(e for e in CHAT_EVENTS if e not in USAGE_ONLY)[:-1]
    assert end == [b"DATA: [DONE]\n"] and out + b"".join(end) == want.upper()
    assert b"".join(seen) == want and seen[-1] == b"" and seen.count(b"") == 1
    assert tap.usage is not None and tap.usage.output_tokens == 300
