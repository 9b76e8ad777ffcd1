"""`governance.gate`: the verdict on a request before any pricing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from governance import policy, shape
from governance.gate import (
    Action,
    Incoming,
    connect_refusal,
    egress_allows,
    exempted_llm_hosts,
    raw_transport_refusal,
    screen,
    upgrade_tokens,
)
from governance.types import RefusalKind
from tests.conftest import write_rules


@pytest.fixture
def rules(tmp_path: Path) -> policy.Policy:
    return policy.load(write_rules(tmp_path / "r.yaml"))


def incoming(
    host="api.openai.com",
    path="/v1/chat/completions",
    method="POST",
    port=443,
    upgrade=(),
    body: object = None,
    headers=(),
    **names: str,
) -> Incoming:
    kinds = {"host_header": "host"}
    all_names = [("url", host)] + [(kinds.get(k, k), v) for k, v in names.items()]
    raw = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    return Incoming(
        method=method,
        path=path,
        port=port,
        names=tuple(all_names),
        upgrade=tuple(upgrade),
        claims=shape.method_claims(method, headers, path),
        has_body=bool(raw),
        body=lambda: raw if raw is not None else b"",
    )


def verdict(rules, *args, **kw):
    return screen(incoming(*args, **kw), rules, policy.host_table(rules.hosts))


def test_health_probe(rules):
    assert verdict(rules, host="spendfuse.invalid", path="/healthz", method="GET").action is Action.HEALTH


def test_metered_free_and_unmetered(rules):
    assert verdict(rules).action is Action.METER
    assert verdict(rules, path="/v1/models", method="GET").action is Action.FREE
    v = verdict(rules, path="/v1/embeddings")
    assert v.action is Action.REFUSE and v.refusal.rule == "unmetered_endpoint"


def test_allow_unmetered_lets_an_endpoint_through(tmp_path):
    rules = policy.load(
        write_rules(
            tmp_path / "r.yaml", allow_unmetered=[{"host": "api.openai.com", "path": "/v1/embeddings"}]
        )
    )
    v = screen(incoming(path="/v1/embeddings"), rules, policy.host_table(rules.hosts))
    assert v.action is Action.FREE and "allow_unmetered" in v.notes


def test_non_llm_traffic_passes_in_open_mode(rules):
    assert verdict(rules, host="pypi.org", path="/simple/").action is Action.PASS


@pytest.mark.parametrize(
    "values",
    [
        ["websocket"],
        ["WebSocket"],
        ["websocket, x-foo"],
        ["x-foo, websocket"],
        ["websocket/13"],
        ["x-foo", "websocket"],
        ["h2c"],
        ["TLS/1.0"],
    ],
)
def test_any_upgrade_to_an_llm_host_is_refused(tmp_path, values):
    # Under `websockets: refuse`; metered WebSockets (the default) are in tests/test_websocket.py.
    rules = policy.load(write_rules(tmp_path / "r.yaml", websockets="refuse"))
    v = verdict(rules, method="GET", path="/v1/responses", upgrade=values)
    assert v.action is Action.REFUSE and v.refusal.kind is RefusalKind.UPGRADE
    expected = "websocket" if any("websocket" in t for t in upgrade_tokens(values)) else "upgrade"
    assert v.refusal.rule == expected


def test_upgrade_tokens_are_a_list():
    assert upgrade_tokens(["websocket, x-foo", " h2c ", ""]) == ["websocket", "x-foo", "h2c"]


def test_names_that_disagree_are_refused_in_the_llm_hosts_envelope(rules):
    v = verdict(rules, host="localhost", sni="api.anthropic.com", host_header="api.anthropic.com")
    assert v.action is Action.REFUSE and v.refusal.rule == "host_mismatch"
    assert v.endpoint.envelope == "anthropic"


class TestEgressAllowlist:
    @pytest.fixture
    def rules(self, tmp_path: Path) -> policy.Policy:
        return policy.load(
            write_rules(
                tmp_path / "r.yaml",
                egress={
                    "mode": "allowlist",
                    "allow": [
                        {"host": "pypi.org", "ports": [443]},
                        {"host": "*.pythonhosted.org"},
                        {"host": "10.0.0.7"},
                    ],
                },
            )
        )

    def test_allowed_hosts_and_ports(self, rules):
        table = policy.host_table(rules.hosts)
        assert egress_allows(rules.egress, table, "pypi.org", 443)
        assert not egress_allows(rules.egress, table, "pypi.org", 80)
        assert egress_allows(rules.egress, table, "files.pythonhosted.org", 8443)
        assert egress_allows(rules.egress, table, "167772167", 22)  # 10.0.0.7, spelled otherwise
        assert not egress_allows(rules.egress, table, "github.com", 443)
        assert egress_allows(rules.egress, table, "api.openai.com", 443)  # LLM hosts: always, metered

    def test_refused_with_a_clear_403(self, rules):
        v = verdict(rules, host="github.com", path="/", method="GET")
        assert (
            v.action is Action.REFUSE
            and v.refusal.rule == "egress"
            and v.refusal.kind is RefusalKind.FORBIDDEN
        )
        assert "github.com:443" in v.refusal.message and "egress.allow" in v.refusal.message

    def test_every_name_must_be_allowed(self, rules):
        # Domain fronting: the destination is allowed, the Host header names another server.
        v = verdict(rules, host="pypi.org", path="/", method="GET", host_header="evil.example")
        assert v.action is Action.REFUSE and v.refusal.rule == "egress"

    def test_llm_hosts_are_metered_not_refused(self, rules):
        assert verdict(rules).action is Action.METER


class TestConnectionsThatAreNotHTTP:
    def test_raw_transport_to_an_llm_host_by_any_name_is_refused(self, rules):
        table = policy.host_table(rules.hosts)
        for names in (["api.openai.com"], ["10.0.0.1", "api.anthropic.com"], ["x.openai.azure.com"]):
            refusal = raw_transport_refusal(names, 443, rules, table, "raw TCP")
            assert refusal is not None and refusal.rule == "raw_transport", names
        assert raw_transport_refusal(["git.example", "1.2.3.4"], 22, rules, table, "raw TCP") is None

    def test_raw_transport_obeys_the_allowlist(self, tmp_path):
        rules = policy.load(
            write_rules(
                tmp_path / "r.yaml",
                egress={"mode": "allowlist", "allow": [{"host": "git.example", "ports": [22]}]},
            )
        )
        table = policy.host_table(rules.hosts)
        assert raw_transport_refusal(["git.example"], 22, rules, table, "raw TCP") is None
        assert raw_transport_refusal(["git.example"], 23, rules, table, "raw TCP").rule == "egress"

    def test_connect(self, tmp_path):
        rules = policy.load(
            write_rules(tmp_path / "r.yaml", egress={"mode": "allowlist", "allow": [{"host": "pypi.org"}]})
        )
        table = policy.host_table(rules.hosts)
        assert connect_refusal(["api.openai.com", "api.openai.com:443"], 443, rules, table) is None
        assert connect_refusal(["pypi.org"], 443, rules, table) is None
        assert connect_refusal(["github.com"], 443, rules, table).rule == "egress"
        assert connect_refusal(["pypi.org", "api.openai.com"], 443, rules, table).rule == "host_mismatch"

    @pytest.mark.parametrize(
        ("options", "fragment"),
        [
            ({"ignore_hosts": [r"api\.openai\.com"]}, "ignore_hosts pattern"),
            ({"ignore_hosts": [".*"]}, "ignore_hosts pattern"),
            ({"tcp_hosts": ["bedrock"]}, "tcp_hosts pattern"),
            ({"udp_hosts": ["anthropic"]}, "udp_hosts pattern"),
            ({"allow_hosts": [r"^api\.(openai|anthropic)\.com:443$"]}, "allow_hosts does not cover"),
        ],
    )
    def test_options_that_exempt_llm_hosts(self, rules, options, fragment):
        problems = exempted_llm_hosts(policy.host_table(rules.hosts), **options)
        assert problems and all(fragment in p for p in problems)

    def test_options_that_leave_llm_hosts_alone(self, rules):
        table = policy.host_table(rules.hosts)
        assert (
            exempted_llm_hosts(table, ignore_hosts=[r"^pinned\.example\.com:443$"], tcp_hosts=["^git\\."])
            == []
        )
        assert exempted_llm_hosts(table, allow_hosts=[".*"]) == []


CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


class TestUnknownHosts:
    """LLM-shaped traffic to a host the table does not know is refused by default."""

    @pytest.mark.parametrize(
        ("host", "path", "body", "envelope"),
        [
            ("llm.example", "/v1/chat/completions", CHAT, "openai"),
            ("foo.openai.com", "/v1/chat/completions", None, "openai"),  # by path alone
            ("api.newcloud.example", "/openai/v1/whatever", CHAT, "openai"),  # by body alone
            ("g.example", "/v1beta/models/gemini-2.5-pro:streamGenerateContent", None, "google"),
            ("a.example", "/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 9}, "anthropic"),
            ("o.example", "/api/generate", {"MODEL": "llama3", "Prompt": "hi"}, "openai"),  # any case
            ("b.example", "/x", [{"id": 1}, {"model": "m", "contents": []}], "openai"),  # a batch
            ("e.example", "/x", b'{"mod\\u0065l": "m", "input": "hi"}', "openai"),  # an escaped key
            (
                "d.example",
                "/x",
                b'{"model": "m", "input": "hi", "pad": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                "openai",
            ),
        ],
    )
    def test_llm_shaped_requests_are_refused_naming_the_host(self, rules, host, path, body, envelope):
        v = verdict(rules, host=host, path=path, body=body)
        assert v.action is Action.REFUSE and v.refusal.rule == "unknown_llm_host", v
        assert v.endpoint.envelope == envelope
        assert host in v.refusal.message and "hosts:" in v.refusal.message
        assert f'match: ["{host}"]' in v.refusal.message and "family:" in v.refusal.message
        assert "default_price" in v.refusal.message

    @pytest.mark.parametrize(
        ("host", "path", "method", "body"),
        [
            ("pypi.org", "/pypi", "POST", {"method": "search", "params": ["x"]}),  # a package index
            ("upload.pypi.org", "/legacy/", "POST", b"--boundary\r\nContent-Disposition: form-data"),
            ("api.github.com", "/repos/o/r/issues", "POST", {"title": "t", "body": "b"}),
            ("api.github.com", "/graphql", "POST", {"query": "{ viewer { login } }"}),
            ("telemetry.example", "/v1/events", "POST", {"event": "run", "input": "x", "prompt": "y"}),
            ("discord.com", "/api/v10/channels/1/messages", "POST", {"content": "hi"}),
            ("api.example", "/v1/chat/completions", "GET", None),  # a read on an unknown host
            ("registry.npmjs.org", "/-/npm/v1/security/advisories/bulk", "POST", {"lodash": ["4.17.0"]}),
        ],
    )
    def test_ordinary_json_apis_still_pass(self, rules, host, path, method, body):
        assert verdict(rules, host=host, path=path, method=method, body=body).action is Action.PASS

    def test_a_body_too_large_to_inspect_counts_as_llm_shaped(self, rules):
        """`body()` is None when the body inflates past the bound (`bodies.as_read`): what it
        holds cannot be known, so a write to an unknown host with one is refused."""

        def unreadable(**kw):
            return screen(
                Incoming("POST", kw["path"], 443, (("url", "x.example"),), has_body=True, body=lambda: None),
                rules,
                policy.host_table(rules.hosts),
            )

        assert unreadable(path="/v1/chat/completions").action is Action.REFUSE
        assert unreadable(path="/v1/messages").action is Action.REFUSE  # a model route, unreadable
        assert unreadable(path="/upload").action is Action.REFUSE

    def test_a_read_that_asks_to_write_is_looked_at(self, rules):
        v = verdict(rules, host="x.example", method="GET", headers=[("X-HTTP-Method-Override", "POST")])
        assert v.action is Action.REFUSE and v.refusal.rule == "unknown_llm_host"
        v = verdict(rules, host="x.example", path="/anything", method="GET", body=CHAT)
        assert v.action is Action.REFUSE and v.refusal.rule == "unknown_llm_host"

    def test_egress_refusal_comes_first(self, tmp_path):
        rules = policy.load(write_rules(tmp_path / "r.yaml", egress={"mode": "allowlist"}))
        assert verdict(rules, host="x.example").refusal.rule == "egress"

    def test_pass_lets_them_through(self, tmp_path):
        rules = policy.load(write_rules(tmp_path / "r.yaml", unknown_llm_hosts="pass"))
        assert verdict(rules, host="llm.example", body=CHAT).action is Action.PASS

    def test_meter_meters_openai_routes_at_the_default_price(self, tmp_path):
        rules = policy.load(
            write_rules(
                tmp_path / "r.yaml",
                unknown_llm_hosts="meter",
                default_price={"input_mtok": 1, "output_mtok": 2},
            )
        )
        v = verdict(rules, host="llm.example", path="/api/v1/chat/completions", body=CHAT)
        assert v.action is Action.METER
        assert (v.endpoint.family, v.endpoint.api, v.endpoint.entry) == ("openai", "chat", "unknown-llm-host")
        assert verdict(rules, host="llm.example", path="/v1/responses", body=CHAT).endpoint.api == "responses"
        free = verdict(rules, host="llm.example", path="/v1/responses/input_tokens", body=CHAT)
        assert free.action is Action.FREE
        # LLM-shaped but no OpenAI route it meters: refused, saying so.
        v = verdict(rules, host="llm.example", path="/v1/embeddings", body={"model": "m", "input": "x"})
        assert v.action is Action.REFUSE and "unknown_llm_hosts: meter" in v.refusal.message
        v = verdict(rules, host="llm.example", path="/v1/chat/completions", method="PUT", body=CHAT)
        assert v.action is Action.REFUSE
        # A method override is refused there as on any LLM host.
        v = verdict(rules, host="llm.example", method="GET", headers=[("x-http-method-override", "POST")])
        assert v.action is Action.REFUSE and v.refusal.rule == "method_override"

    def test_meter_needs_a_default_price(self, tmp_path):
        with pytest.raises(policy.PolicyError, match="default_price"):
            policy.load(write_rules(tmp_path / "r.yaml", unknown_llm_hosts="meter"))


class TestMethodOverrides:
    """On an LLM host a request is judged by the method it asks for, or refused."""

    @pytest.mark.parametrize(
        ("headers", "path"),
        [
            ([("X-HTTP-Method-Override", "POST")], "/v1/chat/completions"),
            ([("x-http-method-override", "post")], "/v1/chat/completions"),
            ([("X-HTTP-Method", "POST")], "/v1/chat/completions"),
            ([("X-Method-Override", "POST")], "/v1/chat/completions"),
            ([("X-Original-Method", "POST")], "/v1/responses"),
            ([("X-Forwarded-Method", "PATCH")], "/v1/responses"),
            ([("X-Whatever-Method", "post")], "/v1/responses"),  # any name, when it names a method
            ([("X-HTTP-Method-Override", "GET, POST")], "/v1/responses"),
            ([], "/v1/chat/completions?_method=POST"),
            ([], "/v1/chat/completions?x=1&_METHOD=post"),
            ([], "/v1/chat/completions?httpMethod=POST"),
        ],
    )
    def test_a_read_asking_for_another_method_is_refused(self, rules, headers, path):
        for host in ("api.openai.com", "generativelanguage.googleapis.com", "eu.api.anthropic.com"):
            v = verdict(rules, host=host, path=path, method="GET", headers=headers)
            assert v.action is Action.REFUSE and v.refusal.rule == "method_override", (host, headers, path)
            assert v.refusal.code == "method_override_refused"

    def test_a_read_with_a_body_is_refused(self, rules):
        v = verdict(rules, path="/v1/chat/completions", method="GET", body=CHAT)
        assert v.action is Action.REFUSE and v.refusal.code == "read_with_body_refused"

    def test_what_is_not_an_override_passes(self, rules):
        assert verdict(rules, method="GET", path="/v1/models").action is Action.FREE
        # The SDKs' own helper header names a helper, not a method; an override naming the
        # request's own method changes nothing.
        for headers in ([("X-Stainless-Helper-Method", "stream")], [("X-HTTP-Method-Override", "POST")]):
            assert verdict(rules, headers=headers).action is Action.METER
        assert verdict(rules, method="GET", path="/v1/models?method=list").action is Action.FREE

    def test_a_post_asking_to_be_a_read_is_refused_too(self, rules):
        v = verdict(rules, headers=[("X-HTTP-Method-Override", "GET")])
        assert v.action is Action.REFUSE and v.refusal.rule == "method_override"
