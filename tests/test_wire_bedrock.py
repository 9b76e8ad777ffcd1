"""AWS Bedrock: the event-stream decoder, the model in the path, the request's priced facts and
the usage of an answer, against fixtures built by a test-side encoder (tests/support/eventstream)."""

from __future__ import annotations

import base64
import json
import random
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from governance import bedrock_ids
from governance.errors import RequestParseError
from governance.families import bedrock
from governance.families.bedrock_usage import BedrockStream, combine, from_headers
from governance.families.eventstream import CorruptStream, EventStreamDecoder
from governance.families.tap import StreamTap
from governance.matching import lookup_model
from governance.types import RequestLine, Usage
from tests.support import eventstream as es

FIX = Path(__file__).parent / "fixtures" / "bedrock"
INVOKE_STREAM = (FIX / "invoke_stream.eventstream").read_bytes()
CONVERSE_STREAM = (FIX / "converse_stream.eventstream").read_bytes()
BILLED = Usage(input_tokens=13020, output_tokens=400, cache_read_tokens=10000, cache_write_tokens=3000)


def feed_split(data: bytes, cuts: list[int], api: str) -> BedrockStream:
    reader = BedrockStream(api)
    bounds = [0, *sorted(set(cuts)), len(data)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        reader.feed(data[a:b])
    reader.close()
    return reader


# -- the decoder ----------------------------------------------------------------------------


def test_the_decoder_reads_what_the_encoder_wrote():
    frames = [es.event("chunk", {"n": i}) for i in range(3)] + [es.exception("throttlingException", "slow")]
    messages = EventStreamDecoder().feed(b"".join(frames))
    assert [m.kind for m in messages] == ["event"] * 3 + ["exception"]
    assert [json.loads(m.payload) for m in messages[:3]] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert messages[3].event_type == "throttlingException"


def test_non_string_headers_are_skipped_by_their_length():
    frame = es.message({":message-type": "event", "flag": True, "n": 7, ":event-type": "chunk"}, b"{}")
    (message,) = EventStreamDecoder().feed(frame)
    assert message.headers == {":message-type": "event", ":event-type": "chunk"}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(INVOKE_STREAM) - 1), max_size=40))
def test_any_split_of_an_invoke_stream_reads_the_billed_usage(cuts):
    assert feed_split(INVOKE_STREAM, cuts, "invoke_stream").usage == BILLED


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(CONVERSE_STREAM) - 1), max_size=40))
def test_any_split_of_a_converse_stream_reads_the_billed_usage(cuts):
    assert feed_split(CONVERSE_STREAM, cuts, "converse_stream").usage == BILLED


def test_byte_by_byte():
    assert feed_split(INVOKE_STREAM, list(range(1, len(INVOKE_STREAM))), "invoke_stream").usage == BILLED


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=len(INVOKE_STREAM) - 1), st.integers(min_value=1, max_value=255))
def test_a_corrupt_byte_anywhere_leaves_no_usage(position, flip):
    """A flipped bit in any frame (prelude, headers, payload or checksum) breaks a checksum: the
    stream has no usage, so its reservation is charged, never a part read before the damage."""
    data = bytearray(INVOKE_STREAM)
    data[position] ^= flip
    reader = feed_split(bytes(data), [position, position + 1], "invoke_stream")
    assert reader.usage is None and reader.corrupt


def test_corruption_after_the_usage_still_charges_the_reservation():
    trailer = bytearray(es.event("chunk", {"bytes": ""}))
    trailer[-1] ^= 1  # the message checksum
    reader = feed_split(INVOKE_STREAM + bytes(trailer), [], "invoke_stream")
    assert reader.usage is None and "checksum" in (reader.corrupt or "")


@pytest.mark.parametrize(
    "bad",
    [
        (5).to_bytes(4, "big") + (0).to_bytes(4, "big"),  # shorter than a prelude and checksum
        (1 << 30).to_bytes(4, "big") + (0).to_bytes(4, "big"),  # past AWS's 16 MiB
        (20).to_bytes(4, "big") + (19).to_bytes(4, "big"),  # headers longer than the message
    ],
)
def test_impossible_lengths_are_corruption(bad):
    import binascii

    prelude = bad + (binascii.crc32(bad) & 0xFFFFFFFF).to_bytes(4, "big")
    with pytest.raises(CorruptStream):
        EventStreamDecoder().feed(prelude + b"\0" * 64)


def test_a_stream_cut_inside_a_message_has_no_usage():
    reader = BedrockStream("invoke_stream")
    reader.feed(INVOKE_STREAM[:-3])
    reader.close()
    assert reader.usage is None


def test_a_chunk_that_is_not_base64_json_is_corruption():
    bad = es.event("chunk", {"bytes": "%%%not base64"})
    assert feed_split(INVOKE_STREAM + bad, [], "invoke_stream").usage is None


def test_an_exception_before_any_usage_leaves_none():
    data = es.chunk({"type": "message_start", "message": {"model": "m", "usage": {"input_tokens": 5}}})
    data += es.exception("modelStreamErrorException", "boom")
    assert feed_split(data, [], "invoke_stream").usage is None


def test_decoding_is_linear_in_the_stream_size():
    """A 4 MiB message fed in 512-byte pieces (8192 feeds) is decoded in well under a second: the
    buffer is appended to, never re-joined or re-scanned per piece (that would copy ~16 GB).
    And 20000 small messages in one piece: each is sliced once, not moved to the buffer's front."""
    frame = es.event("chunk", {"bytes": base64.b64encode(b"x" * (3 * 1024 * 1024)).decode()})

    def timed() -> float:
        decoder = EventStreamDecoder()
        start = time.perf_counter()
        found = [m for i in range(0, len(frame), 512) for m in decoder.feed(frame[i : i + 512])]
        assert len(found) == 1
        return time.perf_counter() - start

    assert min(timed(), timed()) < 0.5
    many = b"".join(es.event("contentBlockDelta", {"i": i}) for i in range(20000))
    start = time.perf_counter()
    assert len(EventStreamDecoder().feed(many)) == 20000
    assert time.perf_counter() - start < 2


def test_the_tap_passes_every_byte_unchanged():
    tap = StreamTap(bedrock.stream_reader("invoke_stream"))
    rng = random.Random(7)
    out, pos = [], 0
    while pos < len(INVOKE_STREAM):
        step = rng.randint(1, 97)
        out.append(tap(INVOKE_STREAM[pos : pos + step]))
        pos += step
    out.append(tap(b""))
    assert b"".join(out) == INVOKE_STREAM and tap.usage == BILLED


# -- the model in the path --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "model"),
    [
        (
            "/model/anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke",
            "anthropic.claude-sonnet-4-5-20250929-v1:0",
        ),
        (
            "/model/us.anthropic.claude-sonnet-4-5-20250929-v1:0/converse",
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        ),
        ("/model/global.amazon.nova-pro-v1%3A0/converse-stream?x=1", "global.amazon.nova-pro-v1:0"),
        (
            "/model/arn%3Aaws%3Abedrock%3Aeu-west-1%3A123456789012%3Ainference-profile%2Feu.anthropic."
            "claude-3-5-haiku-20241022-v1%3A0/invoke-with-response-stream",
            "eu.anthropic.claude-3-5-haiku-20241022-v1:0",
        ),
        (
            "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A%3Afoundation-model%2Fanthropic.claude-opus-4-1-20250805-v1%3A0/invoke",
            "anthropic.claude-opus-4-1-20250805-v1:0",
        ),
        (
            "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Aapplication-inference-profile%2Fab12cd/converse",
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/ab12cd",
        ),
    ],
)
def test_the_model_is_read_from_the_encoded_path(path, model):
    assert bedrock_ids.model_in_path(path)[0] == model


@pytest.mark.parametrize(
    "path", ["/model//invoke", "/models/x/invoke", "/model/a%2Fb/invoke", "/model/%FF/invoke"]
)
def test_a_path_without_a_model_is_refused(path):
    with pytest.raises(RequestParseError):
        bedrock_ids.model_in_path(path)


def test_model_tables_know_a_bedrock_id_by_its_model_name():
    table = {"claude-sonnet-4-5": 64000, "nova-pro": 5000}
    assert lookup_model(table, "global.anthropic.claude-sonnet-4-5-20250929-v1:0") == (
        "claude-sonnet-4-5",
        64000,
    )
    assert lookup_model(table, "us.amazon.nova-pro-v1:0") == ("nova-pro", 5000)
    assert lookup_model(table, "qwen2.5-72b") is None  # a dotted name that is no Bedrock id


# -- requests ---------------------------------------------------------------------------------


def line(path: str, **headers: str) -> RequestLine:
    return RequestLine(path, tuple(headers.items()))


ANTHROPIC_BODY = {
    "anthropic_version": "bedrock-2023-05-31",
    "max_tokens": 300,
    "messages": [{"role": "user", "content": "hi"}],
}


def test_an_anthropic_invoke_is_read_by_the_anthropic_parser():
    parsed = bedrock.parse_request(
        "invoke_stream",
        ANTHROPIC_BODY,
        line("/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke-with-response-stream"),
    )
    assert (parsed.model, parsed.max_output_tokens, parsed.stream) == (
        "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        300,
        True,
    )


def test_another_vendors_native_body_is_refused_clearly():
    with pytest.raises(RequestParseError, match="Converse"):
        bedrock.parse_request(
            "invoke",
            {"prompt": "hi", "max_gen_len": 10},
            line("/model/meta.llama3-70b-instruct-v1%3A0/invoke"),
        )


def test_an_unbounded_web_search_is_refused_since_no_bound_can_be_written():
    body = {**ANTHROPIC_BODY, "tools": [{"type": "web_search_20250305", "name": "web_search"}]}
    with pytest.raises(RequestParseError, match="max_uses"):
        bedrock.parse_request(
            "invoke", body, line("/model/anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke")
        )


def test_converse_reads_max_tokens_cache_points_and_fees():
    body = {
        "messages": [{"role": "user", "content": [{"text": "hi"}, {"cachePoint": {"type": "default"}}]}],
        "system": [{"text": "be brief"}],
        "guardrailConfig": {"guardrailIdentifier": "g", "guardrailVersion": "1"},
    }
    parsed = bedrock.parse_request("converse", body, line("/model/amazon.nova-pro-v1%3A0/converse"))
    assert parsed.max_output_tokens is None  # absent: the model's maximum is reserved
    assert parsed.cache_write_hint == "5m" and parsed.unpriced_fees == ("bedrock guardrail",)
    assert parsed.prompt == (body["system"], body["messages"])
    capped = bedrock.with_output_cap("converse", body, 77)
    assert (
        bedrock.parse_request(
            "converse", capped, line("/model/amazon.nova-pro-v1%3A0/converse")
        ).max_output_tokens
        == 77
    )


def test_converse_input_in_s3_is_input_on_the_server():
    content = [{"document": {"format": "pdf", "name": "d", "source": {"s3Location": {"uri": "s3://b/k"}}}}]
    parsed = bedrock.parse_request(
        "converse",
        {"messages": [{"role": "user", "content": content}]},
        line("/model/amazon.nova-pro-v1%3A0/converse"),
    )
    assert parsed.server_input and "S3" in parsed.server_input


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        ({"performanceConfig": {"latency": "optimized"}}, {}),
        ({"serviceTier": {"type": "priority"}}, {}),
        ({}, {"x-amzn-bedrock-performanceconfig-latency": "optimized"}),
        ({}, {"x-amzn-bedrock-service-tier": "priority"}),
    ],
)
def test_price_variants_the_price_data_lacks_are_refused(body, headers):
    request = {"messages": [], **body}
    with pytest.raises(RequestParseError, match="cannot price"):
        bedrock.parse_request("converse", request, line("/model/amazon.nova-pro-v1%3A0/converse", **headers))


def test_a_request_is_never_prepared():
    assert bedrock.BODY_FIXED and bedrock.prepare_request("invoke", ANTHROPIC_BODY, None) is None  # type: ignore[arg-type]
    assert bedrock.auth("aws") is None and bedrock.count_request("invoke", ANTHROPIC_BODY) is None


# -- usage --------------------------------------------------------------------------------------


def test_usage_sources_combine_at_the_largest_count_never_the_sum():
    body = Usage(input_tokens=130, output_tokens=40, cache_read_tokens=100, cache_write_tokens=0)
    headers = {
        "x-amzn-bedrock-input-token-count": ["30"],
        "x-amzn-bedrock-output-token-count": ["45"],
        "x-amzn-bedrock-cache-write-input-token-count": ["7"],
    }
    combined = bedrock.usage_with_headers("invoke", body, lambda h: headers.get(h, []))
    assert combined == Usage(input_tokens=137, output_tokens=45, cache_read_tokens=100, cache_write_tokens=7)
    assert combine(body, body) == body


@pytest.mark.parametrize("bad", ["", "-1", "1e3", "١٢", "99999999999999"])
def test_a_header_count_that_is_not_a_count_is_ignored(bad):
    headers = {"x-amzn-bedrock-input-token-count": [bad], "x-amzn-bedrock-output-token-count": ["5"]}
    assert from_headers(lambda h: headers.get(h, [])) is None


def test_headers_alone_are_usage():
    headers = {"x-amzn-bedrock-input-token-count": ["12"], "x-amzn-bedrock-output-token-count": ["5"]}
    assert bedrock.usage_with_headers("invoke", None, lambda h: headers.get(h, [])) == Usage(12, 5)


def test_a_signed_request_is_known_by_its_access_key_not_its_signature():
    from governance.families.common import bearer_key
    from tests.support import sigv4

    signed = [sigv4.sign("POST", "h", f"/model/m/invoke?i={i}", b"{}", {})["authorization"] for i in range(2)]
    assert signed[0] != signed[1]
    assert {bearer_key(s) for s in signed} == {sigv4.ACCESS_KEY}
    assert bearer_key("Bearer sk-abc") == "sk-abc"


def test_request_fixtures_read_as_bedrock_bills_them():
    invoke = json.loads((FIX / "invoke_request.json").read_text())
    parsed = bedrock.parse_request(
        "invoke", invoke, line("/model/global.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke")
    )
    assert (parsed.model, parsed.max_output_tokens, parsed.stream) == (
        "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
        2048,
        False,
    )
    assert parsed.provider_prompt_tokens > 0  # Anthropic's tool-use system prompt, by the model's name
    converse = json.loads((FIX / "converse_request.json").read_text())
    parsed = bedrock.parse_request(
        "converse_stream", converse, line("/model/amazon.nova-pro-v1%3A0/converse-stream")
    )
    assert (parsed.max_output_tokens, parsed.stream, parsed.cache_write_hint) == (512, True, "5m")
    assert parsed.prompt == (converse["system"], converse["messages"], converse["toolConfig"])


def test_a_path_whose_action_is_not_the_routed_api_is_refused():
    with pytest.raises(RequestParseError, match="not a Bedrock converse"):
        bedrock.parse_request(
            "converse", {"messages": []}, line("/model/amazon.nova-pro-v1%3A0/converse-stream")
        )


@pytest.mark.parametrize(
    ("api", "body"),
    [
        ("invoke", {**ANTHROPIC_BODY, "anthropic_beta": ["context-1m-2025-08-07"]}),
        (
            "converse",
            {"messages": [], "additionalModelRequestFields": {"anthropic_beta": ["context-1m-2025-08-07"]}},
        ),
    ],
)
def test_the_long_context_beta_is_refused_since_its_rates_are_not_in_the_price_data(api, body):
    path = f"/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/{api}"
    with pytest.raises(RequestParseError, match="1M-token context"):
        bedrock.parse_request(api, body, line(path))
