"""An incremental decoder of the AWS event stream (`application/vnd.amazon.eventstream`), the
binary framing of Bedrock's streamed responses: bytes in, split anywhere, whole messages out.

A message is a 12-byte prelude (total length, headers length, both big-endian uint32, then the
CRC32 of those 8 bytes), its headers, its payload, and the CRC32 of everything before it. Both
checksums are verified: a message that fails either, or whose lengths are impossible, makes the
stream corrupt (`CorruptStream`), and nothing after it is read, since the framing is lost.

Linear in the stream's size: bytes are appended to one buffer and each byte is looked at once
when its message completes; the consumed part is dropped once per `feed`, not once per message.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

_PRELUDE = 12
_CRC = 4
#: AWS caps a message at 16 MiB and its headers at 128 KiB; a larger length is corruption.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MAX_HEADERS_BYTES = 128 * 1024

# Header value types: the fixed sizes of the numeric ones; 6 (bytes) and 7 (string) carry a
# 2-byte length first.
_FIXED = {0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16}
_BYTES, _STRING = 6, 7


class CorruptStream(ValueError):
    """The stream's framing is broken: a checksum or a length does not hold."""


@dataclass(frozen=True)
class Message:
    """One decoded message: its string headers (`:event-type`, `:message-type`, ...) and payload.
    Headers of other types are checked for length and skipped: nothing here reads them."""

    headers: dict[str, str]
    payload: bytes

    @property
    def kind(self) -> str:
        """`event`, `exception` or `error` (`:message-type`)."""
        return self.headers.get(":message-type", "")

    @property
    def event_type(self) -> str:
        """The event's name (`chunk`, `metadata`, ...), or the exception's (`:exception-type`)."""
        return self.headers.get(":event-type") or self.headers.get(":exception-type", "")


def _headers(data: bytes) -> dict[str, str]:
    """The string-valued headers of a message's header block. Raises `CorruptStream`."""
    out: dict[str, str] = {}
    pos, end = 0, len(data)
    try:
        while pos < end:
            name_len = data[pos]
            name = data[pos + 1 : pos + 1 + name_len].decode("utf-8")
            pos += 1 + name_len
            kind = data[pos]
            pos += 1
            if kind in _FIXED:
                pos += _FIXED[kind]
            elif kind in (_BYTES, _STRING):
                (size,) = struct.unpack_from(">H", data, pos)
                value = data[pos + 2 : pos + 2 + size]
                pos += 2 + size
                if kind == _STRING:
                    out[name] = value.decode("utf-8")
            else:
                raise CorruptStream(f"unknown header value type {kind}")
    except (IndexError, struct.error, UnicodeDecodeError) as e:
        raise CorruptStream(f"malformed headers: {e}") from None
    if pos != end:
        raise CorruptStream("headers overrun their length")
    return out


class EventStreamDecoder:
    """Feed it chunks exactly as they arrive; it returns the messages they complete. After a
    `CorruptStream` it raises again on every call: the framing cannot be recovered."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0  # where the next message starts in `_buf`
        self.corrupt: str | None = None

    def feed(self, chunk: bytes) -> list[Message]:
        if self.corrupt is not None:
            raise CorruptStream(self.corrupt)
        self._buf += chunk
        out: list[Message] = []
        try:
            while (message := self._next()) is not None:
                out.append(message)
        except CorruptStream as e:
            self.corrupt = str(e)
            self._buf = bytearray()
            raise
        if self._pos:
            del self._buf[: self._pos]  # once per feed: what is left is part of one message
            self._pos = 0
        return out

    def close(self) -> None:
        """The stream ended. Raises `CorruptStream` when it ended inside a message."""
        if self.corrupt is not None:
            raise CorruptStream(self.corrupt)
        if len(self._buf) > self._pos:
            self.corrupt = f"the stream ended inside a message ({len(self._buf) - self._pos} bytes)"
            raise CorruptStream(self.corrupt)

    def _next(self) -> Message | None:
        buf, pos = self._buf, self._pos
        if len(buf) - pos < _PRELUDE:
            return None
        total, headers_len, prelude_crc = struct.unpack_from(">III", buf, pos)
        if zlib.crc32(memoryview(buf)[pos : pos + 8]) != prelude_crc:
            raise CorruptStream("prelude checksum mismatch")
        if not _PRELUDE + _CRC <= total <= MAX_MESSAGE_BYTES or headers_len > MAX_HEADERS_BYTES:
            raise CorruptStream(f"impossible message length {total} (headers {headers_len})")
        if headers_len > total - _PRELUDE - _CRC:
            raise CorruptStream("headers longer than their message")
        if len(buf) - pos < total:
            return None
        view = memoryview(buf)[pos : pos + total]
        try:
            (message_crc,) = struct.unpack_from(">I", view, total - _CRC)
            if zlib.crc32(view[: total - _CRC]) != message_crc:
                raise CorruptStream("message checksum mismatch")
            headers = _headers(bytes(view[_PRELUDE : _PRELUDE + headers_len]))
            payload = bytes(view[_PRELUDE + headers_len : total - _CRC])
        finally:
            view.release()  # a live view would stop the buffer from being resized
        self._pos = pos + total
        return Message(headers, payload)
