"""Claude on Vertex AI (`:rawPredict`, `:streamRawPredict`): the Anthropic family with the model
in the path, the client's own OAuth token kept, and regional endpoints priced 10% above global."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from governance import regional
from governance.errors import RequestParseError
from governance.families import anthropic
from governance.types import RequestLine, Usage

BASE = "/v1/projects/p-1/locations/us-east5/publishers/anthropic/models"
BODY = {
    "anthropic_version": "vertex-2023-10-16",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "hi"}],
}


@pytest.mark.parametrize(
    ("path", "model"),
    [
        (f"{BASE}/claude-sonnet-4-5@20250929:rawPredict", "claude-sonnet-4-5@20250929"),
        (f"{BASE}/claude-sonnet-4-5%4020250929:streamRawPredict?alt=sse", "claude-sonnet-4-5@20250929"),
        (f"{BASE}/claude-opus-4-1@20250805:rawpredict", "claude-opus-4-1@20250805"),
    ],
)
def test_the_model_is_the_paths(path, model):
    parsed = anthropic.parse_request("raw_predict", BODY, RequestLine(path))
    assert (parsed.model, parsed.max_output_tokens) == (model, 64)


def test_a_body_naming_another_model_is_refused():
    line = RequestLine(f"{BASE}/claude-3-5-haiku@20241022:rawPredict")
    with pytest.raises(RequestParseError, match="path only"):
        anthropic.parse_request("raw_predict", {**BODY, "model": "claude-opus-4-1@20250805"}, line)
    assert anthropic.parse_request("raw_predict", {**BODY, "model": "claude-3-5-haiku@20241022"}, line)


def test_a_path_naming_no_model_is_refused():
    with pytest.raises(RequestParseError):
        anthropic.parse_request("raw_predict", BODY, RequestLine(f"{BASE}/:rawPredict"))


def test_no_key_is_ever_put_into_a_vertex_request():
    assert anthropic.auth("google") is None and anthropic.auth("anthropic") is not None
    assert anthropic.count_request("raw_predict", BODY) is None


@pytest.mark.parametrize(
    ("model", "host", "uplifted"),
    [
        ("claude-sonnet-4-5@20250929", "us-east5-aiplatform.googleapis.com", True),
        (
            "claude-sonnet-4-5-20250929",
            "europe-west1-aiplatform.googleapis.com",
            True,
        ),  # as the answer names it
        ("claude-sonnet-4-5@20250929", "aiplatform.googleapis.com", False),  # the global endpoint
        ("claude-opus-4-1@20250805", "us-east5-aiplatform.googleapis.com", False),  # older than the premium
        ("claude-opus-4-20250514", "us-east5-aiplatform.googleapis.com", False),
        ("gemini-2.5-pro", "us-east5-aiplatform.googleapis.com", False),  # not a Claude model
    ],
)
def test_a_regional_endpoint_costs_ten_percent_more_for_newer_claude_models(model, host, uplifted):
    found = regional.shipped().uplift("google", model, host, None, reserving=False)
    assert (found is not None and found.name == "vertex-claude-regional-endpoint") == uplifted


FIX = Path(__file__).parent / "fixtures" / "vertex"


def test_a_vertex_request_and_its_answers_read_as_vertex_bills_them():
    request = json.loads((FIX / "raw_predict_request.json").read_text())
    path = f"{BASE}/claude-sonnet-4-5@20250929:streamRawPredict"
    parsed = anthropic.parse_request("raw_predict", request, RequestLine(path))
    assert (parsed.model, parsed.max_output_tokens, parsed.stream) == (
        "claude-sonnet-4-5@20250929",
        1024,
        True,
    )
    assert parsed.cache_write_hint == "5m"  # the system block asks for a cache write
    whole = anthropic.usage_from_body(
        "raw_predict", json.loads((FIX / "raw_predict_response.json").read_text())
    )
    assert whole == Usage(2062, 9, 0, 2048, model="claude-sonnet-4-5-20250929")
    stream = (FIX / "stream_raw_predict.sse").read_bytes()
    for cut in range(1, len(stream)):
        reader = anthropic.stream_reader("raw_predict")
        reader.feed(stream[:cut])
        reader.feed(stream[cut:])
        reader.close()
        assert reader.usage is not None and (reader.usage.input_tokens, reader.usage.output_tokens) == (
            2062,
            9,
        )
        assert reader.usage.cache_read_tokens == 2048
