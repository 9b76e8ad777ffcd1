"""A pass-through stream tap: every chunk goes on unchanged, usage is read on the side."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable
from typing import Protocol

from governance.types import Usage
from governance.wire.sse import Event, SSEParser

logger = logging.getLogger(__name__)


class UsageReader(Protocol):
    usage: Usage | None

    def on_event(self, event: Event) -> None: ...


def make_decoder(content_encoding: str) -> Callable[[bytes], bytes] | None:
    """An incremental decoder for a response's content-encoding, identity -> None.

    spendfuse asks for `accept-encoding: identity`, but an upstream may compress anyway; the
    client still gets the compressed bytes, and the tap reads a decoded copy."""
    enc = content_encoding.strip().lower()
    if enc in ("", "identity"):
        return None
    if enc in ("gzip", "x-gzip", "deflate"):
        d = zlib.decompressobj(wbits=47)  # 32 + 15: gzip or zlib, detected from the header
        return d.decompress
    if enc == "br":
        import brotli  # a mitmproxy dependency

        b = brotli.Decompressor()
        return b.process
    if enc == "zstd":
        import zstandard  # a mitmproxy dependency

        z = zstandard.ZstdDecompressor().decompressobj()
        return z.decompress
    raise ValueError(f"unsupported content-encoding {content_encoding!r}")


class StreamTap:
    """Install as `flow.response.stream`. Returns each chunk exactly as received.

    Parse problems never touch the bytes the client gets: they are logged and the flow is then
    settled without usage (its reservation is charged)."""

    def __init__(self, reader: UsageReader, content_encoding: str = "") -> None:
        self.reader = reader
        self.parser = SSEParser()
        self.decode = make_decoder(content_encoding)
        self.chunks = 0
        self.ended = False
        self.broken: str | None = None

    @property
    def usage(self) -> Usage | None:
        return self.reader.usage

    def __call__(self, data: bytes) -> bytes:
        if self.broken is None:
            try:
                self._read(data)
            except Exception as e:  # never let a parser bug cut a stream
                self.broken = f"{type(e).__name__}: {e}"
                logger.error("stream tap stopped reading usage: %s", self.broken)
        return data

    def _read(self, data: bytes) -> None:
        if data:
            self.chunks += 1
            events = self.parser.feed(self.decode(data) if self.decode else data)
        else:  # b"" marks the end of the message
            self.ended = True
            events = self.parser.close()
        for event in events:
            self.reader.on_event(event)


def read_sse_body(reader: UsageReader, body: bytes) -> Usage | None:
    """Usage from a whole SSE body (a replayed or buffered stream)."""
    parser = SSEParser()
    for event in parser.feed(body) + parser.close():
        reader.on_event(event)
    return reader.usage
