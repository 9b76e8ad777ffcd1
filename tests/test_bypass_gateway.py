"""Gateway mode against an adversarial client: raw requests to the gateway listener that try to
reach a host the routing table does not name, or to skip the fuse. Each is refused or routed by
its path alone, and nothing refused reaches the fake upstream."""

from __future__ import annotations

import socket
import ssl

import pytest

from tests.conftest import write_rules
from tests.support.gateway import gateway, gateway_port, raw
from tests.support.rawclient import TIMEOUT, chat_body, read_reply, request_bytes
from tests.test_e2e import rows


class TestAdversary:
    @pytest.mark.parametrize(
        "target",
        [
            "/nowhere/v1/chat/completions",
            "/chat/completions",
            "/openai/../v1/chat/completions",
            "/openai/v1/../../v1/chat/completions",
            "/openai/v1/%2e%2e/chat/completions",
            "/openai/v1%2fchat/completions",
            "/openai/v1/chat%2Fcompletions",
            "/openai/v1/chat%5ccompletions",
            "//v1/chat/completions",
            "//api.openai.com/v1/chat/completions",
            "/openai//v1/chat/completions",
            "http://api.openai.com/v1/chat/completions",
            "https://api.openai.com/openai/v1/chat/completions",
        ],
    )
    def test_unrouted_targets_are_404_and_never_forwarded(self, start, upstream, tmp_path, target):
        proxy = start(**gateway())
        reply = raw(gateway_port(proxy), request_bytes("POST", target, "api.openai.com", chat_body()))
        assert reply is not None and reply.status == 404
        err = reply.json()["error"]
        assert err["code"] == "gateway_no_route" and err["type"] == "invalid_request_error"
        assert "was not forwarded" in err["message"]
        assert upstream.total_hits == 0
        [row] = rows(tmp_path / "ledger.sqlite")
        assert row["decision"] == "refused" and row["rule"] == "gateway"

    def test_anthropic_prefix_answers_in_its_envelope(self, start, upstream):
        proxy = start(**gateway())
        reply = raw(gateway_port(proxy), request_bytes("POST", "/anthropic/../x", "h", chat_body()))
        assert reply is not None and reply.status == 404
        assert reply.json()["type"] == "error" and reply.json()["error"]["type"] == "not_found_error"
        assert upstream.total_hits == 0

    def test_connect_on_the_gateway_is_refused(self, start, upstream):
        proxy = start(**gateway())
        reply = raw(
            gateway_port(proxy), b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n"
        )
        assert reply is None or reply.status >= 400
        assert upstream.total_hits == 0 and upstream.connections == 0

    @pytest.mark.parametrize("keep_host_header", ["false", "true"])
    @pytest.mark.parametrize("host", ["evil.example", "api.anthropic.com", "127.0.0.1:1"])
    def test_a_spoofed_host_goes_where_the_path_says(self, start, upstream, tmp_path, host, keep_host_header):
        """The Host the client sends names nothing (keep_host_header or not): the table does.
        Metered as the route's."""
        proxy = start(keep_host_header=keep_host_header, **gateway())
        reply = raw(
            gateway_port(proxy), request_bytes("POST", "/openai/v1/chat/completions", host, chat_body())
        )
        assert reply is not None and reply.status == 200
        assert upstream.hits["/v1/chat/completions"] == 1
        assert [h["host"] for h in upstream.headers] == ["api.openai.com"]
        [row] = rows(tmp_path / "ledger.sqlite")
        assert row["state"] == "settled" and row["provider"] == "openai"

    def test_unknown_endpoint_on_a_routed_host_is_the_fuses(self, start, upstream, tmp_path):
        """Routed, then refused by the fuse as in proxy mode: the table adds no exemption."""
        proxy = start(**gateway())
        reply = raw(
            gateway_port(proxy), request_bytes("POST", "/openai/v1/images/generations", "x", {"prompt": "a"})
        )
        assert reply is not None and reply.status in (400, 403)
        assert upstream.total_hits == 0


class TestTheFuseStillDecides:
    """A route only names a host: egress, unknown-host handling and upgrades are the fuse's, as in
    proxy mode."""

    ROUTES = (
        "routes:\n"
        "  - {prefix: /openai/v1, upstream: 'https://api.openai.com/v1'}\n"
        "  - {prefix: /pkg, upstream: 'https://example.org'}\n"
        "  - {prefix: /llm, upstream: 'https://llm.example.com/v1'}\n"
    )

    def _start(self, start, tmp_path, **rules):  # type: ignore[no-untyped-def]
        routes = tmp_path / "gateway.yaml"
        routes.write_text(self.ROUTES)
        return start(
            rules=write_rules(tmp_path / "r.yaml", **rules), spendfuse_gateway_routes=str(routes), **gateway()
        )

    def test_egress_allowlist_applies(self, start, upstream, tmp_path):
        proxy = self._start(start, tmp_path, egress={"mode": "allowlist", "allow": [{"host": "pypi.org"}]})
        reply = raw(gateway_port(proxy), b"GET /pkg/simple/ HTTP/1.1\r\nHost: pypi.org\r\n\r\n")
        assert reply is not None and reply.status == 403 and reply.json()["error"]["code"] == "egress_denied"
        assert upstream.total_hits == 0
        ok = raw(gateway_port(proxy), request_bytes("POST", "/openai/v1/chat/completions", "x", chat_body()))
        assert ok is not None and ok.status == 200 and upstream.hits["/v1/chat/completions"] == 1

    def test_unknown_llm_host_is_refused(self, start, upstream, tmp_path):
        proxy = self._start(start, tmp_path)
        reply = raw(gateway_port(proxy), request_bytes("POST", "/llm/chat/completions", "x", chat_body()))
        assert reply is not None and reply.status == 403
        assert (
            reply.json()["error"]["code"] == "unknown_llm_host" and "llm.example.com" in reply.body.decode()
        )
        assert upstream.total_hits == 0

    def test_google_is_metered_as_in_proxy_mode(self, start, upstream, tmp_path):
        """Gemini through the gateway: routed, metered and settled as through the proxy; past its
        budget, refused in Google's envelope without reaching the upstream."""
        proxy = start(**gateway())
        body = {"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"maxOutputTokens": 20}}
        target = "/genai/v1beta/models/gemini-2.0-flash:generateContent"
        reply = raw(gateway_port(proxy), request_bytes("POST", target, "x", body))
        assert reply is not None and reply.status == 200
        # 11 input and 7 output tokens at $0.10 and $0.40 per 1M: $0.0000039 (3 whole
        # micro-dollars; the ledger keeps the rest apart).
        assert [(r["model"], r["cost_micro"]) for r in rows(tmp_path / "ledger.sqlite")] == [
            ("gemini-2.0-flash", 3)
        ]
        broke = start(**gateway(), spendfuse_budget="0", spendfuse_db=str(tmp_path / "broke.sqlite"))
        reply = raw(gateway_port(broke), request_bytes("POST", target, "x", body))
        assert reply is not None and reply.status == 400
        assert reply.json()["error"]["status"] == "FAILED_PRECONDITION"
        assert upstream.hits["/v1beta/models/gemini-2.0-flash:generateContent"] == 1

    def test_websocket_upgrade_is_refused_where_the_rules_refuse_websockets(self, start, upstream, tmp_path):
        """Codex first tries a WebSocket on /v1/responses; with `websockets: refuse` it is refused
        through the gateway as through the proxy, and Codex falls back to HTTP."""
        proxy = self._start(start, tmp_path, websockets="refuse")
        reply = raw(
            gateway_port(proxy),
            b"GET /openai/v1/responses HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        assert reply is not None and reply.status == 426
        assert upstream.total_hits == 0


@pytest.mark.parametrize(
    ("target", "status", "hits"), [("/openai/v1/chat/completions", 200, 1), ("/x", 404, 0)]
)
def test_tls_to_the_gateway_with_a_spoofed_sni(start, upstream, target, status, hits):
    """A client may speak TLS to the gateway (mitmproxy answers with its CA), with any SNI: the
    path still decides where the request goes."""
    proxy = start(**gateway())
    ctx = ssl.create_default_context(cafile=str(proxy.ca))
    ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", gateway_port(proxy)), timeout=TIMEOUT) as plain:
        with ctx.wrap_socket(plain, server_hostname="evil.example") as sock:
            sock.sendall(request_bytes("POST", target, "evil.example", chat_body()))
            reply = read_reply(sock)
    assert reply.status == status
    assert upstream.total_hits == hits and all(h["host"] == "api.openai.com" for h in upstream.headers)
