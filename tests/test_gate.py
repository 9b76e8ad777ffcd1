"""`governance.gate`: the verdict on a request before any pricing."""

from __future__ import annotations

from pathlib import Path

import pytest

from governance import policy
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
    host="api.openai.com", path="/v1/chat/completions", method="POST", port=443, upgrade=(), **names: str
) -> Incoming:
    kinds = {"host_header": "host"}
    all_names = [("url", host)] + [(kinds.get(k, k), v) for k, v in names.items()]
    return Incoming(method=method, path=path, port=port, names=tuple(all_names), upgrade=tuple(upgrade))


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
def test_any_upgrade_to_an_llm_host_is_refused(rules, values):
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
