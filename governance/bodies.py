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
from typing import Any

import brotli

from governance.errors import RequestParseError

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


def _zstd_module() -> Any:
    # The standard library's zstd from Python 3.14, its backport (the one mitmproxy itself
    # decodes with) before.
    try:
        from compression import zstd  # type: ignore[import-not-found]
    except ImportError:
        from backports import zstd  # type: ignore[no-redef]
    return zstd


def zstd_decompressor() -> Any:
    """A one-frame zstd decompressor."""
    return _zstd_module().ZstdDecompressor()


class _NotInflatable(Exception):
    """The bytes are not what their coding says."""


def _zstd(data: bytes) -> bytes:
    # Frames may be concatenated: each ends where the next begins (its `unused_data`).
    out = bytearray()
    while data:
        d = zstd_decompressor()
        try:
            out += d.decompress(data, INFLATE_LIMIT + 1 - len(out))
        except _zstd_module().ZstdError as e:
            raise _NotInflatable from e
        if len(out) > INFLATE_LIMIT or (not d.eof and not d.needs_input):
            raise _TooLarge
        if not d.eof:
            raise _NotInflatable  # a truncated frame
        data = d.unused_data
    return bytes(out)


_INFLATE: dict[str, Callable[[bytes], bytes]] = {
    "gzip": _gzip,
    "x-gzip": _gzip,
    "deflate": _deflate,
    "br": _brotli,
    "zstd": _zstd,
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
        except (zlib.error, brotli.error, _NotInflatable):
            return data  # not what the header says: read as it is
    return data


def as_metered(raw: bytes, encodings: Sequence[str]) -> bytes:
    """`raw` with its content codings undone, for a metered request: strict where `as_read` is
    lenient, since a body the meter reads differently from its provider could be mispriced.
    Raises `RequestParseError` for a coding spendfuse cannot undo, bytes that are not what their
    coding says, or a body that inflates past `INFLATE_LIMIT` (bounded, so that a small
    compressed body cannot exhaust the proxy's memory)."""
    data = raw
    for coding in reversed([e.strip().lower() for e in encodings if e.strip()]):
        if coding == "identity":
            continue
        inflate = _INFLATE.get(coding)
        if inflate is None:
            raise RequestParseError(f"the request body's content-encoding {coding!r} is not supported")
        try:
            data = inflate(data)
        except _TooLarge:
            raise RequestParseError(
                f"the request body inflates past {INFLATE_LIMIT // (1024 * 1024)} MiB"
            ) from None
        except (zlib.error, brotli.error, _NotInflatable) as e:
            raise RequestParseError(f"the request body is not valid {coding}: {e}") from None
    return data
