"""Property-based fuzzing of the addon: bodies, headers, paths, methods, names and encodings of
each API, through the real hooks and a real ledger.

For every request: no crash (no internal-error 503, nothing logged at ERROR), every refusal is
a ledger row, and what is forwarded to an LLM endpoint is exactly what was admitted. The oracle
is the spec, not spendfuse's own `screen`: a request any of whose names (CONNECT target, SNI,
Host, :authority, the URL's host) is an LLM API host, by the list written here, is refused or
forwarded with a reservation, unless the spec calls it free (a GET, HEAD or OPTIONS, or the
provider's token counter); and the body the upstream receives is the client's, as admitted, with
only the changes the README documents. CI runs a bounded number of examples;
`SPENDFUSE_FUZZ_EXAMPLES=10000 ./scripts/test tests/test_fuzz.py` is the long mode.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from mitmproxy import http
from mitmproxy.test import taddons, tflow, tutils

import addon as addon_module
from tests.conftest import write_rules

EXAMPLES = int(os.environ.get("SPENDFUSE_FUZZ_EXAMPLES", "300"))

LLM_HOSTS = [
    "api.openai.com",
    "API.OPENAI.COM.",
    "eu.api.openai.com",
    "api.anthropic.com",
    "api.deepinfra.com",
    "x.openai.azure.com",
    "bedrock-runtime.us-east-1.amazonaws.com",
    "generativelanguage.googleapis.com",
]
OTHER_HOSTS = [
    "pypi.org",
    "127.1",
    "2130706433",
    "localhost",
    "example.com",
    "api.openai.com.evil.com",
    "openai.com.example",
]
# Names a client may give an LLM host: a port, odd case, a trailing dot.
SPELLINGS = ["api.openai.com:443", "Api.Anthropic.Com", "api.anthropic.com.:443", "[::1]"]

# The oracle's LLM API hosts, from the providers' documentation, written here rather than read from
# rules/hosts.yaml: exact names and the provider whose API each serves, then name patterns whose
# every match is an API endpoint (Azure OpenAI resources, Bedrock's regional endpoints).
LLM_API_HOSTS = {
    "api.openai.com": "openai",
    "eu.api.openai.com": "openai",
    "us.api.openai.com": "openai",
    "api.anthropic.com": "anthropic",
    "generativelanguage.googleapis.com": "google",
    "aiplatform.googleapis.com": "google",
    "api.deepinfra.com": "deepinfra",
    "openrouter.ai": "openrouter",
    "api.groq.com": "groq",
    "api.mistral.ai": "mistral",
    "api.deepseek.com": "deepseek",
    "api.x.ai": "xai",
}
LLM_API_PATTERNS = [
    (re.compile(r"^[a-z0-9-]+\.openai\.azure\.com$"), "azure"),
    (re.compile(r"^bedrock(-runtime)?(-fips)?\.[a-z0-9-]+\.amazonaws\.com$"), "bedrock"),
    (re.compile(r"^[a-z0-9-]+-aiplatform\.googleapis\.com$"), "google"),
]
# Free by the spec: methods that bill nothing, and each provider's free input-token counter.
FREE_METHODS = {"GET", "HEAD", "OPTIONS"}
FREE_COUNTERS = {"openai": "/v1/responses/input_tokens", "anthropic": "/v1/messages/count_tokens"}
# The output caps each API reads, for the check that the forwarded cap is within the reservation.
CAP_FIELDS = {
    "chat": ("max_tokens", "max_completion_tokens"),
    "completions": ("max_tokens",),
    "responses": ("max_output_tokens",),
    "messages": ("max_tokens",),
}
PATHS = [
    "/v1/chat/completions",
    "/v1//chat/completions/",
    "/V1/Responses?x=1",
    "/v1/responses",
    "/v1/completions",
    "/v1/messages",
    "/v1/messages?beta=true",
    "/v1/messages/count_tokens",
    "/v1/responses/input_tokens",
    "/v1/embeddings",
    "/v1/models",
    "/",
    "/v1/chat%2Fcompletions",
    "/v1/foo/../responses",
    "/backend-api/codex/responses",
]
MODELS = ["gpt-4o", "claude-sonnet-4-5", "gpt-4o-mini", "claude-opus-4-1", "no-such-model", "", " gpt-4o "]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=25,
)
parts = st.fixed_dictionaries(
    {
        # Part types as the APIs name them, and as an adversary might: any JSON, containers too.
        "type": st.sampled_from(["text", "image_url", "input_image", "image", "document", "input_file"])
        | st.dictionaries(st.text(max_size=5), json_values, max_size=2)
        | st.lists(json_values, max_size=2)
        | json_values
    },
    optional={
        "text": json_values,
        "image_url": json_values,
        "source": json_values,
        "cache_control": json_values,
    },
)
messages = (
    st.lists(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["user", "system", "assistant"]) | json_values},
            optional={"content": st.text(max_size=200) | st.lists(parts, max_size=3) | json_values},
        ),
        max_size=4,
    )
    | json_values
)
api_bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(MODELS) | json_values,
        "max_tokens": st.integers(min_value=-5, max_value=2**64) | json_values,
        "max_completion_tokens": st.integers(min_value=0, max_value=5000),
        "max_output_tokens": st.integers(min_value=0, max_value=5000) | json_values,
        "n": st.integers(min_value=-1, max_value=300) | json_values,
        "stream": st.booleans() | json_values,
        "messages": messages,
        "input": st.text(max_size=200) | messages,
        "system": st.text(max_size=100) | json_values,
        "tools": json_values,
        "stream_options": json_values,
        "prompt": st.text(max_size=100) | st.lists(st.text(max_size=20), max_size=3) | json_values,
    },
)
bodies = st.one_of(
    api_bodies.map(lambda b: json.dumps(b).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.integers(min_value=1, max_value=3000).map(
        lambda d: b'{"model":"gpt-4o","messages":' + b"[" * d + b"]" * d + b"}"
    ),
)
anything = st.fixed_dictionaries(
    {
        "host": st.sampled_from(LLM_HOSTS + OTHER_HOSTS),
        "host_header": st.none() | st.sampled_from(LLM_HOSTS + OTHER_HOSTS + SPELLINGS) | st.just("same"),
        "sni": st.none() | st.sampled_from(LLM_HOSTS[:4] + OTHER_HOSTS[:2]) | st.just("same"),
        "authority": st.none() | st.sampled_from(LLM_HOSTS + OTHER_HOSTS + SPELLINGS) | st.just("same"),
        "connect": st.none() | st.sampled_from(LLM_HOSTS + OTHER_HOSTS) | st.just("same"),
        "method": st.sampled_from(["POST", "GET", "PUT", "DELETE", "OPTIONS", "CONNECT", "post"]),
        "path": st.sampled_from(PATHS) | st.text(min_size=1, max_size=30).map(lambda t: "/" + t),
        "body": bodies,
        "encoding": st.sampled_from(["", "", "gzip", "deflate", "br", "zstd", "identity", "x-bogus"]),
        "upgrade": st.none() | st.sampled_from(["websocket", "websocket, x-foo", "h2c", "websocket/13"]),
    }
)


# A key given twice: parsers disagree on which copy wins, so the upstream may read another model,
# cap or stream flag than the one priced.
def _twice(key: str, first: object, second: object, nested: bool) -> bytes:
    if nested:
        return (
            '{"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": '
            f'[{{"role": "user", "content": "a", "content": {json.dumps(second)}}}]}}'
        ).encode()
    base = '{"model": "gpt-4o-mini", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]'
    return (
        f"{base}, {json.dumps(key)}: {json.dumps(first)}, {json.dumps(key)}: {json.dumps(second)}}}".encode()
    )


duplicated = st.builds(
    _twice,
    st.sampled_from(["model", "max_tokens", "max_completion_tokens", "max_output_tokens", "stream", "n"]),
    st.sampled_from(["gpt-4o-mini", "claude-opus-4-1", 10, 5000, True, 1]),
    st.sampled_from(["claude-opus-4-1", "gpt-4o", 100000, 1, False, 50]),
    st.booleans(),
)
# Half the examples aim at a metered endpoint, so that bodies reach the parsers and the estimate.
metered = st.fixed_dictionaries(
    {
        "host": st.sampled_from(["api.openai.com", "api.anthropic.com", "eu.api.openai.com"]),
        "host_header": st.just("same"),
        "sni": st.just("same"),
        "authority": st.none(),
        "connect": st.none() | st.just("same"),
        "method": st.just("POST"),
        "path": st.sampled_from(["/v1/chat/completions", "/v1/responses", "/v1/completions", "/v1/messages"]),
        "body": st.builds(
            lambda body, model, cap, msgs: json.dumps(
                {**body, "model": model, "max_tokens": cap, "messages": msgs, "input": msgs}
            ).encode(),
            api_bodies,
            st.sampled_from(["gpt-4o", "claude-sonnet-4-5", "gpt-4o-mini"]),
            st.integers(min_value=1, max_value=4096),
            st.lists(
                st.fixed_dictionaries(
                    {"role": st.just("user"), "content": st.lists(parts, min_size=1, max_size=3)}
                ),
                min_size=1,
                max_size=3,
            ),
        )
        | api_bodies.map(lambda b: json.dumps(b).encode())
        | duplicated,
        "encoding": st.sampled_from(["", "gzip", "br", "zstd", "deflate"]),
        "upgrade": st.none(),
    }
)
requests = st.one_of(metered, anything)


def ledger_query(a: addon_module.SpendFuse, sql: str, params: list) -> list[dict]:
    """Read the ledger on its own thread: its connection is the ledger thread's alone."""
    return a._ledger_thread().call_blocking(a.engine.ledger.query, sql, params)


def make_flow(spec: dict) -> http.HTTPFlow:
    headers = http.Headers(content_type="application/json")
    host_header = spec["host"] if spec["host_header"] == "same" else spec["host_header"]
    if host_header is not None:
        headers["host"] = host_header
    if spec["upgrade"]:
        headers["upgrade"] = spec["upgrade"]
        headers["connection"] = "upgrade"
    flow = tflow.tflow(
        req=tutils.treq(
            host=spec["host"],
            port=443,
            scheme=b"https",
            method=spec["method"].encode(),
            path=spec["path"].encode(),
            authority=(spec["host"] if spec["authority"] == "same" else spec["authority"] or "").encode(),
            headers=headers,
            content=spec["body"],
        )
    )
    flow.client_conn.sni = spec["host"] if spec["sni"] == "same" else spec["sni"]
    if spec["encoding"] in ("gzip", "deflate", "br", "zstd", "identity"):
        flow.request.encode(spec["encoding"])
    elif spec["encoding"]:
        flow.request.headers["content-encoding"] = spec["encoding"]
    return flow


def canonical(name: str) -> str:
    """A host name as the oracle compares it: no port, no brackets, lower case, no trailing dot."""
    name = name.strip().lower()
    if name.startswith("["):
        return name[1 : name.find("]")] if "]" in name else name
    if name.count(":") == 1:
        name = name.split(":", 1)[0]
    return name.rstrip(".")


def llm_provider(name: str) -> str | None:
    """The provider whose API `name` is, by the oracle's list; None for any other host."""
    host = canonical(name)
    if host in LLM_API_HOSTS:
        return LLM_API_HOSTS[host]
    return next((provider for pattern, provider in LLM_API_PATTERNS if pattern.match(host)), None)


def names_of(spec: dict, flow: http.HTTPFlow) -> list[str]:
    """Every name the request gives its target: CONNECT, SNI, Host, :authority, the URL's host."""
    names = [flow.request.host, *flow.request.headers.get_all("host")]
    if flow.request.authority:
        names.append(flow.request.authority)
    if flow.client_conn.sni:
        names.append(flow.client_conn.sni)
    if spec["connect"] is not None:
        names.append(spec["host"] if spec["connect"] == "same" else spec["connect"])
    return names


def free_by_spec(method: str, path: str, providers: set[str]) -> bool:
    """Whether the spec lets this request through unmetered: it bills nothing at any provider."""
    if method in FREE_METHODS:
        return True
    if method != "POST" or len(providers) != 1:
        return False
    counter = FREE_COUNTERS.get(next(iter(providers)))
    # As a lenient server would route it: decoded, slashes collapsed, dot segments resolved.
    # (Slashes collapse after the leading one is added: POSIX normpath keeps a leading `//`.)
    route = posixpath.normpath(re.sub(r"/+", "/", "/" + unquote(path.split("?", 1)[0].split("#", 1)[0])))
    return counter is not None and route.lower().rstrip("/") == counter


class DuplicateKey(ValueError):
    pass


def strict_json(raw: bytes) -> Any:
    """JSON as no parser could read two ways: a repeated key raises `DuplicateKey`."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in items]
        if len(set(keys)) != len(keys):
            raise DuplicateKey(keys)
        return dict(items)

    return json.loads(raw, object_pairs_hook=pairs)


def assert_forwarded_as_admitted(spec: dict, flow: http.HTTPFlow, row: dict) -> None:
    """The body the upstream receives is the client's, parsed the same by every reader, with only
    the changes the README documents (`stream_options.include_usage` switched on for an OpenAI
    stream), for the model priced and within the output cap reserved."""
    sent = strict_json(flow.request.get_content(strict=True))  # decoded as the upstream decodes it
    admitted = strict_json(spec["body"])  # what the client sent, which spendfuse priced
    assert isinstance(sent, dict) and isinstance(admitted, dict)
    changed = {k for k in sent.keys() | admitted.keys() if sent.get(k, ...) != admitted.get(k, ...)}
    assert changed <= {"stream_options"}, changed
    if changed:
        assert admitted.get("stream") is True and row["provider"] == "openai"
        options = sent["stream_options"]
        assert isinstance(options, dict) and options.get("include_usage") is True
        before = admitted.get("stream_options") or {}
        assert {k: v for k, v in options.items() if k != "include_usage"} == {
            k: v for k, v in before.items() if k != "include_usage"
        }
    model = sent.get("model")
    assert row["model"] == (model.strip() if isinstance(model, str) else model)  # the model priced
    caps = [sent.get(f) for f in CAP_FIELDS.get(row["api"], ())]
    caps = [c for c in caps if isinstance(c, int) and not isinstance(c, bool)]
    assert all(c <= row["max_output_tokens"] for c in caps), (caps, row["max_output_tokens"])


def connect_first(a: addon_module.SpendFuse, loop, spec: dict, flow: http.HTTPFlow) -> http.HTTPFlow | None:
    """The CONNECT that opened the request's tunnel, when it has one, through the CONNECT hook."""
    if spec["connect"] is None:
        return None
    target = spec["host"] if spec["connect"] == "same" else spec["connect"]
    tunnel = tflow.tflow(
        req=tutils.treq(method=b"CONNECT", host=target, port=443, scheme=b"", path=b"", authority=b"")
    )
    tunnel.client_conn = flow.client_conn
    loop.run_until_complete(a.http_connect(tunnel))
    return tunnel


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory):
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    a = addon_module.SpendFuse()
    with taddons.context(a) as tctx:
        tctx.configure(
            a,
            spendfuse_rules=str(write_rules(tmp / "r.yaml")),
            spendfuse_db=str(tmp / "l.sqlite"),
            spendfuse_budget="1000000",
        )
        yield a, tctx.master.event_loop
    a.done()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(spec=requests)
def test_every_request_is_decided_recorded_and_never_crashes(fuzzed, spec):
    a, loop = fuzzed
    flow = make_flow(spec)
    providers = {p for p in map(llm_provider, names_of(spec, flow)) if p is not None}
    tunnel = connect_first(a, loop, spec, flow)
    try:
        if tunnel is not None and tunnel.response is not None:
            event(f"llm {bool(providers)}: tunnel refused {tunnel.response.status_code}")
            assert 400 <= tunnel.response.status_code < 500 and tunnel.response.status_code != 407
            return
        loop.run_until_complete(a.request(flow))
        if flow.response is None:
            loop.run_until_complete(a.guard.request(flow))  # the check at the end of the addon chain
    finally:
        a.client_disconnected(flow.client_conn)
    rows = ledger_query(a, "SELECT * FROM requests WHERE id = ? OR id LIKE ?", [flow.id, flow.id + "~%"])
    answered = flow.response.status_code if flow.response is not None else "forwarded"
    event(f"llm {bool(providers)}: {answered}{' metered' if rows and flow.response is None else ''}")
    if flow.response is not None:
        assert flow.response.status_code != 503, flow.response.content  # no internal error
        assert flow.response.headers.get("x-should-retry") == "false"
        [row] = rows  # every refusal is recorded, once
        assert row["state"] == "refused" and row["rule"] == flow.response.headers["x-spendfuse-refused"]
        loop.run_until_complete(a.response(flow))  # the proxy's own answer settles nothing
        return
    if not rows:
        # Forwarded without a reservation: only traffic that is not for an LLM API, or free by the spec.
        assert not providers or free_by_spec(flow.request.method, flow.request.path, providers), (
            providers,
            flow.request.method,
            flow.request.path,
        )
        return
    # Forwarded with a reservation: exactly what was admitted reaches the upstream.
    [row] = rows
    assert row["state"] == "held" and row["decision"] == "allowed" and row["reserved_micro"] > 0
    assert_forwarded_as_admitted(spec, flow, row)
    flow.response = http.Response.make(
        200,
        json.dumps(
            {"usage": {"prompt_tokens": 3, "completion_tokens": 2, "input_tokens": 3, "output_tokens": 2}}
        ),
        {"content-type": "application/json"},
    )
    a.responseheaders(flow)
    loop.run_until_complete(a.response(flow))
    [row] = ledger_query(a, "SELECT * FROM requests WHERE id = ?", [row["id"]])
    assert row["state"] == "settled"
    assert a._ledger_thread().call_blocking(a.engine.ledger.window_totals, "global", "").held == 0
