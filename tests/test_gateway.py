"""Gateway mode, engine side: the path-prefix table (`rules/gateway.yaml`) and `route`."""

from __future__ import annotations

from pathlib import Path

import pytest

from governance import gateway, wire
from governance.errors import PolicyError
from governance.gateway import Route, Unrouted
from governance.types import RefusalKind

ROUTER = gateway.load()


def routed(target: str) -> Route:
    r = ROUTER.route("POST", target)
    assert isinstance(r, Route), r
    return r


def refused(target: str) -> Unrouted:
    r = ROUTER.route("POST", target)
    assert isinstance(r, Unrouted), r
    return r


@pytest.mark.parametrize(
    ("target", "host", "path"),
    [
        ("/openai/v1/chat/completions", "api.openai.com", "/v1/chat/completions"),
        ("/openai/chat/completions", "api.openai.com", "/v1/chat/completions"),  # Bifrost's docs' base URL
        ("/v1/responses", "api.openai.com", "/v1/responses"),
        ("/v1/models?limit=2", "api.openai.com", "/v1/models?limit=2"),
        ("/anthropic/v1/messages", "api.anthropic.com", "/v1/messages"),
        ("/anthropic/v1/messages?beta=true", "api.anthropic.com", "/v1/messages?beta=true"),
        (
            "/genai/v1beta/models/gemini-2.0-flash:generateContent",
            "generativelanguage.googleapis.com",
            "/v1beta/models/gemini-2.0-flash:generateContent",
        ),
    ],
)
def test_shipped_routes(target: str, host: str, path: str) -> None:
    r = routed(target)
    assert (r.scheme, r.host, r.port, r.host_header, r.path) == ("https", host, 443, host, path)


def test_longest_prefix_wins_and_matches_whole_segments() -> None:
    assert routed("/openai/v1/x").prefix == "/openai/v1"
    assert routed("/openai/v1x").path == "/v1/v1x"  # under /openai, not /openai/v1
    assert refused("/openaiv1/chat/completions").endpoint.envelope == "openai"
    assert refused("/v10/chat").refusal.kind is RefusalKind.NOT_FOUND


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("/nowhere/v1/chat/completions", "no gateway route"),
        ("/", "no gateway route"),
        ("/OpenAI/v1/chat/completions", "no gateway route"),
        ("/openai/../v1/chat/completions", "dot segment"),
        ("/openai/v1/./chat/completions", "dot segment"),
        ("/v1/..", "dot segment"),
        ("/openai/v1/%2e%2e/x", "percent-encoded"),
        ("/openai/v1/%2E./x", "percent-encoded"),
        ("/v1/a%2fb", "percent-encoded"),
        ("/v1/a%5cb", "percent-encoded"),
        ("/v1/a%252fb", "percent-encoded"),
        ("/v1/a%zz", "malformed percent escape"),
        ("/openai//v1/chat/completions", "empty segment"),
        ("//api.openai.com/v1/chat", "empty segment"),
        ("http://api.openai.com/v1/chat/completions", "origin-form"),
        ("*", "origin-form"),
        ("/v1/a\\b", "characters"),
        ("/v1/a b", "characters"),
        ("/v1/chat?x=\r\n", "characters"),
    ],
)
def test_refused_targets(target: str, why: str) -> None:
    r = refused(target)
    assert why in r.refusal.message and r.refusal.code == "gateway_no_route"


def test_refusal_is_a_404_in_the_prefix_envelope() -> None:
    status, _, body = wire.render_error(refused("/anthropic/../x").endpoint, refused("/x").refusal, "r1")
    assert status == 404 and b'"not_found_error"' in body
    status, _, body = wire.render_error(refused("/x").endpoint, refused("/x").refusal, "r1")
    assert status == 404 and b'"invalid_request_error"' in body and b"gateway_no_route" in body


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "gateway.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "text",
    [
        "routes: []",
        "routes: [{prefix: openai, upstream: 'https://api.openai.com'}]",
        "routes: [{prefix: /a/../b, upstream: 'https://api.openai.com'}]",
        "routes: [{prefix: /a/, upstream: 'https://api.openai.com'}]",
        "routes: [{prefix: /a, upstream: 'ftp://api.openai.com'}]",
        "routes: [{prefix: /a, upstream: 'https://u:p@api.openai.com'}]",
        "routes: [{prefix: /a, upstream: 'https://api.openai.com/v1?x=1'}]",
        "routes: [{prefix: /a, upstream: 'https://api.openai.com:99999'}]",
        "routes: [{prefix: /a, upstream: 'https://api.openai.com', envelope: nobody}]",
        "routes: [{prefix: /a, upstream: 'https://x'}, {prefix: /a, upstream: 'https://y'}]",
        "routes: [{prefix: /a, upstream: 'https://x', extra: 1}]",
        "routes: [{prefix: /a, upstream: 'https://x'}]\ndefault_envelope: nobody",
        "{",
    ],
)
def test_a_bad_table_is_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(PolicyError, match="gateway routes"):
        gateway.load(write(tmp_path, text))


def test_missing_table_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="gateway routes"):
        gateway.load(tmp_path / "absent.yaml")


def test_custom_upstream_port_and_path(tmp_path: Path) -> None:
    router = gateway.load(write(tmp_path, "routes: [{prefix: /local, upstream: 'http://10.0.0.5:8000/api'}]"))
    r = router.route("GET", "/local/v1/models")
    assert isinstance(r, Route)
    assert (r.scheme, r.host, r.port, r.host_header, r.path) == (
        "http",
        "10.0.0.5",
        8000,
        "10.0.0.5:8000",
        "/api/v1/models",
    )


@pytest.mark.parametrize(
    ("value", "spec"),
    [
        ("8081", "reverse:http://gateway.spendfuse.invalid@8081"),
        ("127.0.0.1:0", "reverse:http://gateway.spendfuse.invalid@127.0.0.1:0"),
    ],
)
def test_listener_spec(value: str, spec: str) -> None:
    assert gateway.listener_spec(value) == spec


@pytest.mark.parametrize("value", ["", "x", "99999", ":80", "80:", "-1"])
def test_bad_listener(value: str) -> None:
    with pytest.raises(ValueError, match="PORT or HOST:PORT"):
        gateway.listener_spec(value)
