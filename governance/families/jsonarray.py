"""An incremental reader of a streamed JSON array (Gemini's `:streamGenerateContent` without
`alt=sse`): bytes in, whole top-level elements out, at any byte split.

Linear in the stream's size: a chunk is scanned once, by regexes that stop only at the bytes
that change the structure (brackets, braces, quotes; a string is skipped whole, escapes and
all), and an element's bytes are joined once, when it ends. An element larger than
`MAX_EVENT_BYTES` is skipped, not buffered.
"""

from __future__ import annotations

import json
import re
from typing import Any

from governance.families.sse import MAX_EVENT_BYTES

# Outside a string: what opens or closes a level, or starts a string.
_STRUCTURE = re.compile(rb'[\[\]{}"]')
# The rest of a string up to its closing quote (or the chunk's end), escapes skipped whole, in C.
_STRING_BODY = re.compile(rb'(?:[^"\\]++|\\.)*+', re.S)


class JsonArrayReader:
    """Feed it the body's bytes exactly as they arrive; it returns the top-level elements they
    complete that are objects or arrays, decoded (one that is not valid JSON is skipped; strings,
    numbers and literals between them carry no usage and are passed over). A body whose top level
    is not an array yields nothing."""

    def __init__(self) -> None:
        self._depth = 0  # 1: inside the top-level array, between its elements
        self._in_string = False
        self._escape = False  # the last byte seen was a backslash inside a string
        self._parts: list[bytes] = []  # the current element's bytes from earlier chunks
        self._size = 0
        self._oversized = False
        self.broken = False  # the top level is not an array: nothing more is read

    def feed(self, chunk: bytes) -> list[Any]:
        if self.broken or not chunk:
            return []
        out: list[Any] = []
        pos = 0  # where the current element's bytes start in this chunk
        i, n = 0, len(chunk)
        while i < n:
            if self._in_string:
                if self._escape:  # the escaped byte, whatever it is
                    self._escape, i = False, i + 1
                    continue
                i = _STRING_BODY.match(chunk, i).end()  # type: ignore[union-attr] # always matches
                if i == n:
                    break
                # A closing quote, or a backslash that is the chunk's last byte (its escaped byte
                # comes in the next chunk).
                self._in_string = chunk[i] == 0x5C
                self._escape = self._in_string
                i += 1
                continue
            m = _STRUCTURE.search(chunk, i)
            if m is None:
                break
            byte, i = m.group(), m.end()
            if byte == b'"':
                if self._depth == 0:
                    return self._broken(out)
                self._in_string = True
            elif byte in (b"[", b"{"):
                if self._depth == 0 and byte == b"{":
                    return self._broken(out)
                if self._depth == 1:
                    pos = m.start()
                self._depth += 1
            elif self._depth == 0:
                return self._broken(out)
            else:
                self._depth -= 1
                if self._depth == 1:
                    out += self._end(chunk[pos : m.end()])
        if self._depth >= 2:
            self._hold(chunk[pos:])
        return out

    def _broken(self, out: list[Any]) -> list[Any]:
        self.broken = True
        return out

    def _hold(self, data: bytes) -> None:
        """Keep an incomplete element's bytes (dropping them past the bound)."""
        self._size += len(data)
        if self._size > MAX_EVENT_BYTES:
            self._oversized, self._parts = True, []
        elif not self._oversized:
            self._parts.append(data)

    def _end(self, tail: bytes) -> list[Any]:
        """The element whose last bytes are `tail`, decoded; nothing if it was too large or bad."""
        parts, oversized = self._parts, self._oversized or self._size + len(tail) > MAX_EVENT_BYTES
        self._parts, self._size, self._oversized = [], 0, False
        if oversized:
            return []
        try:
            return [json.loads(b"".join(parts) + tail if parts else tail)]
        except ValueError:
            return []
