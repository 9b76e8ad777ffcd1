"""Key custody end to end: a real mitmdump holds the provider keys, the agent's SDKs hold only a
virtual key, and the fake provider (which answers 401 to any key it does not accept) records
exactly which credentials each request reached it with. The real keys appear nowhere else: not
in the log, the ledger, a saved flow, a response, or `spendfuse status`."""

from __future__ import annotations

import os
import re
import ssl
import subprocess
import threading
import time
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from mitmproxy import io as mitmio

from governance.scopes import secret_hash
from tests.support.proxy import BIN, Proxy
from tests.test_e2e_governance import ledger_rows, rules

REAL_OA = "sk-proj-REALopenaiCUSTODY0001"
REAL_OA2 = "sk-proj-REALopenaiCUSTODY0002"
REAL_AN = "sk-ant-api03-REALanthropicCUSTODY"
REALS = (REAL_OA, REAL_OA2, REAL_AN)
VIRTUAL = "sk-proxy"  # the seed harness's virtual key: the bearer the agent already sends
PINNED = "sk-pinned-virtual"
ENV = {"OA_REAL": REAL_OA, "OA2_REAL": REAL_OA2}
CHAT = {"model": "gpt-4o", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}


def custody_rules(tmp_path: Path, **extra: object) -> Path:
    keyfile = tmp_path / "anthropic.key"
    keyfile.write_text(REAL_AN + "\n")
    return rules(
        tmp_path / "r.yaml",
        budgets=[{"id": "all", "max_usd": 1}],
        **{"global": {"budgets": ["all"]}},
        keys=[
            {"id": "agent", "secret_sha256": secret_hash(VIRTUAL)},
            {"id": "pinned", "secret_sha256": secret_hash(PINNED), "credentials": ["oa2"]},
        ],
        credentials=[
            {"id": "oa", "provider": "openai", "env": "OA_REAL"},
            {"id": "oa2", "provider": "openai", "env": "OA2_REAL"},
            {"id": "an", "provider": "anthropic", "file": str(keyfile)},
        ],
        **extra,
    )


def raw_client(proxy: Proxy, *, user: str | None = None, secret: str | None = None) -> httpx.Client:
    host = proxy.url.removeprefix("http://")
    url = f"http://{user}:{secret}@{host}" if user else proxy.url
    return httpx.Client(proxy=url, verify=ssl.create_default_context(cafile=str(proxy.ca)), timeout=20)


def sdk_http(proxy: Proxy) -> httpx.Client:
    return raw_client(proxy)


def assert_nowhere(blob: bytes | str, where: str) -> None:
    data = blob.encode() if isinstance(blob, str) else blob
    for real in REALS:
        assert real.encode() not in data, f"a real key in {where}"


def test_sdks_with_a_virtual_key_reach_the_provider_with_the_custody_key_only(
    start, upstream, client_env, monkeypatch, tmp_path
):
    saved = tmp_path / "flows.mitm"
    upstream.knobs.accepted_keys = frozenset(REALS)
    proxy = start(rules=custody_rules(tmp_path), env=ENV, save_stream_file=str(saved), flow_detail="3")
    client_env(proxy)
    monkeypatch.setenv("OPENAI_API_KEY", VIRTUAL)
    monkeypatch.setenv("ANTHROPIC_API_KEY", VIRTUAL)
    oa = openai.OpenAI(max_retries=0)
    an = anthropic.Anthropic(max_retries=0)
    answers: list[httpx.Response] = []
    raw = oa.chat.completions.with_raw_response.create(**CHAT)
    answers.append(raw.http_response)
    assert raw.parse().usage.completion_tokens == 7
    stream = oa.chat.completions.create(**CHAT, stream=True, stream_options={"include_usage": True})
    assert [c.usage.completion_tokens for c in stream if c.usage] == [7]
    msg = an.messages.with_raw_response.create(
        model="claude-sonnet-4-5", max_tokens=20, messages=[{"role": "user", "content": "hi"}]
    )
    answers.append(msg.http_response)
    assert msg.parse().usage.output_tokens == 7
    with an.messages.stream(
        model="claude-sonnet-4-5", max_tokens=20, messages=[{"role": "user", "content": "hi"}]
    ) as s:
        assert s.get_final_message().usage.output_tokens == 7
    # A free read (the model list) is served with the custody key too.
    assert [m.id for m in oa.models.list()] == ["gpt-4o"]

    by_path = [(what, presented) for what, presented in upstream.auth]
    assert [w for w, _ in by_path] == [
        "/v1/chat/completions",
        "/v1/chat/completions",
        "/v1/messages",
        "/v1/messages",
        "GET /v1/models",
    ]
    for what, presented in by_path:
        if "messages" in what:
            assert presented == {"x-api-key": REAL_AN}
        else:
            assert presented in (
                {"authorization": f"Bearer {REAL_OA}"},
                {"authorization": f"Bearer {REAL_OA2}"},
            )
    rows = ledger_rows(
        tmp_path / "ledger.sqlite", "SELECT principal, state FROM requests ORDER BY created_at"
    )
    assert [(r["principal"], r["state"]) for r in rows] == [("key:agent", "settled")] * 4

    # The real keys appear nowhere the operator or the agent can read.
    for r in answers:
        assert_nowhere(r.content, "a response body")
        assert_nowhere(str(r.headers), "response headers")
    status = subprocess.run(
        [
            str(BIN / "spendfuse"),
            "status",
            "--db",
            str(tmp_path / "ledger.sqlite"),
            "--rules",
            str(tmp_path / "r.yaml"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **ENV},
        check=True,
    )
    assert re.search(r"settled\s+4\s", status.stdout)
    assert_nowhere(status.stdout + status.stderr, "spendfuse status")
    proxy.stop()
    log = proxy.output()
    assert "custody: optional, oa (openai), oa2 (openai), an (anthropic)" in log
    assert "<spendfuse custody key 'an'>" in log  # flow_detail=3 printed the request headers, redacted
    assert_nowhere(log, "the proxy's log")
    for db in tmp_path.glob("ledger.sqlite*"):
        assert_nowhere(db.read_bytes(), db.name)
    assert_nowhere(saved.read_bytes(), "the saved flows")
    with saved.open("rb") as f:
        flows = list(mitmio.FlowReader(f).stream())
    sent = [
        f.request.headers.get("authorization") or f.request.headers.get("x-api-key")
        for f in flows
        if f.request.path != "/health"
    ]
    assert len(sent) == 5
    assert set(sent) <= {
        "Bearer <spendfuse custody key 'oa'>",
        "Bearer <spendfuse custody key 'oa2'>",
        "<spendfuse custody key 'an'>",
    }


def test_keys_are_chosen_by_weight_among_those_the_key_may_use(start, upstream, tmp_path):
    upstream.knobs.accepted_keys = frozenset(REALS)
    proxy = start(rules=custody_rules(tmp_path), env=ENV)
    url = "https://api.openai.com/v1/chat/completions"
    with raw_client(proxy) as c:
        for _ in range(20):
            assert c.post(url, json=CHAT, headers={"authorization": f"Bearer {VIRTUAL}"}).status_code == 200
        for _ in range(5):
            assert c.post(url, json=CHAT, headers={"authorization": f"Bearer {PINNED}"}).status_code == 200
    used = [p["authorization"].removeprefix("Bearer ") for _, p in upstream.auth]
    # Equal weights: both keys serve the agent (all 20 on one key has probability 2^-19).
    assert set(used[:20]) == {REAL_OA, REAL_OA2}
    # A key allowed only `oa2` is always sent with it.
    assert used[20:] == [REAL_OA2] * 5


def test_custody_required_refuses_a_stray_key_and_serves_the_rest(start, upstream, tmp_path):
    upstream.knobs.accepted_keys = frozenset(REALS)
    proxy = start(rules=custody_rules(tmp_path, custody="required"), env=ENV)
    stray = openai.OpenAI(
        api_key="sk-proj-some-real-key-the-agent-found", max_retries=0, http_client=sdk_http(proxy)
    )
    with pytest.raises(openai.AuthenticationError) as refused:
        stray.chat.completions.create(**CHAT)
    assert refused.value.status_code == 401 and "custody: required" in refused.value.message
    assert refused.value.response.headers["x-spendfuse-code"] == "custody_required"
    assert upstream.total_hits == 0
    url = "https://api.openai.com/v1/chat/completions"
    # Known by proxy credentials or a key header, with no provider key: the custody key is sent.
    with raw_client(proxy, user="agent", secret=VIRTUAL) as c:
        assert c.post(url, json=CHAT).status_code == 200
    with raw_client(proxy) as c:
        assert c.post(url, json=CHAT, headers={"x-spendfuse-key": PINNED}).status_code == 200
        # Google's `key=` query parameter is a provider key too.
        refused_query = c.post(url + "?key=AIza-stray", json=CHAT, headers={"x-spendfuse-key": PINNED})
        assert refused_query.status_code == 401
    sent = [p for _, p in upstream.auth]
    assert len(sent) == 2 and sent[0]["authorization"] in (f"Bearer {REAL_OA}", f"Bearer {REAL_OA2}")
    assert sent[1] == {"authorization": f"Bearer {REAL_OA2}"}  # the pinned key's only credential
    rows = ledger_rows(tmp_path / "ledger.sqlite", "SELECT rule, state FROM requests ORDER BY created_at")
    assert [(r["rule"], r["state"]) for r in rows] == [
        ("custody", "refused"),
        (None, "settled"),
        (None, "settled"),
        ("custody", "refused"),
    ]


def test_a_custody_key_is_never_sent_to_a_host_the_agent_chose(start, upstream, tmp_path):
    """The agent points requests at hosts it controls: an operator host of another provider, an
    unknown host metered as OpenAI-compatible. Nothing reaches them with a custody key."""
    evil = [{"name": "evil", "match": ["llm.evil.test"], "family": "openai", "provider": "openai"}]
    proxy = start(
        rules=custody_rules(
            tmp_path,
            hosts=evil,
            unknown_llm_hosts="meter",
            default_price={"input_mtok": 1, "output_mtok": 1},
        ),
        env=ENV,
    )
    virtual = {"authorization": f"Bearer {VIRTUAL}"}
    with raw_client(proxy) as c:
        for host in ("llm.evil.test", "llm.unknown.test"):
            refused = c.post(f"https://{host}/v1/chat/completions", json=CHAT, headers=virtual)
            assert refused.status_code == 403
            assert refused.json()["error"]["code"] == "no_custody_key"
            assert "never sent to a provider" in refused.json()["error"]["message"]
        # Plain HTTP to the provider's own host: a key would cross the network in cleartext.
        plain = c.post("http://api.openai.com/v1/chat/completions", json=CHAT, headers=virtual)
        assert plain.status_code == 403 and plain.json()["error"]["code"] == "custody_needs_tls"
        assert upstream.total_hits == 0
        # Known otherwise, with no key: forwarded (the operator's host), but with no custody key.
        sent = c.post(
            "https://llm.evil.test/v1/chat/completions", json=CHAT, headers={"x-spendfuse-key": VIRTUAL}
        )
        assert sent.status_code == 200
        # A Host header naming another host than the tunnel is refused before any key is chosen.
        mismatch = c.post(
            "https://api.openai.com/v1/chat/completions",
            json=CHAT,
            headers={**virtual, "host": "llm.evil.test"},
        )
        assert mismatch.status_code == 403, mismatch.text
        assert mismatch.json()["error"]["code"] != "no_custody_key"
    assert upstream.auth == [("/v1/chat/completions", {})]
    proxy.stop()
    assert_nowhere(proxy.output(), "the proxy's log")


def test_a_flow_in_flight_at_shutdown_is_saved_redacted(start, upstream, tmp_path):
    saved = tmp_path / "flows.mitm"
    upstream.knobs.delay_s = 5
    proxy = start(rules=custody_rules(tmp_path), env=ENV, save_stream_file=str(saved))
    errors: list[BaseException] = []

    def send() -> None:
        try:
            with raw_client(proxy) as c:
                c.post(
                    "https://api.openai.com/v1/chat/completions", json=CHAT, headers={"x-api-key": VIRTUAL}
                )
        except httpx.HTTPError as e:
            errors.append(e)

    t = threading.Thread(target=send)
    t.start()
    deadline = time.monotonic() + 10
    while not upstream.auth and time.monotonic() < deadline:
        time.sleep(0.02)
    assert upstream.auth and upstream.auth[0][1]["authorization"] in (
        f"Bearer {REAL_OA}",
        f"Bearer {REAL_OA2}",
    )
    proxy.stop()
    t.join(10)
    assert errors  # the proxy went away before the answer
    assert_nowhere(saved.read_bytes(), "the saved flows")
    with saved.open("rb") as f:
        [flow] = list(mitmio.FlowReader(f).stream())
    assert flow.request.headers["authorization"].startswith("Bearer <spendfuse custody key 'oa")


@pytest.mark.parametrize(
    ("credential", "expected"),
    [
        (
            {"id": "oa", "provider": "openai", "env": "NOT_SET_ANYWHERE"},
            "credential 'oa': the environment variable NOT_SET_ANYWHERE is not set",
        ),
        (
            {"id": "an", "provider": "anthropic", "file": "/nonexistent/key"},
            "credential 'an': cannot read the key file /nonexistent/key",
        ),
    ],
)
def test_a_key_that_cannot_be_read_stops_the_proxy(start, tmp_path, credential, expected):
    path = rules(tmp_path / "r.yaml", allow_unlimited=True, credentials=[credential])
    with pytest.raises(RuntimeError) as failed:
        start(rules=path, env={"UNRELATED": REAL_OA})
    assert expected in str(failed.value)
    assert_nowhere(str(failed.value), "the start-up error")


def test_the_providers_token_counter_is_asked_with_the_custody_key(
    start, upstream, client_env, monkeypatch, tmp_path
):
    """Near Sonnet 4.5's 200,000-token price tier the proxy asks Anthropic's free counter (see
    test_e2e_pricing): with the custody key the request itself is sent with."""
    upstream.knobs.accepted_keys = frozenset(REALS)
    upstream.knobs.prompt_tokens, upstream.knobs.completion_tokens = 185_000, 100
    proxy = start(rules=custody_rules(tmp_path, prices={}), env=ENV)
    client_env(proxy)
    monkeypatch.setenv("ANTHROPIC_API_KEY", VIRTUAL)
    anthropic.Anthropic(max_retries=0).messages.create(
        model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "word " * 185_000}]
    )
    assert upstream.auth == [
        ("/v1/messages/count_tokens", {"x-api-key": REAL_AN}),
        ("/v1/messages", {"x-api-key": REAL_AN}),
    ]


def test_custody_keys_need_verified_upstreams(start, tmp_path):
    with pytest.raises(RuntimeError) as failed:
        start(rules=custody_rules(tmp_path), env=ENV, ssl_insecure="true")
    assert "refuses ssl_insecure with custody keys" in str(failed.value)


@pytest.mark.expect_errors("edited rules were NOT applied")
def test_a_reload_with_an_unreadable_key_keeps_the_old_rules_and_keys(start, upstream, tmp_path):
    upstream.knobs.accepted_keys = frozenset(REALS)
    path = custody_rules(tmp_path)
    proxy = start(rules=path, env=ENV)
    url = "https://api.openai.com/v1/chat/completions"
    with raw_client(proxy) as c:
        assert c.post(url, json=CHAT, headers={"authorization": f"Bearer {PINNED}"}).status_code == 200
        # The pinned key's credential now reads a variable that is not set: the edit is refused.
        path.write_text(path.read_text().replace("env: OA2_REAL", "env: OA2_ROTATED"))
        deadline = time.monotonic() + 10
        while "NOT applied" not in proxy.output():
            assert time.monotonic() < deadline, proxy.output()
            time.sleep(0.1)
        assert "credential 'oa2': the environment variable OA2_ROTATED is not set" in proxy.output()
        assert c.post(url, json=CHAT, headers={"authorization": f"Bearer {PINNED}"}).status_code == 200
    assert [p for _, p in upstream.auth] == [{"authorization": f"Bearer {REAL_OA2}"}] * 2


def test_a_request_abandoned_by_its_client_is_saved_redacted(start, upstream, tmp_path):
    """The client gives up while the provider is still thinking: mitmproxy reports the flow's
    error, and Save writes it at once. The key in it is already redacted."""
    saved = tmp_path / "flows.mitm"
    upstream.knobs.delay_s = 2
    proxy = start(rules=custody_rules(tmp_path), env=ENV, save_stream_file=str(saved))
    with raw_client(proxy) as c, pytest.raises(httpx.ReadTimeout):
        c.post(
            "https://api.openai.com/v1/chat/completions",
            json=CHAT,
            headers={"authorization": f"Bearer {VIRTUAL}"},
            timeout=0.5,
        )
    deadline = time.monotonic() + 10
    while b"spendfuse custody key" not in (saved.read_bytes() if saved.exists() else b""):
        assert time.monotonic() < deadline, "the abandoned flow was never saved"
        time.sleep(0.1)
    assert_nowhere(saved.read_bytes(), "the saved flows")
    with saved.open("rb") as f:
        [flow] = list(mitmio.FlowReader(f).stream())
    assert flow.error is not None and flow.response is None
    assert upstream.auth[0][1]["authorization"].removeprefix("Bearer ") in (REAL_OA, REAL_OA2)
