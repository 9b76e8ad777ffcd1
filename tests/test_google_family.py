"""The Google family: requests as the Gemini API, Vertex and Code Assist take them, usage as Google
bills it, and streams (SSE and JSON arrays) read at any byte split."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from governance.errors import RequestParseError
from governance.families import google
from governance.families.jsonarray import JsonArrayReader
from governance.families.tap import StreamTap
from governance.types import UNBOUNDED, RequestLine

FIXTURES = Path(__file__).parent / "fixtures" / "google"
CONTENTS = [{"role": "user", "parts": [{"text": "hi"}]}]


def line(path: str) -> RequestLine:
    return RequestLine(path)


# -- requests ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "model"),
    [
        ("/v1beta/models/gemini-2.5-Pro:generateContent", "gemini-2.5-Pro"),
        ("/v1/models/gemini-2.5-flash:streamGenerateContent?alt=sse&key=k", "gemini-2.5-flash"),
        ("/v1beta/tunedModels/my-tuned-7:generateContent", "my-tuned-7"),
        ("/v1beta/models/gemini%2D2.5-pro:generateContent", "gemini-2.5-pro"),
        # The model the path resolves to, as it was routed and as the upstream reads it.
        (
            "/v1beta/models/cheap:generateContent/../../models/gemini-2.5-pro:generateContent",
            "gemini-2.5-pro",
        ),
        ("/v1beta//models/./gemini-2.5-pro:generateContent/", "gemini-2.5-pro"),
        (
            "/v1/projects/p/locations/global/publishers/google/models/gemini-2.5-pro:generateContent",
            "gemini-2.5-pro",
        ),
    ],
)
def test_the_model_is_the_one_in_the_path_case_kept_and_decoded(path, model):
    body = {"model": "gemini-2.0-flash-lite", "contents": CONTENTS}  # a cheaper model in the body is ignored
    assert google.parse_request("generate", body, line(path)).model == model


def test_code_assist_names_its_model_in_the_body_and_wraps_the_request():
    body = {
        "model": "models/gemini-2.5-pro",
        "project": "p",
        "request": {"contents": CONTENTS, "generationConfig": {"candidateCount": 2}},
    }
    parsed = google.parse_request("assist_stream", body, line("/v1internal:streamGenerateContent?alt=sse"))
    assert (parsed.model, parsed.stream, parsed.choices) == ("gemini-2.5-pro", True, 2)
    with pytest.raises(RequestParseError):
        google.parse_request("assist_generate", {"model": "gemini-2.5-pro", "contents": CONTENTS})


@pytest.mark.parametrize(
    ("config", "bound"),
    [
        ({"maxOutputTokens": 100, "thinkingConfig": {"thinkingBudget": 0}}, 100),
        ({"maxOutputTokens": 100, "thinkingConfig": {"thinkingBudget": 900}}, 1000),
        # Thinking the request does not bound: the model's own output limit is the bound.
        ({"maxOutputTokens": 100}, None),
        ({"maxOutputTokens": 100, "thinkingConfig": {"thinkingBudget": -1}}, None),
        ({"maxOutputTokens": 100, "thinkingConfig": {"thinkingLevel": "high", "thinkingBudget": 10}}, None),
        ({"thinkingConfig": {"thinkingBudget": 0}}, None),
        ({}, None),
    ],
)
def test_the_output_bound_covers_thinking(config, bound):
    body = {"contents": CONTENTS, "generationConfig": config}
    assert (
        google.parse_request("generate", body, line("/v1beta/models/m:generateContent")).max_output_tokens
        == bound
    )


@pytest.mark.parametrize(
    "config",
    [
        {"maxOutputTokens": -1},
        {"maxOutputTokens": True},
        {"candidateCount": 9},
        {"candidateCount": 0},
        {"thinkingConfig": {"thinkingBudget": "lots"}},
        {"thinkingConfig": []},
    ],
)
def test_a_config_it_cannot_bound_is_refused(config):
    body = {"contents": CONTENTS, "generationConfig": config}
    with pytest.raises(RequestParseError):
        google.parse_request("generate", body, line("/v1beta/models/m:generateContent"))


def test_a_request_without_contents_or_model_is_refused():
    with pytest.raises(RequestParseError):
        google.parse_request("generate", {"contents": []}, line("/v1beta/models/m:generateContent"))
    with pytest.raises(RequestParseError):
        google.parse_request("generate", {"contents": CONTENTS}, line("/v1beta/models:generateContent"))


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"cachedContent": "cachedContents/abc"}, "cached content"),
        (
            {"contents": [{"role": "user", "parts": [{"fileData": {"fileUri": "gs://b/v.mp4"}}]}]},
            "file by URI",
        ),
        ({"tools": [{"googleSearch": {}}]}, "server tool"),
    ],
)
def test_input_kept_on_googles_side_is_named(extra, reason):
    body = {"contents": CONTENTS, **extra}
    parsed = google.parse_request("generate", body, line("/v1beta/models/m:generateContent"))
    assert parsed.server_input is not None and reason in parsed.server_input
    plain = google.parse_request(
        "generate",
        {"contents": CONTENTS, "tools": [{"functionDeclarations": []}]},
        line("/v1beta/models/m:x"),
    )
    assert plain.server_input is None


def test_an_inline_image_is_priced_as_an_image_not_as_its_base64():
    part = {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo" * 1000}}
    body = {"contents": [{"role": "user", "parts": [{"text": "what is it"}, part]}]}
    parsed = google.parse_request("generate", body, line("/v1beta/models/m:generateContent"))
    parts = parsed.prompt[0][0]["parts"]
    assert parts[0] == {"text": "what is it"} and parts[1]["type"] == "image"
    assert body["contents"][0]["parts"][1] is part  # the client's body is not changed


def test_the_output_cap_goes_into_the_wrapped_request_for_code_assist():
    body = {"model": "gemini-2.5-pro", "request": {"contents": CONTENTS, "generationConfig": {"topK": 3}}}
    capped = google.with_output_cap("assist_generate", body, 321)
    assert capped["request"]["generationConfig"] == {"topK": 3, "maxOutputTokens": 321}
    assert capped["model"] == "gemini-2.5-pro" and body["request"]["generationConfig"] == {"topK": 3}


def test_the_counter_of_each_api_is_its_countTokens_in_its_own_shape():
    body = {"contents": CONTENTS, "systemInstruction": {"parts": [{"text": "s"}]}, "generationConfig": {}}
    path, counted = google.counter_request(
        "stream", "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse", body
    )
    assert path == "/v1beta/models/gemini-2.5-pro:countTokens"
    assert counted == {
        "generateContentRequest": {
            "model": "models/gemini-2.5-pro",
            "contents": CONTENTS,
            "systemInstruction": {"parts": [{"text": "s"}]},
        }
    }
    vertex = "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-pro:generateContent"
    path, counted = google.counter_request("generate", vertex, {**body, "cachedContent": "c"})
    assert path == vertex.replace(":generateContent", ":countTokens")
    assert counted == {"contents": CONTENTS, "systemInstruction": {"parts": [{"text": "s"}]}}
    assist = {"model": "gemini-2.5-flash", "request": body}
    path, counted = google.counter_request("assist_generate", "/v1internal:generateContent", assist)
    assert (path, counted) == (
        "/v1internal:countTokens",
        {"request": {"model": "models/gemini-2.5-flash", "contents": CONTENTS}},
    )


# -- usage ------------------------------------------------------------------------------------


def test_usage_bills_thoughts_as_output_and_tool_prompts_as_input():
    body = {
        "usageMetadata": {
            "promptTokenCount": 1000,
            "cachedContentTokenCount": 600,
            "toolUsePromptTokenCount": 50,
            "candidatesTokenCount": 20,
            "thoughtsTokenCount": 300,
        },
        "modelVersion": "gemini-2.5-flash",
    }
    usage = google.usage_from_body("generate", body)
    assert usage is not None
    assert (usage.input_tokens, usage.cache_read_tokens, usage.output_tokens, usage.model) == (
        1050,
        600,
        320,
        "gemini-2.5-flash",
    )
    assert google.usage_from_body("generate", {"candidates": []}) is None
    assert google.usage_from_body("generate", {"error": {"code": 400}}) is None


def test_a_buffered_json_array_settles_to_its_last_usage_once_it_ended():
    chunks = json.loads((FIXTURES / "stream_array.json").read_bytes())
    usage = google.usage_from_body("stream", chunks)
    assert usage is not None and (usage.input_tokens, usage.output_tokens) == (12250, 1000)
    assert google.usage_from_body("stream", chunks[:2]) is None  # no finishReason yet: cut


def test_a_blocked_prompt_is_billed_its_input():
    chunk = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 77}}
    reader = google.stream_reader("stream")
    reader.feed(b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n")
    reader.close()
    assert reader.usage is not None and (reader.usage.input_tokens, reader.usage.output_tokens) == (77, 0)


def test_counter_answers():
    assert google.read_counter_response(200, {"totalTokens": 31, "cachedContentTokenCount": 4}) == 31
    assert google.read_counter_response(200, {"totalTokens": -3}) is None
    assert google.read_counter_response(403, {"totalTokens": 31}) is None


# -- streams at any byte split ----------------------------------------------------------------


def feed_in_pieces(data: bytes, cuts: list[int]) -> google.StreamUsage:
    reader = google.stream_reader("stream")
    last = 0
    for cut in [*sorted(cuts), len(data)]:
        reader.feed(data[last:cut])
        last = cut
    reader.close()
    return reader


@pytest.mark.parametrize("name", ["stream.sse", "stream_array.json", "assist_stream.sse"])
@settings(max_examples=60, deadline=None)
@given(cuts=st.lists(st.integers(0, 4000), max_size=20))
def test_a_stream_reads_the_same_usage_at_any_split(name, cuts):
    data = (FIXTURES / name).read_bytes()
    whole = feed_in_pieces(data, [])
    assert whole.usage is not None
    assert feed_in_pieces(data, [c for c in cuts if c <= len(data)]).usage == whole.usage


@pytest.mark.parametrize("name", ["stream.sse", "stream_array.json"])
def test_a_stream_cut_before_its_last_chunk_has_no_usage(name):
    data = (FIXTURES / name).read_bytes()
    cut = data.rindex(b"finishReason") - 10
    assert feed_in_pieces(data[:cut], []).usage is None


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='ab"\\[]{},: \n\u00e9\u2713', max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(
    elements=st.lists(st.dictionaries(st.text(max_size=4), _json_values, max_size=4), max_size=6),
    indent=st.sampled_from([None, 2]),
    cuts=st.lists(st.integers(0, 2000), max_size=15),
)
def test_the_array_reader_yields_each_element_at_any_split(elements, indent, cuts):
    items = [json.dumps(e, indent=indent, ensure_ascii=False).encode() for e in elements]
    data = b"[" + b"\n,\r\n".join(items) + b"\n]"  # as the Gemini API separates them
    reader = JsonArrayReader()
    got, last = [], 0
    for cut in [*sorted(c for c in cuts if c <= len(data)), len(data)]:
        got += reader.feed(data[last:cut])
        last = cut
    assert got == elements


def test_the_array_reader_reads_nothing_of_a_body_that_is_not_an_array():
    reader = JsonArrayReader()
    assert reader.feed(b'{"usageMetadata": {"promptTokenCount": 5}}') == [] and reader.broken


def test_a_large_element_in_small_chunks_is_read_in_linear_time():
    # One 4 MiB chunk of text fed 1 KiB at a time: a reader that re-scanned or re-joined what it
    # holds on every chunk would do ~8 GiB of work here.
    text = ('x"\\' * (4 * 1024 * 1024 // 4)) + "y"
    element = {
        "candidates": [{"content": {"parts": [{"text": text}]}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 9},
    }
    data = b"[" + json.dumps(element).encode() + b"]"
    reader = google.stream_reader("stream")
    start = time.perf_counter()
    for i in range(0, len(data), 1024):
        reader.feed(data[i : i + 1024])
    reader.close()
    assert time.perf_counter() - start < 2.0  # measured 0.4 s; re-joining per chunk: minutes
    assert reader.usage is not None and reader.usage.output_tokens == 9


def test_the_tap_passes_a_json_array_stream_byte_for_byte():
    data = (FIXTURES / "stream_array.json").read_bytes()
    tap = StreamTap(google.stream_reader("stream"))
    assert b"".join(tap(data[i : i + 3]) for i in range(0, len(data), 3)) + tap(b"") == data
    assert tap.usage is not None and tap.usage.output_tokens == 1000


def test_grounding_with_search_is_reserved_and_settled_per_search():
    body = {"contents": CONTENTS, "tools": [{"googleSearch": {}}]}
    parsed = google.parse_request("generate", body, line("/v1beta/models/m:generateContent"))
    assert parsed.web_searches == UNBOUNDED
    grounding = {"webSearchQueries": ["a", "b"], "groundingChunks": []}
    answer = {
        "candidates": [{"finishReason": "STOP", "groundingMetadata": grounding}],
        "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 3},
    }
    usage = google.usage_from_body("generate", answer)
    assert usage is not None and usage.web_searches == 2


def test_a_cap_written_never_raises_the_clients_own():
    # Thinking unbounded: the request's own 100 was not its bound (the model's limit was), and
    # the cap written in its place keeps it.
    body = {"contents": CONTENTS, "generationConfig": {"maxOutputTokens": 100}}
    assert google.with_output_cap("generate", body, 65536)["generationConfig"]["maxOutputTokens"] == 100
    assert google.with_output_cap("generate", body, 40)["generationConfig"]["maxOutputTokens"] == 40
    assert google.with_output_cap("generate", {"contents": CONTENTS}, 64)["generationConfig"] == {
        "maxOutputTokens": 64
    }


def test_requests_as_gemini_cli_sends_them():
    cli = json.loads((FIXTURES / "request_gemini_cli.json").read_text())
    parsed = google.parse_request(
        "stream", cli, line("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse")
    )
    # No maxOutputTokens: the model's own limit bounds the answer and its 8192 thinking tokens.
    assert (parsed.model, parsed.stream, parsed.max_output_tokens, parsed.server_input) == (
        "gemini-2.5-flash",
        True,
        None,
        None,
    )
    assert "list_directory" in json.dumps(parsed.prompt) and "interactive CLI agent" in json.dumps(
        parsed.prompt
    )
    assist = json.loads((FIXTURES / "request_code_assist.json").read_text())
    parsed = google.parse_request("assist_stream", assist, line("/v1internal:streamGenerateContent?alt=sse"))
    # Dynamic thinking (-1): its 4096 cap is not its bound.
    assert (parsed.model, parsed.max_output_tokens) == ("gemini-2.5-pro", None)


def test_custody_keys_go_to_the_gemini_api_only_never_to_oauth_apis():
    from governance.hostrules import shipped_table

    entries = {e.name: e for e in shipped_table().entries}
    assert entries["google"].custody and entries["google"].provider == "google"
    assert not entries["vertex"].custody and not entries["google-code-assist"].custody
