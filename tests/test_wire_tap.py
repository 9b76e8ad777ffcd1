from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import brotli
import pytest
import zstandard

from governance.wire import anthropic, openai
from governance.wire.tap import StreamTap, make_decoder

FIX = Path(__file__).parent / "fixtures"


def compress(data: bytes, enc: str) -> bytes:
    return {"": lambda d: d, "gzip": gzip.compress, "deflate": zlib.compress, "br": brotli.compress,
            "zstd": lambda d: zstandard.ZstdCompressor().compress(d)}[enc](data)


@pytest.mark.parametrize("enc", ["", "gzip", "deflate", "br", "zstd"])
def test_passes_bytes_unchanged_and_reads_usage(enc):
    raw = compress((FIX / "anthropic" / "messages_stream.sse").read_bytes(), enc)
    tap = StreamTap(anthropic.StreamUsage("messages"), enc)
    out = [tap(raw[i:i + 7]) for i in range(0, len(raw), 7)] + [tap(b"")]
    assert b"".join(out) == raw and out[-1] == b""
    assert tap.usage is not None and tap.usage.output_tokens == 400 and tap.ended


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
