"""The addon's hooks driven directly with mitmproxy's test helpers (no sockets)."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from mitmproxy import exceptions, http
from mitmproxy.test import taddons, tflow, tutils

import addon as addon_module
from governance.errors import LedgerUnavailable
from tests.conftest import write_rules


def req(host="api.openai.com", path="/v1/chat/completions", body=None, method="POST", headers=None):
    content = json.dumps(
        body
        if body is not None
        else {"model": "gpt-4o", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    h = http.Headers(host=host, content_type="application/json", **(headers or {}))
    return tflow.tflow(
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
    return a.engine.ledger.query("SELECT * FROM requests")


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

    def test_env_vars_are_option_defaults(self, monkeypatch, tmp_path):
        monkeypatch.setenv("SPENDFUSE_BUDGET", "7.5")
        monkeypatch.setenv("SPENDFUSE_DB", str(tmp_path / "env.sqlite"))
        a = addon_module.SpendFuse()
        with taddons.context(a) as tctx:
            tctx.configure(a)
            assert a.engine.policy.budgets[0].limit_usd == 7.5
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
        assert f.metadata["spendfuse"]["decision"] == "allowed"
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
            (
                {"x-goog-api-key": "g-1", "Authorization": "Bearer sk-1"},
                "key:" + hashlib.sha256(b"sk-1").hexdigest()[:12],
            ),
            (
                {"x-api-key": "sk-ant-1", "Authorization": ""},
                "key:" + hashlib.sha256(b"sk-ant-1").hexdigest()[:12],
            ),
            ({"Authorization": ""}, "default"),
        ],
    )
    async def test_principal_first_match_wins(self, fuse, headers, principal):
        a, _ = fuse
        f = req(headers=headers)
        await a.request(f)
        assert f.response is None and f.metadata["spendfuse"]["principal"] == principal

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
        other = req(host="example.com")
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
        assert f.response.status_code == 429

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


def test_proxy_user_parsing():
    import base64

    token = base64.b64encode(b"team-a:secret").decode()
    assert addon_module._proxy_user(f"Basic {token}") == "team-a"
    assert addon_module._proxy_user("Basic !!!") is None and addon_module._proxy_user(None) is None
