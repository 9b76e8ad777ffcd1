"""An incremental Server-Sent Events parser: bytes in, whole events out, at any split."""

from __future__ import annotations

from dataclasses import dataclass

# An event larger than this is dropped rather than buffered without bound; usage events are small.
MAX_EVENT_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Event:
    event: str  # the `event:` field, "" when absent
    data: str  # the `data:` lines joined with "\n"


class SSEParser:
    """Feed it chunks exactly as they arrive; it returns the events they complete.

    Follows the WHATWG rules that matter here: lines end in CRLF, LF or CR; a blank line ends
    an event; `:` starts a comment; one optional space after the colon is dropped.
    """

    def __init__(self) -> None:
        self._partial = b""  # an incomplete line
        self._event = ""
        self._data: list[str] = []
        self._size = 0
        self._oversized = False

    def feed(self, chunk: bytes) -> list[Event]:
        buf = self._partial + chunk
        if not buf:
            return []
        # A CR at the very end may be the first half of a CRLF split across chunks: wait for more.
        hold_cr = buf.endswith(b"\r")
        if hold_cr:
            buf = buf[:-1]
        lines = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        self._partial = lines.pop() + (b"\r" if hold_cr else b"")
        if len(self._partial) > MAX_EVENT_BYTES:
            self._partial = b""
            self._oversized = True
        events: list[Event] = []
        for line in lines:
            ev = self._line(line)
            if ev is not None:
                events.append(ev)
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
