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
