"""A request body as the server it goes to would read it, for the look the gate takes at traffic
to hosts the table does not know (`shape.LlmShape`).

A body sent with `Content-Encoding` is judged by what it inflates to, as a server that honours
the coding reads it; a coding spendfuse cannot inflate (an unknown name, or bytes that do not
inflate) leaves the bytes as sent, as a server that ignores the header reads them. Inflating is
bounded: a small body can inflate to gigabytes, and one that inflates past `INFLATE_LIMIT` cannot
be inspected at all (None), which the gate treats as LLM-shaped.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence

import brotli

#: The most a body is inflated to for a look at it (bytes).
INFLATE_LIMIT = 32 * 1024 * 1024
_CHUNK = 64 * 1024


class _TooLarge(Exception):
    pass


def _zlib(data: bytes, wbits: int) -> bytes:
    d = zlib.decompressobj(wbits=wbits)
    out = bytearray(d.decompress(data, INFLATE_LIMIT + 1))
    if len(out) > INFLATE_LIMIT or d.unconsumed_tail:
        raise _TooLarge
    out += d.flush()
    if len(out) > INFLATE_LIMIT:
        raise _TooLarge
    return bytes(out)


def _gzip(data: bytes) -> bytes:
    return _zlib(data, 47)  # a gzip or zlib header, detected


def _deflate(data: bytes) -> bytes:
    try:
        return _zlib(data, 15)  # zlib-wrapped, as the RFC says
    except zlib.error:
        return _zlib(data, -15)  # raw deflate, as some clients send it


def _brotli(data: bytes) -> bytes:
    d = brotli.Decompressor()
    out = bytearray()
    for i in range(0, len(data), _CHUNK):
        out += d.process(data[i : i + _CHUNK])
        if len(out) > INFLATE_LIMIT:
            raise _TooLarge
    return bytes(out)


_INFLATE: dict[str, Callable[[bytes], bytes]] = {
    "gzip": _gzip,
    "x-gzip": _gzip,
    "deflate": _deflate,
    "br": _brotli,
}


def as_read(raw: bytes, encodings: Sequence[str]) -> bytes | None:
    """`raw` with its content codings (in the order they were applied) undone where spendfuse
    can; None when it inflates past `INFLATE_LIMIT`."""
    data = raw
    for coding in reversed([e.strip().lower() for e in encodings if e.strip()]):
        inflate = _INFLATE.get(coding)
        if coding == "identity" or inflate is None:
            continue  # a server that does not know the coding reads the bytes as they are
        try:
            data = inflate(data)
        except _TooLarge:
            return None
        except (zlib.error, brotli.error):
            return data  # not what the header says: read as it is
    return data
