"""A pass-through stream tap: every chunk goes on unchanged, usage is read on the side by the
family's stream reader, which owns its framing."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Iterable
from typing import Protocol, runtime_checkable

from governance.bodies import zstd_decompressor
from governance.families.sse import LINE_END, MAX_EVENT_BYTES, Event, SSEParser
from governance.types import Usage

logger = logging.getLogger(__name__)


class UsageReader(Protocol):
    """Reads usage off a stream's SSE events."""

    usage: Usage | None

    def on_event(self, event: Event) -> None: ...


@runtime_checkable
class StreamReader(Protocol):
    """Reads usage off a stream's decoded bytes, owning its framing (SSE, AWS event stream)."""

    usage: Usage | None

    def feed(self, chunk: bytes) -> None:
        """The next decoded bytes of the body, split anywhere."""

    def close(self) -> None:
        """The body has ended."""


class SseStream:
    """The `StreamReader` of a family whose streams are Server-Sent Events: frames the bytes
    into events for its `UsageReader`."""

    def __init__(self, events: UsageReader) -> None:
        self.events = events
        self._parser = SSEParser()
        self.watch: Callable[[Event], None] | None = None  # sees every event too (the runaway meter)

    @property
    def usage(self) -> Usage | None:
        return self.events.usage

    def feed(self, chunk: bytes) -> None:
        for event in self._parser.feed(chunk):
            self.events.on_event(event)
            if self.watch is not None:
                self.watch(event)

    def close(self) -> None:
        for event in self._parser.close():
            self.events.on_event(event)
            if self.watch is not None:
                self.watch(event)


class _Frames(Protocol):
    """A one-frame decompressor (zlib's and zstd's share this shape)."""

    eof: bool
    unused_data: bytes

    def decompress(self, data: bytes) -> bytes: ...


class _FrameDecoder:
    """Decodes a body of concatenated frames (gzip members, zstd frames) chunk by chunk: when a
    frame ends, the bytes after it start the next one."""

    def __init__(self, new_frame: Callable[[], _Frames]) -> None:
        self._new_frame = new_frame
        self._frame = new_frame()

    def __call__(self, data: bytes) -> bytes:
        out = []
        while data:
            out.append(self._frame.decompress(data))
            if not self._frame.eof:
                break
            data = self._frame.unused_data
            self._frame = self._new_frame()
        return b"".join(out)


class _DeflateDecoder:
    """HTTP `deflate` is zlib-wrapped by the spec, but some servers send raw deflate: the first
    bytes tell which (mitmproxy's own decoder accepts both)."""

    def __init__(self) -> None:
        self._decoder: _FrameDecoder | None = None
        self._head = b""

    def __call__(self, data: bytes) -> bytes:
        if self._decoder is None:
            self._head += data
            if len(self._head) < 2:
                return b""
            zlib_header = (self._head[0] & 0x0F) == 8 and int.from_bytes(self._head[:2]) % 31 == 0
            wbits = zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS
            self._decoder = _FrameDecoder(lambda: zlib.decompressobj(wbits=wbits))
            data, self._head = self._head, b""
        return self._decoder(data)


def make_decoder(content_encoding: str) -> Callable[[bytes], bytes] | None:
    """An incremental decoder for a response's content-encoding, identity -> None. Raises
    ValueError for an encoding it cannot decode.

    spendfuse asks for `accept-encoding: identity`, but an upstream may compress anyway; the
    client still gets the compressed bytes, and the tap reads a decoded copy."""
    enc = content_encoding.strip().lower()
    if enc in ("", "identity"):
        return None
    if enc in ("gzip", "x-gzip"):
        return _FrameDecoder(lambda: zlib.decompressobj(wbits=16 + zlib.MAX_WBITS))
    if enc == "deflate":
        return _DeflateDecoder()
    if enc == "br":
        import brotli  # the brotli mitmproxy depends on

        return brotli.Decompressor().process  # type: ignore[no-any-return]
    if enc == "zstd":
        return _FrameDecoder(zstd_decompressor)
    raise ValueError(f"unsupported content-encoding {content_encoding!r}")


class EventFilter:
    """Passes an event stream's bytes on event by event, exactly as received, but for the events
    `drop` picks. An event's bytes are held until the blank line that ends it; what the client
    receives is the stream it would have had without them. Linear: each byte is scanned once.
    An event larger than `MAX_EVENT_BYTES` is passed on as it comes, never dropped or held."""

    def __init__(self, drop: Callable[[Event], bool]) -> None:
        self.drop = drop
        self.dropped = 0
        self._held = bytearray()  # the bytes of the event so far
        self._passing = False  # the event is too large to hold: its bytes go on as they come
        self._line = 0  # the length of the current line so far (a blank line ends an event)
        self._skip_lf = False  # the last chunk ended in CR: an LF first completes that CRLF

    def __call__(self, data: bytes) -> bytes:
        if not data:  # the end: an event without its blank line goes as it came
            return self.flush()
        out = bytearray()
        start = 0
        if self._skip_lf and data[:1] == b"\n":  # the rest of a CRLF: not a line of its own
            self._held += b"\n"
            start = 1
        self._skip_lf = data.endswith(b"\r")
        for end in LINE_END.finditer(data, start):
            blank = self._line == 0 and end.start() == start
            self._held += data[start : end.end()]
            self._line, start = 0, end.end()
            if blank:  # the event (or a run of comments) ends here
                out += self._held if self._passing else self._pass(bytes(self._held))
                self._held, self._passing = bytearray(), False
        self._held += data[start:]
        self._line += len(data) - start
        if self._passing or len(self._held) > MAX_EVENT_BYTES:
            out += self._held
            self._held, self._passing = bytearray(), True
        return bytes(out)

    def flush(self) -> bytes:
        """Whatever is held, as received."""
        held, self._held = bytes(self._held), bytearray()
        return held

    def _pass(self, event_bytes: bytes) -> bytes:
        """The event's bytes, or nothing when it is one `drop` picks. Never raises: a bug in
        reading an event leaves it in the stream (logged)."""
        try:
            parser = SSEParser()
            events = parser.feed(event_bytes) + parser.close()
            if len(events) == 1 and self.drop(events[0]):
                self.dropped += 1
                return b""
        except Exception as e:  # noqa: BLE001 - never cut a stream over a filter bug; logged
            logger.error("stream filter passed an event it could not read: %s: %s", type(e).__name__, e)
        return event_bytes


class Guard(Protocol):
    """Watches a stream's events for a runaway (`governance.families.runaway.OutputMeter`)."""

    def on_event(self, event: Event) -> None: ...

    def over(self, reported: Usage | None) -> bool: ...


class StreamTap:
    """Install as `flow.response.stream`. Returns each chunk exactly as received, but for events
    `drop` picks (see `EventFilter`; only a stream it can read as sent is filtered).

    Parse problems never touch the bytes the client gets: they are logged and the flow is then
    settled without usage (its reservation is charged).

    With a `guard`, a stream whose running output passes what its reservation covers is cut: the
    client gets the events up to the one that passed it, then `cut_event()` (an error in the API's
    own stream format) and the end of the body; nothing after. `on_cut` is then called once, to
    close the upstream (the proxy side sets it); `cut` says why it was cut."""

    def __init__(
        self,
        reader: StreamReader | UsageReader,
        content_encoding: str = "",
        *,
        drop: Callable[[Event], bool] | None = None,
        guard: Guard | None = None,
        cut_event: Callable[[], bytes] | None = None,
    ) -> None:
        # An event reader (a family's `StreamUsage`) reads SSE; a `StreamReader` frames its own.
        self.reader = reader if isinstance(reader, StreamReader) else SseStream(reader)
        self.decode = make_decoder(content_encoding)
        self.filter = EventFilter(drop) if drop is not None and self.decode is None else None
        self.chunks = 0
        self.ended = False
        self.broken: str | None = None
        self.guard = guard if isinstance(self.reader, SseStream) else None
        if self.guard is not None:
            self.reader.watch = self.guard.on_event  # type: ignore[union-attr]
        self.cut_event = cut_event
        self.cut: str | None = None
        self.on_cut: Callable[[], None] | None = None
        # The client went away and the stream is read on for its usage (governance.mitm.drain):
        # nothing more is passed on; past `drain_limit` bytes (or a runaway), `on_overflow` once.
        self.hung_up = False
        self.drained = 0
        self.drain_limit = 0
        self.on_overflow: Callable[[str], None] | None = None
        self._tail = b""  # the last bytes passed on: an event boundary may straddle two chunks
        # Called once with the usage read, when the stream ends (before mitmproxy's `response`).
        self.on_end: Callable[[Usage | None], None] | None = None

    @property
    def usage(self) -> Usage | None:
        return self.reader.usage

    def __call__(self, data: bytes) -> bytes | list[bytes]:
        if self.cut is not None:
            return []  # nothing after the cut reaches the client
        if self.broken is None:
            try:
                self._read(data)
            except Exception as e:  # noqa: BLE001 - a parser bug must never cut a stream; logged
                self.broken = f"{type(e).__name__}: {e}"
                logger.error("stream tap stopped reading usage: %s", self.broken)
        if not data and self.on_end is not None:
            self.on_end(None if self.broken else self.reader.usage)
        if self.hung_up:
            return self._drain(data)
        if self.guard is not None and data and self.broken is None and self.guard.over(self.reader.usage):
            return self._cut(data)
        if self.filter is None:
            if self.guard is not None:
                self._tail = data[-4:]
            return data
        out = self.filter(data)
        # Nothing to send yet is no chunks, never an empty one: mitmproxy frames each chunk it is
        # given, and an empty HTTP/1 chunk is the chunked body's terminator.
        return out if out or not data else []

    def _drain(self, data: bytes) -> list[bytes]:
        self.drained += len(data)
        runaway = self.guard is not None and self.guard.over(self.reader.usage)
        if (runaway or self.drained > self.drain_limit) and self.on_overflow is not None:
            overflow, self.on_overflow = self.on_overflow, None
            overflow(
                "its output passed what the reservation covers" if runaway else "it passed the drain's bytes"
            )
        return []

    def _cut(self, data: bytes) -> list[bytes]:
        """The last chunk of a runaway stream: its whole events, the error event, the end."""
        self.cut = "runaway: output passed what the reservation covers"
        if self.filter is not None:
            whole = self.filter(data)  # the filter passes whole events only; what it holds is dropped
        else:
            end = last_event_end(self._tail, data)
            whole = data[:end] if end > 0 else b""
        if self.on_cut is not None:
            self.on_cut()
        if self.decode is not None:  # compressed: no event can be added to it; it just ends
            return [whole, b""] if whole else [b""]
        event = self.cut_event() if self.cut_event is not None else b""
        return [c for c in (whole, event) if c] + [b""]

    def then(self, other: Callable[[bytes], bytes | Iterable[bytes]]) -> Callable[[bytes], list[bytes]]:
        """A stream function that passes what this tap passes on to `other` (another addon's
        own stream function), keeping mitmproxy's contract for both: `other` sees every byte,
        each chunk once, and `b""` exactly once, at the end."""

        def chained(data: bytes) -> list[bytes]:
            passed = self(data)
            chunk = passed if isinstance(passed, bytes) else b"".join(passed)
            out: list[bytes] = []
            if chunk or not data:
                out += _chunks(other(chunk))
            if not data and chunk:  # the tap let held bytes go at the end: then the end itself
                out += _chunks(other(b""))
            return [c for c in out if c]

        return chained

    def _read(self, data: bytes) -> None:
        if data:
            self.chunks += 1
            self.reader.feed(self.decode(data) if self.decode else data)
        else:  # b"" marks the end of the message
            self.ended = True
            self.reader.close()


def last_event_end(tail: bytes, chunk: bytes) -> int:
    """The offset in `chunk` just past its last blank line (the end of an event), 0 when it ends
    none. `tail`: the bytes passed just before it, where the blank line's first line end may be."""
    joined = tail + chunk
    best, previous_end = -1, None
    for m in LINE_END.finditer(joined):
        if m.start() == previous_end:
            best = m.end()
        previous_end = m.end()
    return max(0, best - len(tail))


def _chunks(result: bytes | Iterable[bytes]) -> list[bytes]:
    return [result] if isinstance(result, bytes) else list(result)


def sse_reader_of(events: Callable[[str], UsageReader]) -> Callable[[str], SseStream]:
    """A family's `stream_reader` when its streams are SSE read by `events(api)`."""
    return lambda api: SseStream(events(api))


def read_sse_body(reader: StreamReader | UsageReader, body: bytes) -> Usage | None:
    """Usage from a whole streamed body (a replayed or buffered stream)."""
    framed = reader if isinstance(reader, StreamReader) else SseStream(reader)
    framed.feed(body)
    framed.close()
    return framed.usage
