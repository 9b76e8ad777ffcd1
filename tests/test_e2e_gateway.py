"""End to end, gateway (base-URL) mode: a real mitmdump with spendfuse and a gateway listener
(`spendfuse_gateway`) beside its proxy listener, the official SDKs configured with `base_url`
and no proxy, and the fake upstream on loopback (the harness sends every forwarded request
there, keeping the Host the gateway set)."""

from __future__ import annotations

import re
import socket
from decimal import Decimal

import anthropic
import openai
import pytest

from tests.conftest import write_rules
from tests.support.rawclient import TIMEOUT, chat_body, read_reply, request_bytes
from tests.test_e2e import micro, rows
from tests.test_e2e_governance import KEYS
from tests.test_e2e_governance import rules as v2_rules


def free_port() -> int:
    """A loopback port free now (mitmproxy refuses two listeners on 127.0.0.1:0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gateway() -> dict[str, str]:
    """`start(**gateway())`: options for a gateway listener on a fresh loopback port."""
    return {"spendfuse_gateway": f"127.0.0.1:{free_port()}"}


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that cannot use a proxy: no proxy variables, keys of its own that are not real."""
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-real")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-not-real")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)


def openai_bill(upstream) -> int:  # type: ignore[no-untyped-def]
    """The fake provider's bill at the tests' gpt-4o prices ($1 / $10 per 1M), in micro-USD."""
    return sum(b["input_tokens"] * 1 + b["output_tokens"] * 10 for b in upstream.billed)


def anthropic_bill(upstream) -> int:  # type: ignore[no-untyped-def]
    """The same at the tests' claude-sonnet-4-5 prices ($2 / $20 per 1M)."""
    return sum(b["input_tokens"] * 2 + b["output_tokens"] * 20 for b in upstream.billed)


def chat(client: openai.OpenAI, **kw):  # type: ignore[no-untyped-def]
    return client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], **{"max_tokens": 100, **kw}
    )


class TestAdmitted:
    @pytest.mark.parametrize("base", ["/openai/v1", "/openai", "/v1"])
    def test_openai_sdk_streamed_and_not(self, start, no_proxy_env, upstream, tmp_path, base):
        proxy = start(**gateway())
        client = openai.OpenAI(base_url=proxy.gateway_url + base, max_retries=0)
        assert chat(client).choices[0].message.content == "hello"
        texts = [c.choices[0].delta.content for c in chat(client, stream=True) if c.choices]
        assert "".join(t for t in texts if t)
        assert client.responses.create(model="gpt-4o", input="hi", max_output_tokens=50).output_text
        assert upstream.hits["/v1/chat/completions"] == 2 and upstream.hits["/v1/responses"] == 1
        assert {h["host"] for h in upstream.headers} == {"api.openai.com"}
        recorded = rows(tmp_path / "ledger.sqlite")
        assert [r["state"] for r in recorded] == ["settled"] * 3
        assert {r["provider"] for r in recorded} == {"openai"}
        assert sum(r["cost_micro"] for r in recorded) == openai_bill(upstream) > 0

    def test_anthropic_sdk_streamed_and_not(self, start, no_proxy_env, upstream, tmp_path):
        proxy = start(**gateway())
        client = anthropic.Anthropic(base_url=proxy.gateway_url + "/anthropic", max_retries=0)
        msg = client.messages.create(
            model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        )
        assert msg.content[0].text
        with client.messages.stream(
            model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            assert "".join(stream.text_stream)
        assert upstream.hits["/v1/messages"] == 2
        assert {h["host"] for h in upstream.headers} == {"api.anthropic.com"}
        recorded = rows(tmp_path / "ledger.sqlite")
        assert [r["state"] for r in recorded] == ["settled"] * 2
        assert sum(r["cost_micro"] for r in recorded) == anthropic_bill(upstream) > 0

    def test_base_url_from_the_environment(self, start, no_proxy_env, upstream, tmp_path, monkeypatch):
        proxy = start(**gateway())
        monkeypatch.setenv("OPENAI_BASE_URL", proxy.gateway_url + "/openai/v1")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", proxy.gateway_url + "/anthropic")
        chat(openai.OpenAI(max_retries=0))
        anthropic.Anthropic(max_retries=0).messages.create(
            model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
        assert upstream.hits["/v1/chat/completions"] == upstream.hits["/v1/messages"] == 1
        assert [r["state"] for r in rows(tmp_path / "ledger.sqlite")] == ["settled"] * 2


def _same(response) -> tuple:  # type: ignore[no-untyped-def]
    """What a client sees of a refusal, less the flow's own id."""
    strip = lambda text: re.sub(r"req_spendfuse_[0-9a-f-]+", "ID", text)  # noqa: E731
    skip = {"date", "content-length", "x-request-id", "request-id"}
    headers = {k: strip(v) for k, v in response.headers.items() if k not in skip}
    return response.status_code, strip(response.text), headers


class TestOneLedger:
    def test_both_listeners_share_one_cap(self, start, client_env, upstream, tmp_path):
        """Each call reserves ~$0.01 and costs $0.008111: a $0.03 cap serves exactly three, in
        whichever mode they come."""
        upstream.knobs.completion_tokens = 810
        proxy = start(spendfuse_budget="0.03", **gateway())
        client_env(proxy)  # proxy mode for the SDKs that take no base_url
        via_proxy = openai.OpenAI(max_retries=0)
        via_gateway = openai.OpenAI(
            base_url=proxy.gateway_url + "/openai/v1",
            max_retries=0,
            http_client=openai.DefaultHttpxClient(trust_env=False),
        )
        served = 0
        with pytest.raises(openai.RateLimitError) as refused_gateway:
            for i in range(10):
                chat(via_gateway if i % 2 else via_proxy, max_tokens=1000)
                served += 1
        with pytest.raises(openai.RateLimitError) as refused_proxy:
            chat(via_proxy, max_tokens=1000)
        assert served == upstream.total_hits == 3
        spent = sum(r["cost_micro"] or 0 for r in rows(tmp_path / "ledger.sqlite"))
        assert spent == 3 * 8_111 == openai_bill(upstream)
        # The same refusal in both modes: status, body and headers.
        assert _same(refused_gateway.value.response) == _same(refused_proxy.value.response)
        assert refused_gateway.value.code == "insufficient_quota"
        assert refused_gateway.value.response.headers["x-spendfuse-refused"] == "budget:global"

    def test_anthropic_refusal_matches_proxy_mode(self, start, client_env, upstream, tmp_path):
        proxy = start(spendfuse_budget="0.01", **gateway())
        client_env(proxy)
        body = {
            "model": "claude-sonnet-4-5",
            "max_tokens": 8000,
            "messages": [{"role": "user", "content": "hi"}],
        }
        errors = []
        for client in (
            anthropic.Anthropic(max_retries=0),
            anthropic.Anthropic(
                base_url=proxy.gateway_url + "/anthropic",
                max_retries=0,
                http_client=anthropic.DefaultHttpxClient(trust_env=False),
            ),
        ):
            with pytest.raises(anthropic.RateLimitError) as exc:  # worst case $0.16 > $0.01
                client.messages.create(**body)
            errors.append(exc.value.response)
        assert _same(errors[0]) == _same(errors[1])
        assert upstream.total_hits == 0
        assert [r["rule"] for r in rows(tmp_path / "ledger.sqlite")] == ["budget:global"] * 2
        assert micro(Decimal("0.01")) == 10_000  # the cap is far below one worst case


def test_virtual_keys_in_x_spendfuse_key_get_their_own_budgets(start, no_proxy_env, upstream, tmp_path):
    """Keys as in proxy mode: each its own budget, a wrong one 401, the header never forwarded."""
    proxy = start(rules=v2_rules(tmp_path / "r.yaml", **KEYS), **gateway())
    base = proxy.gateway_url + "/openai/v1"

    def client(key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=base, max_retries=0, default_headers={"x-spendfuse-key": key})

    chat(client("alice-secret"))  # settles 81 µ$ of alice's 2,500
    with pytest.raises(openai.RateLimitError) as refused:  # reserves ~2,458 µ$: over alice's rest
        chat(client("alice-secret"), max_tokens=245)
    assert refused.value.response.headers["x-spendfuse-refused"] == "budget:agent@key=alice"
    chat(client("bob-secret"), max_tokens=245)
    with pytest.raises(openai.AuthenticationError):
        chat(client("guess"))
    assert upstream.hits["/v1/chat/completions"] == 2
    assert all("x-spendfuse-key" not in h for h in upstream.headers)
    found = [(r["principal"], r["state"]) for r in rows(tmp_path / "ledger.sqlite")]
    assert found[:3] == [("key:alice", "settled"), ("key:alice", "refused"), ("key:bob", "settled")]
    assert found[3][1] == "refused" and len(found) == 4


def raw(port: int, data: bytes):  # type: ignore[no-untyped-def]
    """Send `data` to the gateway and read one reply (None: the connection was closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(data)
        try:
            return read_reply(sock)
        except ConnectionError:
            return None


def gateway_port(proxy) -> int:  # type: ignore[no-untyped-def]
    return int(proxy.gateway_url.rsplit(":", 1)[1])


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


class TestStartup:
    def test_spendfuse_run_gateway_flag(self, start, no_proxy_env, upstream, tmp_path):
        proxy = start(launcher=True, extra=("--gateway", f"127.0.0.1:{free_port()}"))
        chat(openai.OpenAI(base_url=proxy.gateway_url + "/openai/v1", max_retries=0))
        assert upstream.hits["/v1/chat/completions"] == 1
        assert [r["state"] for r in rows(tmp_path / "ledger.sqlite")] == ["settled"]

    def test_mitmdump_mode_spec(self, start, no_proxy_env, upstream, tmp_path):
        """`mitmdump -s addon.py --mode regular --mode reverse:http://gateway.spendfuse.invalid@PORT`."""
        spec = f"reverse:http://gateway.spendfuse.invalid@127.0.0.1:{free_port()}"
        proxy = start(extra=("--mode", "regular", "--mode", spec))
        assert set(proxy.ports) == {"regular", spec}
        anthropic.Anthropic(base_url=proxy.gateway_url + "/anthropic", max_retries=0).messages.create(
            model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
        assert upstream.hits["/v1/messages"] == 1
        assert [r["state"] for r in rows(tmp_path / "ledger.sqlite")] == ["settled"]

    def test_flag_spelling(self):
        from governance.mitm.launcher import gateway_flag

        assert gateway_flag(["-q", "--gateway", "8081", "--gateway=h:1"]) == [
            "-q",
            "--set",
            "spendfuse_gateway=8081",
            "--set",
            "spendfuse_gateway=h:1",
        ]
        assert gateway_flag(["--gateway"]) == ["--gateway"]

    @pytest.mark.parametrize(
        ("how", "words"),
        [
            ({"spendfuse_gateway": "not-a-port"}, "PORT or HOST:PORT"),
            ({"spendfuse_gateway_routes": "/nonexistent/gateway.yaml"}, "cannot read the gateway routes"),
            (
                {"mode": "reverse:https://gateway.spendfuse.invalid@127.0.0.1:0"},
                "the gateway listener is reverse:http",
            ),
        ],
    )
    def test_a_misconfigured_gateway_does_not_start(self, start, how, words):
        with pytest.raises(RuntimeError, match=words):
            start(**how)

    @pytest.mark.expect_errors("gateway listener could not start")
    @pytest.mark.parametrize("launcher", [False, True])
    def test_a_gateway_port_in_use_stops_the_proxy(self, start, launcher):
        """With `-s addon.py` the listener starts late (see `Gateway.running`): the proxy may
        report its first port, then it exits non-zero."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            try:
                proxy = start(launcher=launcher, spendfuse_gateway=f"127.0.0.1:{taken.getsockname()[1]}")
            except RuntimeError as e:
                assert "address already in use" in str(e)
            else:
                assert proxy.process.wait(timeout=20) != 0
                assert "address already in use" in proxy.output()

    def test_dry_run_still_answers_an_unrouted_path(self, start, upstream, tmp_path):
        """Dry run refuses nothing, but a path that names no upstream has nowhere to go."""
        proxy = start(spendfuse_dry_run="true", **gateway())
        reply = raw(gateway_port(proxy), request_bytes("POST", "/nowhere", "x", chat_body()))
        assert reply is not None and reply.status == 404
        assert upstream.total_hits == 0


def test_health_probe_on_the_gateway(start, upstream):
    proxy = start(**gateway())
    reply = raw(gateway_port(proxy), b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply is not None and reply.status == 200 and reply.json()["status"] == "ok"
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

    def test_google_is_refused_as_in_proxy_mode(self, start, upstream, tmp_path):
        """Gemini is a known host this build does not meter: routed, then refused in Google's
        envelope, as through the proxy."""
        proxy = start(**gateway())
        body = {"contents": [{"parts": [{"text": "hi"}]}]}
        target = "/genai/v1beta/models/gemini-2.0-flash:generateContent"
        reply = raw(gateway_port(proxy), request_bytes("POST", target, "x", body))
        assert reply is not None and reply.status == 403
        assert reply.json()["error"]["status"] == "PERMISSION_DENIED"
        assert "generativelanguage.googleapis.com" in reply.json()["error"]["message"]
        assert upstream.total_hits == 0

    def test_websocket_upgrade_is_refused(self, start, upstream, tmp_path):
        """Codex first tries a WebSocket on /v1/responses; refused, it falls back to HTTP."""
        proxy = self._start(start, tmp_path)
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
    import ssl

    proxy = start(**gateway())
    ctx = ssl.create_default_context(cafile=str(proxy.ca))
    ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", gateway_port(proxy)), timeout=TIMEOUT) as plain:
        with ctx.wrap_socket(plain, server_hostname="evil.example") as sock:
            sock.sendall(request_bytes("POST", target, "evil.example", chat_body()))
            reply = read_reply(sock)
    assert reply.status == status
    assert upstream.total_hits == hits and all(h["host"] == "api.openai.com" for h in upstream.headers)
