"""The addon's hooks driven directly with mitmproxy's test helpers (no sockets)."""

from __future__ import annotations

import base64
import json
import ssl
from pathlib import Path

import pytest
from mitmproxy import ctx, exceptions, http
from mitmproxy.proxy import events, layer, layers
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers.http import HTTPMode
from mitmproxy.proxy.layers.tls import parse_client_hello
from mitmproxy.test import taddons, tflow, tutils
from mitmproxy.tls import ClientHelloData

import addon as addon_module
from governance.errors import LedgerUnavailable
from governance.identity import api_key_principal
from governance.ledger import Ledger
from governance.mitm import guard as guard_module
from governance.mitm import translate
from tests.conftest import write_rules


def req(host="api.openai.com", path="/v1/chat/completions", body=None, method="POST", headers=None):
    default = {"model": "gpt-4o", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    # A read has no body unless the test gives it one.
    no_body = body is None and method in ("GET", "HEAD", "OPTIONS")
    content = b"" if no_body else json.dumps(body if body is not None else default).encode()
    h = http.Headers(host=host, content_type="application/json", **(headers or {}))
    flow = tflow.tflow(
        req=tutils.treq(
            host=host,
            port=443,
            scheme=b"https",
            method=method.encode(),
            path=path.encode(),
            authority=b"",
            headers=h,
            content=content,
        )
    )
    flow.client_conn.sni = host  # as a client that CONNECTed to `host` and sent it as SNI
    return flow


def respond(flow, body: dict, status=200):
    flow.response = http.Response.make(status, json.dumps(body), {"content-type": "application/json"})


@pytest.fixture
def fuse(tmp_path: Path):
    a = addon_module.SpendFuse()
    with taddons.context(a) as tctx:
        tctx.configure(
            a, spendfuse_rules=str(write_rules(tmp_path / "r.yaml")), spendfuse_db=str(tmp_path / "l.sqlite")
        )
        yield a, tctx
    a.done()


def rows(a):
    # On the ledger thread: its connection is not shared with the test's thread.
    return a._ledger_thread().call_blocking(a.engine.ledger.query, "SELECT * FROM requests")


class TestConfigure:
    @pytest.mark.parametrize(
        "opt,value",
        [
            ("spendfuse_budget", "ten"),
            ("spendfuse_budget", "-1"),
            ("spendfuse_max_multiplier", "nan"),
            ("spendfuse_dry_run", "2"),
            ("spendfuse_rules", "/nope.yaml"),
        ],
    )
    def test_bad_options_raise(self, fuse, opt, value):
        a, tctx = fuse
        with pytest.raises(exceptions.OptionsError):
            tctx.configure(a, **{opt: value})

    def test_rules_that_enforce_nothing_stop_start_up(self, tmp_path):
        a = addon_module.SpendFuse()
        with taddons.context(a) as tctx:
            rules = write_rules(tmp_path / "r.yaml", budgets=[])
            with pytest.raises(exceptions.OptionsError, match="no limit at all"):
                tctx.configure(a, spendfuse_rules=str(rules), spendfuse_db=str(tmp_path / "l.sqlite"))
            tctx.configure(
                a, spendfuse_rules=str(rules), spendfuse_db=str(tmp_path / "l.sqlite"), spendfuse_budget="2"
            )  # a budget given by option is a limit
        a.done()

    @pytest.mark.parametrize("db", [":memory:", "file::memory:?cache=shared"])
    def test_in_memory_ledgers_stop_start_up(self, tmp_path, db):
        a = addon_module.SpendFuse()
        with taddons.context(a) as tctx, pytest.raises(exceptions.OptionsError, match="memory"):
            tctx.configure(a, spendfuse_rules=str(write_rules(tmp_path / "r.yaml")), spendfuse_db=db)
        a.done()

    def test_the_default_ledger_is_in_the_state_directory(self, tmp_path, monkeypatch):
        monkeypatch.setenv("SPENDFUSE_STATE_DIR", str(tmp_path / "state"))
        monkeypatch.delenv("SPENDFUSE_DB", raising=False)
        a = addon_module.SpendFuse()
        with taddons.context(a) as tctx:
            tctx.configure(a, spendfuse_rules=str(write_rules(tmp_path / "r.yaml")))
            assert a.engine.ledger.path == tmp_path / "state" / "ledger.sqlite"
        a.done()
        assert (tmp_path / "state" / "ledger.sqlite").exists()

    def test_rawtcp_is_forced_off(self, fuse):
        a, tctx = fuse
        assert tctx.options.rawtcp is False
        tctx.configure(a, rawtcp=True)
        assert tctx.options.rawtcp is False

    def test_env_vars_are_option_defaults(self, monkeypatch, tmp_path):
        monkeypatch.setenv("SPENDFUSE_BUDGET", "7.5")
        monkeypatch.setenv("SPENDFUSE_DB", str(tmp_path / "env.sqlite"))
        a = addon_module.SpendFuse()
        with taddons.context(a) as tctx:
            tctx.configure(a)
            assert a.engine.policy.budgets[0].max_usd == 7.5
        a.done()
        assert (tmp_path / "env.sqlite").exists()


class TestRequest:
    async def test_allowed_then_settled(self, fuse):
        a, _ = fuse
        f = req(headers={"x-spendfuse-key": "team-a", "accept-encoding": "gzip"})
        await a.request(f)
        assert f.response is None
        assert (
            "x-spendfuse-key" not in f.request.headers and f.request.headers["accept-encoding"] == "identity"
        )
        assert f.metadata["spendfuse"]["decision"] == "admitted"
        respond(f, {"model": "gpt-4o", "usage": {"prompt_tokens": 11, "completion_tokens": 7}})
        a.responseheaders(f)
        await a.response(f)
        [row] = rows(a)
        assert row["principal"] == "header:team-a" and row["cost_micro"] == 81

    @pytest.mark.parametrize(
        "headers,principal",
        [
            (
                {
                    "Proxy-Authorization": "Basic " + base64.b64encode(b"ci-run-7:x").decode(),
                    "X-Spendfuse-Key": "team-a",
                    "Authorization": "Bearer sk-1",
                },
                "proxy:ci-run-7",
            ),
            ({"X-Spendfuse-Key": " team-a ", "Authorization": "Bearer sk-1"}, "header:team-a"),
            ({"x-goog-api-key": "g-1", "Authorization": "Bearer sk-1"}, "apikey:sk-1"),
            ({"x-api-key": "sk-ant-1", "Authorization": ""}, "apikey:sk-ant-1"),
            ({"Authorization": ""}, "default"),
        ],
    )
    async def test_principal_first_match_wins(self, fuse, headers, principal):
        a, _ = fuse
        f = req(headers=headers)
        await a.request(f)
        if principal.startswith("apikey:"):  # a hash of the key, salted with the ledger's salt
            principal = api_key_principal(principal.removeprefix("apikey:"), a.engine.salt)
        assert f.response is None and f.metadata["spendfuse"]["principal"] == principal
        for name in ("proxy-authorization", "x-spendfuse-key"):  # ours: never forwarded
            assert name not in f.request.headers

    async def test_over_budget_refused_in_envelope(self, fuse):
        a, tctx = fuse
        tctx.configure(a, spendfuse_budget="0.0001")
        f = req()
        await a.request(f)
        assert f.response.status_code == 429
        assert json.loads(f.response.content)["error"]["code"] == "insufficient_quota"
        await a.response(f)  # the addon's own answer is not settled as traffic
        assert [r["state"] for r in rows(a)] == ["refused"]

    async def test_non_llm_and_free_traffic_untouched(self, fuse):
        a, _ = fuse
        other = req(host="example.com", path="/api/items", body={"name": "x", "input": "y"})
        free = req(
            host="api.anthropic.com", path="/v1/messages/count_tokens", body={"model": "x", "messages": []}
        )
        for f in (other, free):
            await a.request(f)
            assert f.response is None
        assert rows(a) == []

    async def test_host_header_cannot_disguise_the_target(self, fuse):
        a, tctx = fuse
        tctx.configure(a, spendfuse_budget="0.0001")
        f = req()
        f.request.headers["host"] = "example.com"
        await a.request(f)
        assert f.response.status_code == 403
        assert json.loads(f.response.content)["error"]["code"] == "host_names_disagree"
        [row] = rows(a)
        assert row["state"] == "refused" and row["rule"] == "host_mismatch"

    @pytest.mark.parametrize(
        "names",
        [
            {"connect": "localhost", "sni": "api.openai.com", "host": "api.openai.com"},
            {"connect": "2130706433", "sni": "api.openai.com", "host": "api.openai.com"},
            {"connect": "evil.example", "sni": "api.openai.com", "host": "evil.example"},
            {"connect": "api.openai.com", "sni": "api.anthropic.com", "host": "api.openai.com"},
            {"connect": "evil.example", "sni": "", "host": "api.anthropic.com"},
        ],
    )
    async def test_any_name_that_is_an_llm_host_makes_it_llm_traffic(self, fuse, names):
        a, tctx = fuse
        tctx.configure(a, spendfuse_budget="0")
        f = req(host=names["connect"])
        f.client_conn.sni = names["sni"] or None
        f.request.headers["host"] = names["host"]
        await a.request(f)
        assert f.response is not None and f.response.status_code == 403
        assert rows(a)[0]["rule"] == "host_mismatch"

    async def test_names_that_agree_in_other_spellings_are_one_host(self, fuse):
        a, tctx = fuse
        f = req(host="API.OpenAI.com.")
        f.request.headers["host"] = "api.openai.com:443"
        await a.request(f)
        assert f.response is None and rows(a)[0]["state"] == "held"

    @pytest.mark.expect_errors("request hook failed")
    async def test_exception_in_the_engine_fails_closed(self, fuse, monkeypatch):
        a, _ = fuse

        def boom(*args, **kw):
            raise RuntimeError("engine bug")

        monkeypatch.setattr(a.engine, "admit", boom)
        f = req()
        await a.request(f)
        assert f.response.status_code == 503
        assert json.loads(f.response.content)["error"]["code"] == "spendfuse_internal_error"
        [row] = rows(a)  # recorded, like every refusal
        assert row["state"] == "refused" and row["rule"] == "internal_error"

    @pytest.mark.expect_errors("ledger unavailable")
    async def test_ledger_failure_is_503(self, fuse, monkeypatch):
        a, _ = fuse

        def down(*args, **kw):
            raise LedgerUnavailable("disk full")

        monkeypatch.setattr(a.engine.ledger, "reserve", down)
        f = req(
            host="api.anthropic.com",
            path="/v1/messages",
            body={"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": []},
        )
        await a.request(f)
        body = json.loads(f.response.content)
        assert (
            f.response.status_code == 503
            and body["type"] == "error"
            and "disk full" in body["error"]["message"]
        )

    async def test_gzip_request_body_is_read(self, fuse):
        a, tctx = fuse
        tctx.configure(a, spendfuse_budget="0.0001")
        f = req()
        f.request.encode("gzip")
        await a.request(f)
        assert f.response.status_code == 429

    async def test_stream_request_gets_include_usage_and_a_tap(self, fuse):
        a, _ = fuse
        f = req(body={"model": "gpt-4o", "max_tokens": 5, "stream": True, "messages": []})
        await a.request(f)
        assert json.loads(f.request.content)["stream_options"] == {"include_usage": True}
        f.response = http.Response.make(200, b"", {"content-type": "text/event-stream"})
        a.responseheaders(f)
        tap = f.response.stream
        chunk = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\ndata: [DONE]\n\n'
        assert tap(chunk) == chunk and tap(b"") == b""
        f.response.content = None
        await a.response(f)
        assert rows(a)[0]["output_tokens"] == 2

    async def test_client_abort_before_usage_charges_the_reservation(self, fuse):
        a, _ = fuse
        f = req()
        await a.request(f)
        f.server_conn.timestamp_tcp_setup = 1.0
        f.server_conn.timestamp_tls_setup = 1.0
        f.error = tflow.terr("Client disconnected.")
        await a.error(f)
        [row] = rows(a)
        assert row["cost_micro"] == row["reserved_micro"] > 0

    async def test_unreachable_upstream_releases(self, fuse):
        a, _ = fuse
        f = req()
        await a.request(f)
        f.server_conn.timestamp_tcp_setup = None
        f.error = tflow.terr("Connection refused")
        await a.error(f)
        assert rows(a)[0]["state"] == "released"

    async def test_replayed_response_cannot_overwrite_a_refusal_nor_cost(self, fuse):
        a, tctx = fuse
        tctx.configure(a, spendfuse_budget="0.0001")
        f = req()
        await a.request(f)
        respond(f, {"usage": {"prompt_tokens": 1, "completion_tokens": 1}})
        f.is_replay = "response"
        await a.response(f)
        assert f.response.status_code == 429

    async def test_health_probe(self, fuse):
        a, _ = fuse
        f = tflow.tflow(
            req=tutils.treq(
                host="spendfuse.invalid",
                port=80,
                scheme=b"http",
                method=b"GET",
                path=b"/healthz",
                authority=b"",
            )
        )
        await a.request(f)
        assert f.response.status_code == 200


class TestEveryExitPath:
    """Whatever way a flow ends, no hold is left behind and the charge is the right one."""

    async def test_server_replay_of_an_allowed_flow_costs_nothing(self, fuse):
        a, _ = fuse
        f = req()
        await a.request(f)
        assert f.response is None
        respond(f, {"model": "gpt-4o", "usage": {"prompt_tokens": 11, "completion_tokens": 7}})
        f.is_replay = "response"
        a.responseheaders(f)
        await a.response(f)
        [row] = rows(a)
        assert row["state"] == "released" and row["cost_micro"] == 0 and row["outcome"] == "replayed"

    async def test_client_replay_is_a_request_of_its_own(self, fuse):
        a, _ = fuse
        first = req()
        await a.request(first)
        respond(first, {"usage": {"prompt_tokens": 11, "completion_tokens": 7}})
        await a.response(first)
        for _ in range(2):
            again = req()
            again.id = first.id  # mitmproxy's client replay re-sends the recorded flow, id and all
            again.is_replay = "request"
            await a.request(again)
            assert again.response is None
            respond(again, {"usage": {"prompt_tokens": 11, "completion_tokens": 7}})
            await a.response(again)
        settled = [r for r in rows(a) if r["state"] == "settled"]
        assert len(settled) == 3 and {r["cost_micro"] for r in settled} == {81}
        assert sum(r["id"] == first.id for r in settled) == 1

    @pytest.mark.expect_errors("could not be forwarded after its reservation")
    async def test_a_failure_after_reserving_releases_the_hold(self, fuse, monkeypatch):
        a, _ = fuse
        f = req(body={"model": "gpt-4o", "max_tokens": 5, "stream": True, "messages": []})

        def broken(self, value):
            raise ValueError("cannot encode")

        monkeypatch.setattr(http.Request, "content", property(lambda self: b"", broken))
        await a.request(f)
        assert f.response.status_code == 503
        [row] = rows(a)
        assert row["state"] == "released" and row["outcome"] == "not forwarded: ValueError"
        assert a._ledger_thread().call_blocking(a.engine.ledger.window_totals, "global", "").held == 0

    @pytest.mark.expect_errors("settling .* failed")
    async def test_a_settlement_that_fails_charges_the_reservation(self, fuse, monkeypatch):
        a, _ = fuse
        f = req()
        await a.request(f)

        def broken(*args, **kw):
            raise TypeError("usage reader bug")

        monkeypatch.setattr(a.engine, "finish", broken)
        respond(f, {"usage": {"prompt_tokens": 11, "completion_tokens": 7}})
        await a.response(f)
        [row] = rows(a)
        assert row["state"] == "settled" and row["cost_micro"] == row["reserved_micro"] > 0

    async def test_clean_shutdown_settles_what_is_in_flight(self, tmp_path):
        a = addon_module.SpendFuse()
        db = tmp_path / "l.sqlite"
        with taddons.context(a) as tctx:
            tctx.configure(a, spendfuse_rules=str(write_rules(tmp_path / "r.yaml")), spendfuse_db=str(db))
            at_upstream, not_sent, streaming = req(), req(), req()
            for f in (at_upstream, not_sent, streaming):
                await a.request(f)
            for f in (at_upstream, streaming):
                f.server_conn.timestamp_tcp_setup = f.server_conn.timestamp_tls_setup = 1.0
            not_sent.server_conn.timestamp_tcp_setup = None
            streaming.response = http.Response.make(200, b"", {"content-type": "text/event-stream"})
            a.responseheaders(streaming)
            streaming.response.stream(
                b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
            )
            a.done()
        led = Ledger.open(db)
        by_id = {r["id"]: r for r in led.query("SELECT * FROM requests")}
        assert by_id[at_upstream.id]["state"] == "settled"
        assert by_id[at_upstream.id]["cost_micro"] == by_id[at_upstream.id]["reserved_micro"]
        assert by_id[not_sent.id]["state"] == "released"
        assert by_id[streaming.id]["state"] == "settled" and by_id[streaming.id]["output_tokens"] == 2
        assert led.window_totals("global", "").held == 0
        led.close()


class TestRefusalsAreRecorded:
    @pytest.mark.parametrize(
        "body",
        [
            {"model": "gpt-4o", "max_tokens": 2**63, "messages": []},
            {"model": "gpt-4o", "max_tokens": 10**30, "messages": []},
            {"model": "gpt-4o", "max_tokens": 5, "n": 2**40, "messages": []},
            {"model": ["gpt-4o"], "max_tokens": 5, "messages": []},
        ],
    )
    async def test_odd_bodies_are_a_clear_400_and_a_row(self, fuse, body):
        a, _ = fuse
        f = req(body=body)
        await a.request(f)
        assert f.response.status_code == 400
        [row] = rows(a)
        assert row["state"] == "refused" and row["rule"] == "request_parse"

    async def test_a_part_whose_type_is_an_object_is_counted_as_text(self, fuse):
        a, _ = fuse
        part = {"type": {"image": "no"}, "text": "hello " * 50}
        f = req(body={"model": "gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": [part]}]})
        await a.request(f)
        assert f.response is None
        [row] = rows(a)
        assert row["state"] == "held" and row["est_input_tokens"] > 50

    @pytest.mark.parametrize("depth", [200, 100_000])
    async def test_deep_json_is_a_clear_400_and_a_row(self, fuse, depth):
        a, _ = fuse
        f = req()
        f.request.content = (
            b'{"model":"gpt-4o","max_tokens":5,"messages":' + b"[" * depth + b"]" * depth + b"}"
        )
        await a.request(f)
        assert (
            f.response.status_code == 400 and "deeper" in json.loads(f.response.content)["error"]["message"]
        )
        assert rows(a)[0]["rule"] == "request_parse"


class TestRewrittenAfterTheDecision:
    """The guard runs after every other addon: a request must still be what spendfuse decided."""

    async def test_a_non_llm_request_turned_into_llm_traffic_is_refused(self, fuse):
        a, _ = fuse
        f = req(host="example.com", path="/api/items", body={"name": "x"})
        f.request.headers["host"] = "example.com"
        await a.request(f)
        assert f.response is None  # not LLM traffic: passed
        f.request.host = "api.openai.com"  # map_remote, a later script...
        f.request.headers["host"] = "api.openai.com"
        await a.guard.request(f)
        assert f.response.status_code == 403 and rows(a)[0]["rule"] == "rewritten"

    async def test_a_metered_body_raised_after_the_reservation_is_refused_and_released(self, fuse):
        a, _ = fuse
        f = req()
        await a.request(f)
        f.request.content = json.dumps({"model": "gpt-4o", "max_tokens": 100_000, "messages": []}).encode()
        await a.guard.request(f)
        assert f.response.status_code == 403
        [row] = rows(a)
        assert row["state"] == "released" and row["outcome"] == "rewritten after admission"

    async def test_a_beta_header_added_after_the_reservation_is_refused(self, fuse):
        a, _ = fuse
        f = req(
            host="api.anthropic.com",
            path="/v1/messages",
            body={"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": []},
        )
        await a.request(f)
        f.request.headers["anthropic-beta"] = "context-1m-2025-08-07"  # modify_headers, a later script
        await a.guard.request(f)
        assert f.response.status_code == 403 and rows(a)[0]["state"] == "released"

    async def test_a_free_count_turned_into_a_billed_call_is_refused(self, fuse):
        a, _ = fuse
        body = {"model": "claude-opus-4-1", "messages": [{"role": "user", "content": "hi"}]}
        f = req(host="api.anthropic.com", path="/v1/messages/count_tokens", body=body)
        await a.request(f)
        assert f.response is None  # free: passed unpriced
        f.request.path = "/v1/messages"  # a later addon rewrites it into a billed call
        f.request.content = json.dumps({**body, "max_tokens": 32000}).encode()
        await a.guard.request(f)
        assert f.response.status_code == 403 and rows(a)[0]["rule"] == "rewritten"

    async def test_a_metered_call_turned_into_another_api_is_refused(self, fuse):
        a, _ = fuse
        f = req()
        await a.request(f)
        f.request.path = "/v1/images/generations"  # unmetered, and never priced
        await a.guard.request(f)
        assert f.response.status_code == 403 and rows(a)[0]["state"] == "released"

    async def test_a_passed_request_rewritten_to_a_host_the_allowlist_refuses_is_refused(self, tmp_path):
        rules = write_rules(
            tmp_path / "r.yaml", egress={"mode": "allowlist", "allow": [{"host": "pypi.org"}]}
        )
        a = addon_module.SpendFuse()
        with taddons.context(a) as tctx:
            tctx.configure(a, spendfuse_rules=str(rules), spendfuse_db=str(tmp_path / "l.sqlite"))
            f = req(host="pypi.org", path="/simple/", method="GET")
            await a.request(f)
            assert f.response is None
            f.request.host = f.request.headers["host"] = "exfil.example"
            await a.guard.request(f)
            assert f.response.status_code == 403
        a.done()

    async def test_a_redirect_to_the_same_host_elsewhere_passes(self, fuse):
        a, _ = fuse
        f = req()
        await a.request(f)
        f.request.host, f.request.port = "127.0.0.1", 8080  # a test harness, a corporate relay
        await a.guard.request(f)
        assert f.response is None and rows(a)[0]["state"] == "held"


def client_hello(sni: str) -> bytes:
    """The bytes of a real ClientHello for `sni`."""
    context = ssl.create_default_context()
    tls = context.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return out.read()


def next_layer_for(address: tuple[str, int], chosen_class, data: bytes = b"", sni: str | None = None):
    client = tflow.tclient_conn()
    client.sni = sni
    context = Context(client, ctx.options)
    context.server.address = address
    nl = layer.NextLayer(context)
    if data:
        nl.events.append(events.DataReceived(client, data))
    nl.layer = chosen_class(context) if chosen_class is not None else None
    return nl


class TestTransportGuard:
    """The guard at the end of the chain, after mitmproxy's NextLayer has chosen a layer."""

    @pytest.mark.parametrize(
        "name", ["api.openai.com", "x.openai.azure.com", "bedrock-runtime.us-east-1.amazonaws.com"]
    )
    @pytest.mark.parametrize("raw", [layers.TCPLayer, layers.UDPLayer])
    def test_raw_layers_toward_llm_hosts_are_replaced_by_a_closed_one(self, fuse, name, raw):
        a, _ = fuse
        nl = next_layer_for((name, 443), raw)
        a.guard.next_layer(nl)
        assert isinstance(nl.layer, guard_module._Refused) and "LLM API" in nl.layer.reason

    def test_a_raw_layer_named_by_its_client_hello_is_refused(self, fuse):
        a, _ = fuse
        nl = next_layer_for(("alias.example", 443), layers.TCPLayer, data=client_hello("api.anthropic.com"))
        a.guard.next_layer(nl)
        assert isinstance(nl.layer, guard_module._Refused)

    def test_raw_layers_elsewhere_are_left_alone_in_open_mode(self, fuse):
        a, _ = fuse
        nl = next_layer_for(("git.example", 22), layers.TCPLayer, data=b"SSH-2.0-x\r\n")
        a.guard.next_layer(nl)
        assert isinstance(nl.layer, layers.TCPLayer)

    def test_the_first_bytes_of_a_tls_record_are_waited_for(self, fuse):
        a, _ = fuse
        nl = next_layer_for(
            ("api.openai.com", 443), lambda c: layers.HttpLayer(c, HTTPMode.transparent), data=b"\x16"
        )
        a.guard.next_layer(nl)
        assert nl.layer is None

    def test_a_tls_passthrough_of_an_llm_host_is_intercepted_instead(self, fuse):
        a, _ = fuse
        hello = parse_client_hello(client_hello("api.openai.com"))
        client = tflow.tclient_conn()
        context = Context(client, ctx.options)
        context.server.address = ("alias.example", 443)
        data = ClientHelloData(context, hello, ignore_connection=True)
        a.guard.tls_clienthello(data)
        assert data.ignore_connection is False
        other = ClientHelloData(
            context, parse_client_hello(client_hello("pinned.example")), ignore_connection=True
        )
        a.guard.tls_clienthello(other)
        assert other.ignore_connection is True

    def test_a_raw_tcp_flow_to_an_llm_host_never_connects(self, fuse):
        a, _ = fuse
        flow = tflow.ttcpflow()
        flow.server_conn.address = ("api.openai.com", 443)
        a.guard.tcp_start(flow)
        assert flow.server_conn.error and "LLM API" in flow.server_conn.error

    async def test_an_unadmitted_websocket_to_an_llm_host_passes_no_message(self, fuse):
        a, _ = fuse
        flow = tflow.twebsocketflow()
        flow.request.host = "api.openai.com"
        flow.request.headers["host"] = "api.openai.com"
        flow.client_conn.sni = "api.openai.com"
        a.guard.websocket_start(flow)
        await a.guard.websocket_message(flow)
        assert flow.websocket.messages[-1].dropped
        a.guard.websocket_end(flow)

    @pytest.mark.expect_errors("was deleted")
    async def test_a_deleted_ledger_refuses_with_503(self, fuse, tmp_path):
        a, _ = fuse
        path = a.engine.ledger.path
        for suffix in ("", "-wal", "-shm"):
            path.with_name(path.name + suffix).unlink(missing_ok=True)
        f = req()
        await a.request(f)
        assert (
            f.response.status_code == 503
            and "was deleted" in json.loads(f.response.content)["error"]["message"]
        )


def test_proxy_user_parsing():
    import base64

    token = base64.b64encode(b"team-a:secret").decode()
    assert translate.proxy_credentials(f"Basic {token}")[0] == "team-a"
    assert translate.proxy_credentials("Basic !!!") is None and translate.proxy_credentials(None) is None


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "gpt-4o", "max_tokens": 100000, "max_tokens": 1, "messages": []}',
        b'{"model": "o1-pro", "model": "gpt-4o-mini", "max_tokens": 5, "messages": []}',
        b'{"model": "gpt-4o", "max_tokens": 5, "messages": [{"content": "a", "content": "b"}]}',
    ],
)
async def test_a_repeated_json_key_is_refused_not_guessed(fuse, raw):
    # Parsers disagree on which copy wins; the provider must not see a cap or model not priced.
    a, _ = fuse
    f = req()
    f.request.content = raw
    await a.request(f)
    assert (
        f.response.status_code == 400
        and "repeats the key" in json.loads(f.response.content)["error"]["message"]
    )
    assert rows(a)[0]["rule"] == "request_parse"


async def test_a_key_bound_to_a_listener_is_the_client_arriving_there(tmp_path):
    """A sandbox given its own port is that key with no secret: the listener is the mode's own
    port (`regular@8101`), never the address the client dialled."""
    from mitmproxy.proxy import mode_specs

    from governance.scopes import secret_hash

    rules = write_rules(
        tmp_path / "r.yaml",
        version=2,
        budgets=[{"id": "run", "max_usd": 1}],
        keys=[
            {"id": "run-1", "listeners": ["8101"], "budgets": ["run"]},
            {"id": "named", "secret_sha256": secret_hash("s"), "listeners": ["regular@8102"]},
        ],
        require_key=True,
    )
    a = addon_module.SpendFuse()
    with taddons.context(a) as tctx:
        tctx.configure(a, spendfuse_rules=str(rules), spendfuse_db=str(tmp_path / "l.sqlite"))
        seen = {}
        for spec in ("regular@8101", "regular@8102", "regular@8103"):
            f = req()
            f.client_conn.proxy_mode = mode_specs.ProxyMode.parse(spec)
            f.client_conn.sockname = ("127.0.0.1", 8101)  # what the client dialled: not the listener
            await a.request(f)
            seen[spec] = f.response.status_code if f.response else f.metadata["spendfuse"]["principal"]
        assert seen == {"regular@8101": "key:run-1", "regular@8102": "key:named", "regular@8103": 401}
    a.done()


async def test_dry_run_meters_a_client_it_would_refuse_for_its_identity(tmp_path):
    from governance.scopes import secret_hash

    rules = write_rules(
        tmp_path / "r.yaml",
        version=2,
        budgets=[{"id": "all", "max_usd": 1}],
        keys=[{"id": "k", "secret_sha256": secret_hash("s")}],
        require_key=True,
        **{"global": {"budgets": ["all"]}},
    )
    a = addon_module.SpendFuse()
    with taddons.context(a) as tctx:
        tctx.configure(
            a, spendfuse_rules=str(rules), spendfuse_db=str(tmp_path / "l.sqlite"), spendfuse_dry_run="true"
        )
        f = req(headers={"x-spendfuse-key": "wrong"})
        await a.request(f)
        assert f.response is None and f.metadata["spendfuse"]["principal"] == "unidentified"
        assert "x-spendfuse-key" not in f.request.headers
        [row] = rows(a)
        assert row["state"] == "held" and row["counters"] == "global:all"
    a.done()
