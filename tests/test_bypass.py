"""No way around the fuse, end to end: a real mitmdump, a TLS fake upstream that presents a
certificate for the real API names (signed by a test CA that mitmproxy trusts), and a test
addon that stands in for DNS, so the upstream sees exactly the SNI and Host the client sent.

Each class of bypass is tried the way an agent would try it. At budget 0 the upstream must see
no connection at all; a control in the same test shows the channel works when it is used
honestly and the budget allows, so a zero is never the zero of a broken harness.
"""

from __future__ import annotations

import gzip
import json
import socket
import ssl
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from governance.ledger import Ledger
from tests.conftest import write_rules
from tests.support.certs import PKI, make_pki
from tests.support.fake_upstream import Upstream, start_tls_upstream
from tests.support.proxy import Proxy, start_proxy
from tests.support.rawclient import TLSPipe, chat_body, read_reply, request_bytes, tunnel

DNS_ADDON = Path(__file__).parent / "support" / "dns_addon.py"
STREAM_REQUEST_ADDON = Path(__file__).parent / "support" / "stream_request_addon.py"
#: Each proxy's ledger, by its port.
ledgers: dict[int, Path] = {}
NAMES = [
    "api.openai.com",
    "eu.api.openai.com",
    "api.anthropic.com",
    "api.deepinfra.com",
    "vllm.test",
    "allowed.test",
    "blocked.test",
    "jp.api.openai.com",
    "llm.unknown.test",
    "pypi.test",
    "code.test",
    "telemetry.test",
]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"), NAMES)


@pytest.fixture(scope="module")
def tls_upstream_server(pki: PKI) -> Iterator[Upstream]:
    up = start_tls_upstream(str(pki.cert), str(pki.key))
    yield up
    up.close()


@pytest.fixture
def tls_upstream(tls_upstream_server: Upstream) -> Upstream:
    tls_upstream_server.reset()
    return tls_upstream_server


@pytest.fixture
def start_real(
    request: pytest.FixtureRequest, tmp_path: Path, confdir: Path, pki: PKI, tls_upstream: Upstream
) -> Iterator[Callable[..., Proxy]]:
    """`start_real(budget=..., **rules)`: a proxy whose upstream connections go, by name, to
    the TLS fake upstream; nothing rewrites the requests themselves."""
    started: list[Proxy] = []

    def _start(
        budget: str = "1",
        *,
        scripts: tuple[Path, ...] = (),
        launcher: bool = False,
        sets: dict[str, str] | None = None,
        **rules: object,
    ) -> Proxy:
        n = len(started)
        all_sets = {
            "spendfuse_rules": str(write_rules(tmp_path / f"rules-{n}.yaml", **rules)),
            "spendfuse_db": str(tmp_path / f"ledger-{n}.sqlite"),
            "spendfuse_budget": budget,
            "ssl_verify_upstream_trusted_ca": str(pki.ca),
            "dns_map": f"*=127.0.0.1:{tls_upstream.port}",
            **(sets or {}),
        }
        proxy = start_proxy(
            tmp_path / f"p{n}",
            confdir=confdir,
            sets=all_sets,
            redirect_port=None,
            scripts=(DNS_ADDON, *scripts),
            launcher=launcher,
        )
        started.append(proxy)
        ledgers[proxy.port] = Path(all_sets["spendfuse_db"])
        return proxy

    yield _start
    for p in started:
        p.stop()
    errors = [line for p in started for line in p.logged_errors()]
    assert not errors, errors


def post_chat(
    proxy: Proxy,
    *,
    connect: str = "api.openai.com:443",
    sni: str = "api.openai.com",
    host: str = "api.openai.com",
    path: str = "/v1/chat/completions",
    model: str = "gpt-4o",
    first_write: int | None = None,
    tiny_request_write: bool = False,
):
    """CONNECT, TLS trusting the proxy's CA, one POST. Returns the reply."""
    sock, established = tunnel(proxy.port, connect)
    assert established.status == 200, established
    pipe = TLSPipe(sock, sni, proxy.ca, first_write=first_write)
    data = request_bytes("POST", path, host, chat_body(model))
    if tiny_request_write:
        pipe.sendall(data[:1])
        pipe.sendall(data[1:])
    else:
        pipe.sendall(data)
    try:
        return read_reply(pipe)
    finally:
        sock.close()


def end_to_end_tls(
    proxy: Proxy,
    pki: PKI,
    *,
    connect: str,
    sni: str = "api.openai.com",
    first_write: int | None = None,
    record_version: int | None = None,
) -> str:
    """An agent that trusts only the real provider's CA and talks TLS end to end with it through
    the tunnel: the one way that would succeed is bytes relayed raw. Returns what happened."""
    sock, established = tunnel(proxy.port, connect)
    if established.status != 200:
        return f"CONNECT {established.status}"
    try:
        pipe = TLSPipe(sock, sni, pki.ca, first_write=first_write, record_version=record_version)
        pipe.sendall(request_bytes("POST", "/v1/chat/completions", sni, chat_body()))
        return f"reply {read_reply(pipe).status}"
    except (ssl.SSLError, ConnectionError, OSError) as e:
        return f"failed: {type(e).__name__}"
    finally:
        sock.close()


# -- 1. bytes mitmproxy does not parse as HTTP ----------------------------------------------------


class TestRawBytes:
    @pytest.mark.parametrize("first_write", [1, 2])
    def test_a_split_client_hello_is_still_intercepted(self, start_real, tls_upstream, pki, first_write):
        proxy = start_real(budget="0")
        assert end_to_end_tls(proxy, pki, connect="api.openai.com:443", first_write=first_write).startswith(
            "failed"
        )
        reply = post_chat(proxy, first_write=first_write)  # the same split, trusting the proxy
        assert reply.status == 429 and reply.json()["error"]["code"] == "insufficient_quota"
        assert tls_upstream.connections == 0
        control = start_real(budget="1")
        assert post_chat(control, first_write=first_write).status == 200
        assert tls_upstream.hits["/v1/chat/completions"] == 1

    @pytest.mark.parametrize("version", [0x0304, 0x0305, 0x0400, 0x0300])
    def test_an_unusual_tls_record_version_is_not_tunnelled(self, start_real, tls_upstream, pki, version):
        proxy = start_real(budget="0")
        outcome = end_to_end_tls(proxy, pki, connect="api.openai.com:443", record_version=version)
        assert not outcome.startswith("reply"), outcome
        assert tls_upstream.connections == 0
        control = start_real(budget="1")
        assert post_chat(control).status == 200 and tls_upstream.connections == 1

    def test_a_tiny_first_write_after_tls_is_still_http(self, start_real, tls_upstream):
        proxy = start_real(budget="0")
        assert post_chat(proxy, tiny_request_write=True).status == 429
        assert tls_upstream.connections == 0
        control = start_real(budget="1")
        assert post_chat(control, tiny_request_write=True).status == 200
        assert tls_upstream.hits["/v1/chat/completions"] == 1

    def test_plain_bytes_in_a_tunnel_are_not_relayed(self, start_real, tls_upstream):
        proxy = start_real(budget="0")
        sock, established = tunnel(proxy.port, "api.openai.com:443")
        assert established.status == 200
        sock.sendall(b"\x00\x01binary protocol hello\r\n")
        sock.settimeout(3)
        try:
            while sock.recv(4096):
                pass
        except (TimeoutError, OSError):
            pass
        sock.close()
        assert tls_upstream.connections == 0

    @pytest.mark.parametrize(
        "option",
        [
            "ignore_hosts=api\\.openai\\.com",
            "ignore_hosts=.*",
            "tcp_hosts=.*openai.*",
            "allow_hosts=^pypi\\.org:443$",
            "udp_hosts=anthropic",
        ],
    )
    def test_options_that_exempt_an_llm_host_stop_start_up(self, tmp_path, confdir, option):
        name, _, value = option.partition("=")
        sets = {
            "spendfuse_rules": str(write_rules(tmp_path / "r.yaml")),
            "spendfuse_db": str(tmp_path / "l.sqlite"),
            name: value,
        }
        try:
            started = start_proxy(tmp_path, confdir=confdir, sets=sets, redirect_port=None, launcher=True)
        except RuntimeError as e:
            assert "exempt LLM hosts" in str(e) or "cover the LLM host" in str(e), e
            return
        started.stop()
        pytest.fail(f"the proxy started with {option}")

    @pytest.mark.parametrize("how", ["option", "env"])
    def test_a_ledger_url_stops_start_up(self, tmp_path, confdir, how, monkeypatch):
        """A fleet configured with a database URL must not quietly keep one SQLite file per
        machine (each passing every cap once): a database it cannot reach stops the proxy, and
        no file is written."""
        with socket.socket() as s:  # a port nothing listens on: the database is down
            s.bind(("127.0.0.1", 0))
            url = f"postgresql://user@127.0.0.1:{s.getsockname()[1]}/db"
        monkeypatch.chdir(tmp_path)
        sets = {"spendfuse_rules": str(write_rules(tmp_path / "r.yaml"))}
        if how == "option":
            sets["spendfuse_db"] = url
        else:
            monkeypatch.setenv("SPENDFUSE_DB", url)
        with pytest.raises(RuntimeError, match="cannot open ledger 'postgresql://user@127.0.0.1"):
            start_proxy(tmp_path, confdir=confdir, sets=sets, redirect_port=None, launcher=True)
        assert not (tmp_path / "postgresql:").exists()


class TestStreamedRequestBodies:
    """A co-loaded script (or option) that streams a request body upstream would forward it
    before spendfuse's `request` hook runs: the guard at the end of the chain undoes it."""

    @pytest.mark.parametrize(
        ("launcher", "streamed_with"), [(False, "true"), (True, "true"), (False, "callable")]
    )
    def test_a_streamed_request_is_decided_first(self, start_real, tls_upstream, launcher, streamed_with):
        proxy = start_real(
            "0",
            scripts=(STREAM_REQUEST_ADDON,),
            launcher=launcher,
            sets={"stream_request_with": streamed_with},
        )
        openai = post_chat(proxy)
        anthropic = post_chat(
            proxy,
            connect="api.anthropic.com:443",
            sni="api.anthropic.com",
            host="api.anthropic.com",
            path="/v1/messages",
            model="claude-sonnet-4-5",
        )
        assert (openai.status, anthropic.status) == (429, 429), (openai.body, anthropic.body)
        assert openai.json()["error"]["type"] and anthropic.json()["type"] == "error"
        assert tls_upstream.total_hits == 0 and tls_upstream.connections == 0
        assert "another addon asked to stream the request body" in proxy.output()

    def test_an_addon_added_after_the_guard_does_not_stream_first(self, start_real, tls_upstream):
        late = Path(__file__).parent / "support" / "late_addon.py"
        proxy = start_real("0", scripts=(late,))
        for _ in range(2):
            reply = post_chat(proxy)
            assert reply.status == 429, reply.body
        assert tls_upstream.total_hits == 0 and tls_upstream.connections == 0

    def test_control_an_admitted_request_still_reaches_the_upstream(self, start_real, tls_upstream):
        proxy = start_real("1", scripts=(STREAM_REQUEST_ADDON,))
        reply = post_chat(proxy)
        assert reply.status == 200, reply.body
        assert tls_upstream.hits["/v1/chat/completions"] == 1


# -- 2. the target named by one name only ---------------------------------------------------------


class TestNames:
    @pytest.mark.parametrize(
        "connect",
        [
            "localhost:443",
            "127.1:443",
            "2130706433:443",
            "0x7f.0.0.1:443",
            "[::1]:443",
            "alias.test:443",
            "api.openai.com.evil.test:443",
            "0.0.0.0:443",
        ],
    )
    def test_another_name_for_the_target_is_refused(self, start_real, tls_upstream, pki, connect):
        proxy = start_real(budget="0")
        reply = post_chat(proxy, connect=connect)
        assert reply.status == 403 and reply.json()["error"]["code"] == "host_names_disagree"
        assert end_to_end_tls(proxy, pki, connect=connect).startswith("failed")
        assert tls_upstream.connections == 0
        control = start_real(budget="1")
        assert post_chat(control).status == 200 and tls_upstream.connections == 1

    def test_a_host_header_for_the_llm_in_a_tunnel_elsewhere_is_refused(self, start_real, tls_upstream):
        proxy = start_real(budget="0")
        reply = post_chat(proxy, connect="allowed.test:443", sni="allowed.test", host="api.openai.com")
        assert reply.status == 403 and reply.json()["error"]["code"] == "host_names_disagree"
        assert tls_upstream.connections == 0

    def test_an_sni_for_another_llm_host_is_refused(self, start_real, tls_upstream):
        proxy = start_real(budget="1")
        reply = post_chat(proxy, sni="api.anthropic.com")
        assert reply.status == 403 and tls_upstream.connections == 0


# -- 3. official hosts and operator hosts ---------------------------------------------------------


class TestHosts:
    def test_data_residency_host_is_metered(self, start_real, tls_upstream):
        proxy = start_real(budget="0")
        reply = post_chat(
            proxy, connect="eu.api.openai.com:443", sni="eu.api.openai.com", host="eu.api.openai.com"
        )
        assert reply.status == 429 and tls_upstream.connections == 0
        control = start_real(budget="1")
        reply = post_chat(
            control, connect="eu.api.openai.com:443", sni="eu.api.openai.com", host="eu.api.openai.com"
        )
        assert reply.status == 200 and tls_upstream.hits["/v1/chat/completions"] == 1

    def test_a_known_unmetered_provider_is_refused(self, start_real, tls_upstream):
        proxy = start_real(budget="1")
        reply = post_chat(
            proxy, connect="api.deepinfra.com:443", sni="api.deepinfra.com", host="api.deepinfra.com"
        )
        assert reply.status == 403 and reply.json()["error"]["code"] == "endpoint_not_metered"
        assert tls_upstream.connections == 0

    def test_an_operator_host_is_metered_at_its_own_price(self, start_real, tls_upstream, tmp_path):
        vllm = [
            {
                "name": "vllm",
                "match": ["vllm.test"],
                "family": "openai",
                "default_price": {"input_mtok": 1000, "output_mtok": 1000},
            }
        ]
        proxy = start_real(budget="0.001", hosts=vllm)
        reply = post_chat(
            proxy, connect="vllm.test:443", sni="vllm.test", host="vllm.test", model="llama-70b"
        )
        assert reply.status == 429 and tls_upstream.connections == 0  # 20 output tokens at $1000/M > $0.001
        control = start_real(budget="1", hosts=vllm)
        reply = post_chat(
            control, connect="vllm.test:443", sni="vllm.test", host="vllm.test", model="llama-70b"
        )
        assert reply.status == 200 and tls_upstream.hits["/v1/chat/completions"] == 1


# -- 4. upgrades ------------------------------------------------------------------------------------


class TestUpgrades:
    @pytest.mark.parametrize(
        "upgrade_lines",
        [
            ["Upgrade: websocket, x-foo"],
            ["Upgrade: x-foo, websocket"],
            ["Upgrade: websocket/13"],
            ["Upgrade: x-foo", "Upgrade: websocket"],
        ],
    )
    def test_every_upgrade_to_an_llm_host_is_refused(self, start_real, tls_upstream, upgrade_lines):
        proxy = start_real(budget="0")
        sock, _ = tunnel(proxy.port, "api.openai.com:443")
        pipe = TLSPipe(sock, "api.openai.com", proxy.ca)
        lines = [
            "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
            *upgrade_lines,
        ]
        pipe.sendall(request_bytes("GET", "/v1/responses", "api.openai.com", extra_lines=lines))
        reply = read_reply(pipe)
        sock.close()
        assert reply.status == 426, reply
        assert tls_upstream.connections == 0
        control = start_real(budget="0")
        sock, _ = tunnel(control.port, "api.openai.com:443")
        pipe = TLSPipe(sock, "api.openai.com", control.ca)
        pipe.sendall(request_bytes("GET", "/v1/models", "api.openai.com"))
        assert read_reply(pipe).status == 200 and tls_upstream.hits["GET /v1/models"] == 1
        sock.close()

    def test_an_h2c_upgrade_never_upgrades(self, start_real, tls_upstream):
        # mitmproxy strips `Upgrade: h2c` before any addon sees it; what is left is a plain request,
        # metered like any other.
        proxy = start_real(budget="0")
        sock, _ = tunnel(proxy.port, "api.openai.com:443")
        pipe = TLSPipe(sock, "api.openai.com", proxy.ca)
        lines = [
            "Connection: Upgrade, HTTP2-Settings",
            "Upgrade: h2c",
            "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
        ]
        pipe.sendall(
            request_bytes("POST", "/v1/chat/completions", "api.openai.com", chat_body(), extra_lines=lines)
        )
        assert read_reply(pipe).status == 429
        sock.close()
        assert tls_upstream.connections == 0


# -- 5. hosts the table does not know, paths a host entry does not know, method overrides ----------


def send(
    proxy: Proxy,
    host: str,
    method: str,
    path: str,
    body: object = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
):
    """CONNECT to `host`, TLS trusting the proxy's CA, one request. Returns the reply."""
    sock, established = tunnel(proxy.port, f"{host}:443")
    assert established.status == 200, established
    pipe = TLSPipe(sock, host, proxy.ca)
    if raw is not None:
        lines = [f"{name}: {value}" for name, value in (headers or {}).items()]
        head = [f"{method} {path} HTTP/1.1", f"Host: {host}", *lines, f"content-length: {len(raw)}"]
        pipe.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + raw)
    else:
        pipe.sendall(request_bytes(method, path, host, body, headers=headers))  # type: ignore[arg-type]
    try:
        return read_reply(pipe)
    finally:
        sock.close()


def ledger_rows(proxy: Proxy) -> list[dict]:
    ledger = Ledger.open(ledgers[proxy.port])
    try:
        return ledger.query("SELECT * FROM requests ORDER BY created_at")
    finally:
        ledger.close()


class TestUnknownHostsAndPaths:
    def test_an_unknown_subdomain_of_a_provider_domain_is_metered_or_refused(self, start_real, tls_upstream):
        proxy = start_real(budget="0")
        assert send(proxy, "jp.api.openai.com", "POST", "/v1/chat/completions", chat_body()).status == 429
        reply = send(
            proxy,
            "generativelanguage.mtls.googleapis.com",
            "POST",
            "/v1beta/models/gemini-2.5-pro:generateContent",
            {
                "contents": [{"parts": [{"text": "hi"}]}],
                "generationConfig": {"maxOutputTokens": 50, "thinkingConfig": {"thinkingBudget": 0}},
            },
        )
        # Gemini's mTLS host is metered as Gemini: refused on the budget, in Google's envelope.
        assert reply.status == 400 and reply.json()["error"]["status"] == "FAILED_PRECONDITION"
        assert tls_upstream.connections == 0
        control = start_real(budget="1")
        assert send(control, "jp.api.openai.com", "POST", "/v1/chat/completions", chat_body()).status == 200
        assert tls_upstream.hits["/v1/chat/completions"] == 1

    @pytest.mark.parametrize(
        ("host", "path"),
        [
            ("chatgpt.com", "/backend-api/conversation"),
            ("chatgpt.com", "/backend-api/f/conversation"),
            ("api.openai.com", "/v2/chat/completions"),
            ("api.openai.com", "/v1/chat/completions/../../v1/batches"),
        ],
    )
    def test_a_path_a_host_entry_does_not_know_is_refused(self, start_real, tls_upstream, host, path):
        proxy = start_real(budget="1")
        reply = send(proxy, host, "POST", path, chat_body())
        assert reply.status == 403 and reply.json()["error"]["code"] == "endpoint_not_metered"
        assert tls_upstream.connections == 0

    @pytest.mark.parametrize(
        ("path", "body", "headers"),
        [
            ("/api/generate", {"model": "llama3", "prompt": "hi"}, {}),  # by body
            ("/x", {"Model": "m", "Messages": [{"role": "user", "content": "hi"}]}, {}),  # any case
            ("/v1/chat/completions", {"anything": 1}, {}),  # by path
            ("/v1beta/models/g:streamGenerateContent", {"contents": []}, {}),  # by path
            ("/v1/messages", {"model": "claude", "max_tokens": 5}, {}),  # a model route with a model
            (
                "/v1/chat/completions",
                gzip.compress(json.dumps(chat_body()).encode()),
                {"content-encoding": "gzip"},
            ),
            # By body, whatever coding it claims: inflated as a server that honours it would,
            # read as sent where a server would ignore the header.
            ("/api/x", gzip.compress(json.dumps(chat_body()).encode()), {"content-encoding": "gzip"}),
            ("/api/x", zlib.compress(json.dumps(chat_body()).encode()), {"content-encoding": "deflate"}),
            ("/api/x", json.dumps(chat_body()).encode(), {"content-encoding": "x-none"}),
            ("/api/x", json.dumps(chat_body()).encode(), {"content-encoding": "gzip"}),  # not gzip at all
        ],
    )
    def test_llm_shaped_traffic_to_an_unknown_host_is_refused(
        self, start_real, tls_upstream, path, body, headers
    ):
        proxy = start_real(budget="0")
        if isinstance(body, bytes):
            reply = send(proxy, "llm.unknown.test", "POST", path, headers=headers, raw=body)
        else:
            reply = send(proxy, "llm.unknown.test", "POST", path, body, headers=headers)
        assert reply.status == 403, reply
        error = reply.json()["error"]
        assert "llm.unknown.test" in error["message"] and "hosts:" in error["message"]
        assert 'match: ["llm.unknown.test"]' in error["message"] and "default_price" in error["message"]
        assert tls_upstream.connections == 0
        [row] = ledger_rows(proxy)
        assert row["state"] == "refused" and row["rule"] == "unknown_llm_host"

    def test_ordinary_json_apis_still_pass(self, start_real, tls_upstream):
        proxy = start_real(budget="0")
        for host, path, body in [
            ("pypi.test", "/pypi", {"methodName": "search", "params": [{"name": "x"}]}),  # XML-RPC-ish JSON
            ("code.test", "/repos/o/r/issues", {"title": "t", "body": "a model and a prompt"}),
            ("code.test", "/graphql", {"query": "{ viewer { login } }", "variables": {}}),
            ("telemetry.test", "/v1/events", {"event": "run", "input": "x", "prompt": "y"}),
        ]:
            reply = send(proxy, host, "POST", path, body)
            assert reply.status == 404, (host, reply)  # the fake upstream's own answer: it got there
            assert tls_upstream.hits[path] == 1
        assert send(proxy, "code.test", "GET", "/repos/o/r").status == 200
        assert ledger_rows(proxy) == []

    def test_meter_meters_unknown_hosts_as_openai_compatible(self, start_real, tls_upstream):
        rules = {"unknown_llm_hosts": "meter", "default_price": {"input_mtok": 1000, "output_mtok": 1000}}
        body = chat_body("llama-70b")
        proxy = start_real(budget="0.001", **rules)  # 20 output tokens at $1000/M > $0.001
        assert send(proxy, "llm.unknown.test", "POST", "/api/v1/chat/completions", body).status == 429
        embed = {"model": "e5", "input": "hi"}
        reply = send(proxy, "llm.unknown.test", "POST", "/v1/embeddings", embed)
        assert reply.status == 403 and "unknown_llm_hosts: meter" in reply.json()["error"]["message"]
        assert tls_upstream.connections == 0
        control = start_real(budget="1", **rules)
        reply = send(control, "llm.unknown.test", "POST", "/v1/chat/completions", body)
        assert reply.status == 200 and tls_upstream.hits["/v1/chat/completions"] == 1
        [row] = [r for r in ledger_rows(control) if r["state"] == "settled"]
        # The upstream bills 11 input and 7 output tokens; at $1000/M each: $0.018.
        assert (row["input_tokens"], row["output_tokens"], row["cost_micro"]) == (11, 7, 18_000)
        assert row["price_source"] == "default_price"

    def test_pass_passes_unknown_hosts(self, start_real, tls_upstream):
        proxy = start_real(budget="0", unknown_llm_hosts="pass")
        assert send(proxy, "llm.unknown.test", "POST", "/v1/chat/completions", chat_body()).status == 200
        assert tls_upstream.hits["/v1/chat/completions"] == 1


class TestMethodOverrides:
    @pytest.mark.parametrize(
        ("path", "headers"),
        [
            ("/v1/chat/completions", {"X-HTTP-Method-Override": "POST"}),
            ("/v1/chat/completions", {"x-http-method": "post"}),
            ("/v1/responses", {"X-Method-Override": "POST"}),
            ("/v1/responses", {"X-Original-Method": "POST"}),
            ("/v1/chat/completions?_method=POST", {}),
            ("/v1/chat/completions?_%6Dethod=POST", {}),  # a name percent-encoded
            ("/v1/chat/completions?x=1;%255fmethod=POST", {}),  # `;`-separated, encoded twice
        ],
    )
    def test_a_get_asking_for_post_is_refused(self, start_real, tls_upstream, path, headers):
        proxy = start_real(budget="0")
        reply = send(proxy, "api.openai.com", "GET", path, headers=headers)
        assert reply.status == 403 and reply.json()["error"]["code"] == "method_override_refused"
        assert tls_upstream.connections == 0
        control = start_real(budget="0")
        assert send(control, "api.openai.com", "GET", "/v1/models").status == 200
        assert tls_upstream.hits["GET /v1/models"] == 1

    def test_a_get_with_a_body_is_refused(self, start_real, tls_upstream):
        proxy = start_real(budget="0")
        reply = send(proxy, "api.openai.com", "GET", "/v1/chat/completions", chat_body())
        assert reply.status == 403 and reply.json()["error"]["code"] == "read_with_body_refused"
        assert tls_upstream.connections == 0


# -- egress firewall ----------------------------------------------------------------------------------


FIREWALL = {"mode": "allowlist", "allow": [{"host": "allowed.test", "ports": [443]}]}


class TestFirewall:
    def test_only_allowed_hosts_are_reachable(self, start_real, tls_upstream):
        proxy = start_real(budget="1", egress=FIREWALL)
        sock, refused = tunnel(proxy.port, "blocked.test:443")
        sock.close()
        assert refused.status == 403
        sock, refused = tunnel(proxy.port, "allowed.test:80")
        sock.close()
        assert refused.status == 403  # the port is not allowed
        assert tls_upstream.connections == 0
        sock, established = tunnel(proxy.port, "allowed.test:443")
        assert established.status == 200
        pipe = TLSPipe(sock, "allowed.test", proxy.ca)
        pipe.sendall(request_bytes("GET", "/simple/", "allowed.test"))
        assert read_reply(pipe).status == 200 and tls_upstream.hits["GET /simple/"] == 1
        sock.close()
        assert post_chat(proxy).status == 200  # LLM hosts: always reachable, and metered

    def test_plain_http_to_a_blocked_host_is_refused(self, start_real, tls_upstream):
        proxy = start_real(budget="1", egress=FIREWALL)
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        sock.sendall(b"GET http://blocked.test/x HTTP/1.1\r\nHost: blocked.test\r\n\r\n")
        reply = read_reply(sock)
        sock.close()
        assert reply.status == 403 and b"egress" in reply.body
        assert tls_upstream.connections == 0

    def test_tricks_do_not_get_through_the_firewall(self, start_real, tls_upstream, pki):
        proxy = start_real(budget="0", egress=FIREWALL)
        # An allowed tunnel whose requests name an LLM host, or a blocked host.
        assert (
            post_chat(proxy, connect="allowed.test:443", sni="allowed.test", host="api.openai.com").status
            == 403
        )
        sock, established = tunnel(proxy.port, "allowed.test:443")
        pipe = TLSPipe(sock, "allowed.test", proxy.ca)
        pipe.sendall(request_bytes("GET", "/", "blocked.test"))
        assert read_reply(pipe).status == 403
        sock.close()
        # A blocked host spelled as an allowed one's address, and raw bytes to the LLM host.
        assert (
            end_to_end_tls(proxy, pki, connect="allowed.test:443", sni="api.openai.com", first_write=1)
            != "reply 200"
        )
        assert end_to_end_tls(proxy, pki, connect="api.openai.com:443", record_version=0x0305) != "reply 200"
        assert tls_upstream.connections == 0


def test_the_shipped_firewall_rules_load():
    from governance import RULES_DIR, policy

    rules = policy.load(RULES_DIR / "firewall.yaml")
    assert rules.egress.mode == "allowlist" and rules.budgets
    assert yaml.safe_load((RULES_DIR / "firewall.yaml").read_text())["egress"]["allow"]


class TestCompressedRequestBodies:
    """A metered request's body is read as its provider reads it, whatever coding it is sent in."""

    @staticmethod
    def send_chat(proxy: Proxy, coding: str, raw: bytes):
        return send(
            proxy,
            "api.openai.com",
            "POST",
            "/v1/chat/completions",
            headers={"content-encoding": coding},
            raw=raw,
        )

    @pytest.mark.parametrize("stream", [False, True])  # streamed: the body is rewritten
    @pytest.mark.parametrize("coding", ["gzip", "br", "zstd", "zstd, gzip"])
    def test_a_compressed_request_is_metered_and_served(self, start_real, tls_upstream, coding, stream):
        import brotli
        from backports import zstd

        encode = {"gzip": gzip.compress, "br": brotli.compress, "zstd": zstd.compress}
        raw = json.dumps({**chat_body(), "stream": stream}).encode()
        for c in coding.split(","):
            raw = encode[c.strip()](raw)
        proxy = start_real(budget="1")
        reply = self.send_chat(proxy, coding, raw)
        assert reply.status == 200, reply
        assert tls_upstream.bodies[-1]["model"] == chat_body()["model"]  # the provider read it
        [row] = ledger_rows(proxy)
        assert row["state"] == "settled" and row["model"] == chat_body()["model"] and row["cost_micro"] > 0

    @pytest.mark.parametrize(
        ("coding", "fragment"),
        [("zstd", "inflates past 32 MiB"), ("x-custom", "not supported"), ("gzip", "not valid gzip")],
    )
    def test_a_body_the_meter_cannot_read_as_sent_is_refused(
        self, start_real, tls_upstream, coding, fragment
    ):
        from backports import zstd

        raw = (
            zstd.compress(b" " * (33 * 1024 * 1024)) if coding == "zstd" else json.dumps(chat_body()).encode()
        )
        reply = self.send_chat(start_real(budget="1"), coding, raw)
        assert reply.status == 400 and fragment in reply.json()["error"]["message"], reply
        assert tls_upstream.connections == 0
