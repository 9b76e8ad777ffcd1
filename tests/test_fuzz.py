"""Property-based fuzzing of the addon: bodies, headers, paths, methods, names and encodings of
each API, through the real hooks and a real ledger.

For every request: no crash (no internal-error 503, nothing logged at ERROR), every refusal is
a ledger row, and what is forwarded to an LLM endpoint is exactly what was admitted. CI runs a
bounded number of examples; `SPENDFUSE_FUZZ_EXAMPLES=10000 ./scripts/test tests/test_fuzz.py`
is the long mode.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from mitmproxy import http
from mitmproxy.test import taddons, tflow, tutils

import addon as addon_module
from governance.gate import Action
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
OTHER_HOSTS = ["pypi.org", "127.1", "2130706433", "localhost", "example.com", "api.openai.com.evil.com"]
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
        "host_header": st.none() | st.sampled_from(LLM_HOSTS + OTHER_HOSTS) | st.just("same"),
        "sni": st.none() | st.sampled_from(LLM_HOSTS[:4]) | st.just("same"),
        "method": st.sampled_from(["POST", "GET", "PUT", "DELETE", "OPTIONS", "CONNECT", "post"]),
        "path": st.sampled_from(PATHS) | st.text(min_size=1, max_size=30).map(lambda t: "/" + t),
        "body": bodies,
        "encoding": st.sampled_from(["", "", "gzip", "deflate", "br", "zstd", "identity", "x-bogus"]),
        "upgrade": st.none() | st.sampled_from(["websocket", "websocket, x-foo", "h2c", "websocket/13"]),
    }
)
# Half the examples aim at a metered endpoint, so that bodies reach the parsers and the estimate.
metered = st.fixed_dictionaries(
    {
        "host": st.sampled_from(["api.openai.com", "api.anthropic.com", "eu.api.openai.com"]),
        "host_header": st.just("same"),
        "sni": st.just("same"),
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
        | api_bodies.map(lambda b: json.dumps(b).encode()),
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
            authority=b"",
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
    verdict = a.engine.screen(a._incoming(flow))
    loop.run_until_complete(a.request(flow))
    answered = flow.response.status_code if flow.response is not None else "forwarded"
    event(f"verdict {verdict.action.value}, answered {answered}")
    rows = ledger_query(a, "SELECT * FROM requests WHERE id = ? OR id LIKE ?", [flow.id, flow.id + "~%"])
    if flow.response is not None:
        if verdict.action is Action.HEALTH:
            return
        assert flow.response.status_code != 503, flow.response.content  # no internal error
        assert flow.response.headers.get("x-should-retry") == "false"
        [row] = rows  # every refusal is recorded, once
        assert row["state"] == "refused" and row["rule"] == flow.response.headers["x-spendfuse-refused"]
        loop.run_until_complete(a.response(flow))  # the proxy's own answer settles nothing
        return
    # Forwarded. Only what was admitted reaches an LLM endpoint, and it holds a reservation.
    if verdict.action is Action.METER:
        [row] = rows
        assert row["state"] == "held" and row["decision"] == "allowed" and row["reserved_micro"] > 0
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
    else:
        assert verdict.action in (Action.PASS, Action.FREE) and rows == []
    assert a._ledger_thread().call_blocking(a.engine.ledger.window_totals, "global", "").held_micro == 0
