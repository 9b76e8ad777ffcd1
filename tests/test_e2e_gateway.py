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

from tests.support.gateway import free_port, gateway, gateway_port, raw
from tests.support.rawclient import chat_body, request_bytes
from tests.test_e2e import micro, rows
from tests.test_e2e_governance import KEYS
from tests.test_e2e_governance import rules as v2_rules


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
