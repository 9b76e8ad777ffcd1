"""`governance.mitm.recording` and `governance.mitm.notes`: a flow file read back as records."""

from __future__ import annotations

import json
from pathlib import Path

from mitmproxy import io
from mitmproxy.test import tflow

from governance.mitm import notes
from governance.mitm.recording import Reading
from governance.simulation import Recorded, Unreadable
from governance.types import Usage

CHAT = {"model": "gpt-4o", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}


def chat_flow(*, answer: dict | None = None, metadata: dict | None = None):
    flow = tflow.tflow(resp=answer is not None)
    flow.request.method, flow.request.scheme, flow.request.port = "POST", "https", 443
    flow.request.host = flow.request.host_header = flow.client_conn.sni = "api.openai.com"
    flow.request.path = "/v1/chat/completions"
    flow.request.headers["content-type"] = "application/json"
    flow.request.headers["authorization"] = "Bearer sk-caller"
    flow.request.content = json.dumps(CHAT).encode()
    if answer is not None:
        flow.response.headers["content-type"] = "application/json"
        flow.response.content = json.dumps(answer).encode()
    flow.metadata.update(metadata or {})
    return flow


def write(path: Path, flows) -> Path:
    with path.open("wb") as f:
        writer = io.FlowWriter(f)
        for flow in flows:
            writer.add(flow)
    return path


def test_a_flow_becomes_the_engines_facts(tmp_path):
    answered = chat_flow(answer={"usage": {"prompt_tokens": 3, "completion_tokens": 4}})
    (rec,) = Reading(write(tmp_path / "f.mitm", [answered])).records()
    assert isinstance(rec, Recorded)
    assert rec.flow_id == answered.id and rec.body == CHAT and rec.response is not None
    assert json.loads(rec.response.body)["usage"]["completion_tokens"] == 4
    assert ("url", "api.openai.com") in rec.incoming.names and rec.incoming.method == "POST"
    assert rec.creds.api_key == "sk-caller" and rec.line.path == "/v1/chat/completions"
    assert rec.started.timestamp() == answered.request.timestamp_start and rec.ended >= rec.started


def test_what_a_spendfuse_proxy_noted_stands_in_for_what_it_stripped(tmp_path):
    streamed = chat_flow(answer={}, metadata={})
    notes.note_usage(
        streamed, Usage(input_tokens=30, output_tokens=7, cache_read_tokens=10, model="gpt-4o-2024")
    )
    streamed.metadata["spendfuse"]["principal"] = "key:team-a"
    refused = chat_flow(
        answer={"error": {"message": "spendfuse: over budget"}},
        metadata={"spendfuse": {"decision": "refused"}},
    )
    first, second = Reading(write(tmp_path / "f.mitm", [streamed, refused])).records()
    assert first.usage == Usage(input_tokens=30, output_tokens=7, cache_read_tokens=10, model="gpt-4o-2024")
    assert first.principal == "key:team-a"
    # spendfuse's own refusal is not an upstream's answer: under other rules it would have run.
    assert second.response is None and second.reached


def test_a_stream_with_no_usage_notes_nothing():
    flow = chat_flow()
    notes.note_usage(flow, None)
    assert "spendfuse" not in flow.metadata


def test_flows_of_other_protocols_are_counted_and_a_broken_file_is_named(tmp_path):
    path = write(tmp_path / "f.mitm", [chat_flow(), tflow.ttcpflow(), chat_flow()])
    path.write_bytes(path.read_bytes() + b"\x00garbage that is not a flow")
    reading = Reading(path)
    records = list(reading.records())
    assert [type(r) for r in records] == [Recorded, Recorded, Unreadable]
    assert reading.other == 1 and records[-1].flow_id == "#4"
    assert reading.read_bytes > 0


def test_a_flow_whose_body_is_not_json_carries_why(tmp_path):
    flow = chat_flow()
    flow.request.content = b"{not json"
    (rec,) = Reading(write(tmp_path / "f.mitm", [flow])).records()
    assert isinstance(rec, Recorded) and isinstance(rec.body, Exception)
