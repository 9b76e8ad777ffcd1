"""`bodies.as_read`: a body as the server it goes to would read it."""

from __future__ import annotations

import gzip
import json
import zlib

import brotli
import pytest
from backports import zstd

from governance import bodies
from governance.errors import RequestParseError

BODY = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).encode()


@pytest.mark.parametrize(
    ("encodings", "encoded"),
    [
        ([], BODY),
        (["identity"], BODY),
        (["gzip"], gzip.compress(BODY)),
        (["x-gzip"], gzip.compress(BODY)),
        (["deflate"], zlib.compress(BODY)),
        (["deflate"], b"raw"),  # raw deflate, as some clients send it: built in the test
        (["br"], brotli.compress(BODY)),
        (["gzip", "br"], brotli.compress(gzip.compress(BODY))),  # applied in order: undone in reverse
        ([" GZIP "], gzip.compress(BODY)),
        (["zstd"], zstd.compress(BODY)),
        (["zstd"], zstd.compress(BODY[:20]) + zstd.compress(BODY[20:])),  # two frames
        (["zstd", "gzip"], gzip.compress(zstd.compress(BODY))),
    ],
)
def test_codings_are_undone(encodings, encoded):
    if encoded == b"raw":
        c = zlib.compressobj(wbits=-15)
        encoded = c.compress(BODY) + c.flush()
    assert bodies.as_read(encoded, encodings) == BODY


@pytest.mark.parametrize("encodings", [["x-none"], ["zstd"], ["gzip"], ["br"]])
def test_what_cannot_be_inflated_is_read_as_sent(encodings):
    # A server that ignores the header (or finds it wrong) reads the bytes as they are.
    assert bodies.as_read(BODY, encodings) == BODY


def test_a_bomb_cannot_be_inspected():
    bomb = gzip.compress(b" " * (bodies.INFLATE_LIMIT + 1))
    assert len(bomb) < 100_000
    assert bodies.as_read(bomb, ["gzip"]) is None
    assert bodies.as_read(brotli.compress(b" " * (bodies.INFLATE_LIMIT + 1)), ["br"]) is None
    assert bodies.as_read(zstd.compress(b" " * (bodies.INFLATE_LIMIT + 1)), ["zstd"]) is None
    half = zstd.compress(b" " * (bodies.INFLATE_LIMIT // 2 + 1))
    assert bodies.as_read(half + half, ["zstd"]) is None  # the bound is on all frames together
    fits = gzip.compress(b" " * bodies.INFLATE_LIMIT)
    assert bodies.as_read(fits, ["gzip"]) == b" " * bodies.INFLATE_LIMIT


@pytest.mark.parametrize(
    ("encodings", "encoded"),
    [
        ([], BODY),
        (["gzip"], gzip.compress(BODY)),
        (["br"], brotli.compress(BODY)),
        (["zstd"], zstd.compress(BODY)),
        (["gzip", "zstd"], zstd.compress(gzip.compress(BODY))),
    ],
)
def test_a_metered_body_is_read_as_its_provider_reads_it(encodings, encoded):
    assert bodies.as_metered(encoded, encodings) == BODY


@pytest.mark.parametrize(
    ("encodings", "encoded", "fragment"),
    [
        (["x-none"], BODY, "not supported"),
        (["zstd"], BODY, "not valid zstd"),
        (["zstd"], zstd.compress(BODY)[:-3], "not valid zstd"),  # truncated
        (["gzip"], BODY, "not valid gzip"),
        (["zstd"], zstd.compress(b" " * (bodies.INFLATE_LIMIT + 1)), "inflates past 32 MiB"),
    ],
)
def test_a_metered_body_that_cannot_be_read_as_sent_is_refused(encodings, encoded, fragment):
    with pytest.raises(RequestParseError, match=fragment):
        bodies.as_metered(encoded, encodings)
