"""`governance.shape`: method overrides, and what makes a request to an unknown host LLM-shaped."""

from __future__ import annotations

import json
import time

import pytest

from governance import shape
from governance.hostrules import shipped_table


@pytest.mark.parametrize(
    ("method", "headers", "path", "claims"),
    [
        ("GET", [("X-HTTP-Method-Override", "POST")], "/", ("POST",)),
        ("GET", [("x-http-method", "Post")], "/", ("POST",)),
        ("GET", [("X-Method-Override", "put")], "/", ("PUT",)),
        ("GET", [("X-Original-Method", "WHATEVER")], "/", ("WHATEVER",)),  # a known header: any value
        ("GET", [("X-Custom-Method", "DELETE")], "/", ("DELETE",)),
        ("GET", [("X-Stainless-Helper-Method", "stream")], "/", ()),  # a helper, not a method
        ("POST", [("X-HTTP-Method-Override", "POST")], "/", ()),  # its own method
        ("GET", [], "/v1/x?_method=POST", ("POST",)),
        ("GET", [], "/v1/x?a=1&_Method=patch#f", ("PATCH",)),
        ("GET", [], "/v1/x?sort_method=POST", ("POST",)),  # names a method: counts
        ("GET", [], "/v1/x?method=list", ()),
        ("GET", [], "/v1/x?_%6Dethod=POST", ("POST",)),  # the name percent-encoded
        ("GET", [], "/v1/x?%5f%6d%65%74%68%6f%64=post", ("POST",)),
        ("GET", [], "/v1/x?x=1;_method=POST", ("POST",)),  # `;` separates, as older Rack reads it
        ("GET", [], "/v1/x?%255Fmethod=%2550OST", ("POST",)),  # encoded twice
        (
            "GET",
            [("X-HTTP-Method-Override", "POST"), ("X-Method-Override", "POST")],
            "/?_method=POST",
            ("POST",),
        ),
    ],
)
def test_method_claims(method, headers, path, claims):
    assert shape.method_claims(method, headers, path) == claims


@pytest.mark.parametrize(
    ("body", "shaped"),
    [
        ({"model": "m", "messages": []}, True),
        ({"Model": "m", "Prompt": "p"}, True),
        ({"model": "m", "meſſages": []}, True),  # Go folds ſ to s
        ({"model_id": "m", "inputText": "hi"}, True),
        ({"model": "m"}, False),  # no prompt (and no model route)
        ({"input": "x", "event": "e"}, False),  # telemetry: no model
        ({"meta": {"model": "m", "messages": []}}, False),  # nested: not a top-level request
        ([{"model": "m"}, {"prompt": "p"}], False),  # a model and a prompt, in different objects
        ("a string", False),
        (12, False),
    ],
)
def test_body_shape(body, shaped):
    match = shipped_table().shape.match("/some/path", lambda: json.dumps(body, ensure_ascii=False).encode())
    assert (match is not None) is shaped


@pytest.mark.parametrize(
    "raw",
    [
        b" " * 100 + b'\n{"model": "m", "input": "hi"}',  # padded past any peek at the head
        '{"model": "m", "input": "hi"}'.encode("utf-16"),  # Python's parsers detect UTF-16
        '{"model": "m", "input": "hi"}'.encode("utf-32-le"),
        b'\xef\xbb\xbf{"model": "m", "input": "hi"}',
        b'{"mod\\u0065l": "m", "\\u0069nput": "hi"}',
        b'{"model": "m", "input": "hi", "model": "n"}',  # a repeated key
    ],
)
def test_spellings_of_an_llm_body(raw):
    assert shipped_table().shape.match("/x", lambda: raw) == "openai"


def test_a_model_route_needs_only_a_model():
    s = shipped_table().shape
    assert s.match("/v1/messages", lambda: b'{"model": "claude", "max_tokens": 5}') == "anthropic"
    assert s.match("/api/v10/channels/1/messages", lambda: b'{"content": "hi"}') is None


def test_a_body_past_the_parse_limit_is_judged_by_its_keys_as_written():
    s = shipped_table().shape
    image = "A" * (shape.PARSE_LIMIT + 1)  # a prompt with an inline image, past the limit
    llm = json.dumps({"model": "m", "messages": [{"role": "user", "content": image}]}).encode()
    assert s.match("/x", lambda: llm) == "openai"
    escaped = b'{"pad": "' + image.encode() + b'", "mod\\u0065l": "m", "\\u0069nput": "hi"}'
    assert s.match("/x", lambda: escaped) == "openai"
    plain = json.dumps({"rows": [image], "name": "dataset"}).encode()
    assert s.match("/x", lambda: plain) is None


def test_a_big_body_without_a_model_is_not_parsed():
    """The prefilter keeps a large JSON upload off the parser: well under a parse's time."""
    s = shipped_table().shape
    big = json.dumps({"rows": [{"name": "x" * 50, "value": i} for i in range(200_000)]}).encode()
    assert len(big) > 10_000_000
    started = time.perf_counter()
    assert s.match("/upload", lambda: big) is None
    scanned = time.perf_counter() - started
    started = time.perf_counter()
    json.loads(big)
    parsed = time.perf_counter() - started
    assert scanned < parsed / 2, (scanned, parsed)
