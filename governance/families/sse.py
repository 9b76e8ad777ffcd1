"""An incremental Server-Sent Events parser: bytes in, whole events out, at any split."""

from __future__ import annotations

import re
from dataclasses import dataclass

# An event larger than this is dropped rather than buffered without bound; usage events are small.
MAX_EVENT_BYTES = 8 * 1024 * 1024

LINE_END = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True)
class Event:
    event: str  # the `event:` field, "" when absent
    data: str  # the `data:` lines joined with "\n"


class SSEParser:
    """Feed it chunks exactly as they arrive; it returns the events they complete.

    Follows the WHATWG rules that matter here: lines end in CRLF, LF or CR; a blank line ends
    an event; `:` starts a comment; one optional space after the colon is dropped.

    Linear in the stream's size: a chunk's bytes are scanned once, and an incomplete line is
    kept as a growing buffer that is joined once, when its end arrives (a 4 MiB event fed in
    small chunks is not re-joined on every chunk).
    """

    def __init__(self) -> None:
        self._partial = bytearray()  # the incomplete line so far
        self._skip_lf = False  # the previous chunk ended in CR: a leading LF is that CRLF's end
        self._drop_line = False  # the incomplete line grew past the bound: discard it to its end
        self._event = ""
        self._data: list[str] = []
        self._size = 0
        self._oversized = False

    def feed(self, chunk: bytes) -> list[Event]:
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        if not chunk:
            return []
        self._skip_lf = chunk.endswith(b"\r")
        *complete, rest = LINE_END.split(chunk)
        events: list[Event] = []
        for piece in complete:
            line = bytes(self._partial) + piece if self._partial else piece
            dropped, self._partial, self._drop_line = self._drop_line, bytearray(), False
            if dropped:
                continue
            ev = self._line(line)
            if ev is not None:
                events.append(ev)
        if not self._drop_line:
            self._partial += rest
            if len(self._partial) > MAX_EVENT_BYTES:
                self._partial, self._drop_line, self._oversized = bytearray(), True, True
        return events

    def close(self) -> list[Event]:
        """End of stream: a final event without its blank line still counts."""
        events = self.feed(b"\n") if self._partial else []
        ev = self._line(b"")
        return events + ([ev] if ev is not None else [])

    def _line(self, line: bytes) -> Event | None:
        if not line:
            return self._dispatch()
        if line.startswith(b":"):
            return None
        name, sep, value = line.partition(b":")
        if sep and value.startswith(b" "):
            value = value[1:]
        field = name.decode("utf-8", "replace")
        if field == "data":
            self._size += len(value)
            if self._size > MAX_EVENT_BYTES:
                self._oversized = True
            elif not self._oversized:
                self._data.append(value.decode("utf-8", "replace"))
        elif field == "event":
            self._event = value.decode("utf-8", "replace")
        return None

    def _dispatch(self) -> Event | None:
        ev = None
        if self._data and not self._oversized:
            ev = Event(self._event, "\n".join(self._data))
        self._event, self._data, self._size, self._oversized = "", [], 0, False
        return ev
