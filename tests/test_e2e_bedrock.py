"""End to end through a real mitmdump: AWS Bedrock (InvokeModel, Converse, both streamed) and
Claude on Vertex AI (rawPredict, streamRawPredict), against fakes that bill by their own count
(tests/support/fake_bedrock.py, fake_vertex.py). Bedrock requests are SigV4-signed by a test-side
signer and the fake verifies each signature over the request as it arrived: a request spendfuse
changed in any byte is answered 403, as AWS would."""

from __future__ import annotations

import json
import ssl
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from governance import money
from tests.conftest import write_rules
from tests.support import eventstream as es
from tests.support import fake_bedrock, sigv4
from tests.test_e2e import rows

HOST = "bedrock-runtime.us-east-1.amazonaws.com"
SONNET_US = "us.anthropic.claude-sonnet-4-5-20250929-v1%3A0"
SONNET_GLOBAL = "global.anthropic.claude-sonnet-4-5-20250929-v1%3A0"
NOVA = "amazon.nova-pro-v1%3A0"
EVENTSTREAM = "application/vnd.amazon.eventstream"
ANTHROPIC_BODY = {
    "anthropic_version": "bedrock-2023-05-31",
    "max_tokens": 300,
    "messages": [{"role": "user", "content": "hi"}],
}
# No maxTokens: the model's maximum is reserved, and with clamp_output on, an unsigned request
# would have a cap written into it. A signed one never does.
CONVERSE_BODY = {
    "messages": [{"role": "user", "content": [{"text": "hi"}]}],
    "system": [{"text": "be brief"}],
}


def rules(tmp_path: Path, **extra: object) -> Path:
    """Genai-prices' own Bedrock prices (no test overrides), output-cap injection on."""
    return write_rules(
        tmp_path / "rules.yaml",
        prices={},
        clamp_output={"floor_tokens": 100},
        model_limits={"claude-sonnet-4-5": 64000, "nova-pro": 5000},
        **extra,
    )


def charged(row: dict) -> Decimal:
    """What the ledger charged a request, exactly."""
    return money.to_usd(row["cost_micro"], row["cost_submicro"])


def client(proxy) -> httpx.Client:  # type: ignore[no-untyped-def]
    return httpx.Client(proxy=proxy.url, verify=ssl.create_default_context(cafile=str(proxy.ca)), timeout=20)


def signed_post(
    proxy, model: str, action: str, body: bytes, accept: str = "application/json", **extra: str
) -> tuple[httpx.Response, dict[str, str]]:  # type: ignore[no-untyped-def]
    path = f"/model/{model}/{action}"
    headers = sigv4.sign(
        "POST",
        HOST,
        path,
        body,
        {
            "content-type": "application/json",
            "accept": accept,
            "accept-encoding": "gzip, deflate",
            "x-amzn-bedrock-trace": "DISABLED",
            **extra,
        },
    )
    with client(proxy) as c:
        response = c.post(f"https://{HOST}{path}", content=body, headers=headers)
        response.read()
    return response, headers


def assert_reached_as_sent(
    upstream, sent_body: bytes, sent_headers: dict[str, str], model: str, action: str
) -> None:  # type: ignore[no-untyped-def]
    """The fake got the request byte for byte: path, body and every signed header as sent."""
    [(raw_path, received_headers, raw_body)] = upstream.raw
    assert raw_path == f"/model/{model}/{action}" and raw_body == sent_body
    received = {k.lower(): v for k, v in received_headers}
    assert {k: received.get(k) for k in sent_headers} == sent_headers


def test_invoke_model_reaches_bedrock_byte_for_byte_and_settles_to_its_bill(start, upstream, tmp_path):
    proxy = start(rules=rules(tmp_path))
    upstream.knobs.prompt_tokens, upstream.knobs.completion_tokens = 1200, 80
    upstream.knobs.cached_tokens, upstream.knobs.cache_write_tokens = 5000, 700
    body = json.dumps(ANTHROPIC_BODY).encode()
    response, headers = signed_post(proxy, SONNET_US, "invoke", body)
    assert response.status_code == 200, response.text
    assert response.json()["content"][0]["text"] == "hello"
    assert_reached_as_sent(upstream, body, headers, SONNET_US, "invoke")
    [bill] = upstream.bills
    [row] = rows(tmp_path / "ledger.sqlite")
    # The body and the token-count headers report the same counts: charged once, not twice.
    assert row["state"] == "settled" and row["provider"] == "aws"
    assert (row["input_tokens"], row["output_tokens"]) == (1200 + 5000 + 700, 80)
    assert charged(row) == bill["usd"]


def test_an_invoke_stream_passes_unchanged_and_settles_from_its_frames(start, upstream, tmp_path):
    proxy = start(rules=rules(tmp_path))
    upstream.knobs.prompt_tokens, upstream.knobs.completion_tokens, upstream.knobs.cached_tokens = (
        900,
        60,
        100,
    )
    body = json.dumps(ANTHROPIC_BODY).encode()
    response, headers = signed_post(proxy, SONNET_GLOBAL, "invoke-with-response-stream", body, EVENTSTREAM)
    assert response.status_code == 200 and response.headers["content-type"] == EVENTSTREAM
    # Every byte as the fake sent it: the frames are read on the side, never re-framed.
    assert response.content == es.anthropic_stream(
        "global.anthropic.claude-sonnet-4-5-20250929-v1:0", 900, 60, 100, 0
    )
    assert_reached_as_sent(upstream, body, headers, SONNET_GLOBAL, "invoke-with-response-stream")
    [row] = rows(tmp_path / "ledger.sqlite")
    assert row["outcome"].startswith("usage") and charged(row) == upstream.bills[0]["usd"]


@pytest.mark.parametrize("action", ["converse", "converse-stream"])
def test_converse_is_never_clamped_and_settles_to_its_bill(start, upstream, tmp_path, action):
    proxy = start(rules=rules(tmp_path))
    upstream.knobs.prompt_tokens, upstream.knobs.completion_tokens = 3000, 250
    body = json.dumps(CONVERSE_BODY).encode()
    response, headers = signed_post(
        proxy, NOVA, action, body, EVENTSTREAM if action.endswith("stream") else "application/json"
    )
    assert response.status_code == 200, response.text
    if action == "converse":
        assert response.json()["usage"]["outputTokens"] == 250
    else:
        assert response.content == es.converse_stream(3000, 250)
    # No maxTokens was written in: the fake verified the signature over the bytes as sent.
    assert_reached_as_sent(upstream, body, headers, NOVA, action)
    [row] = rows(tmp_path / "ledger.sqlite")
    assert row["max_output_tokens"] == 5000 and row["injected_output_tokens"] is None
    assert charged(row) == upstream.bills[0]["usd"]
    assert upstream.bills[0]["usd"] == fake_bedrock.bill("amazon.nova-pro-v1:0", 3000, 250, 0, 0)


def test_a_refusal_is_in_bedrocks_shape_and_nothing_reaches_it(start, upstream, tmp_path):
    # 300 output tokens at $16.50/Mtok is $0.00495: one request fits a $0.006 cap, a second does not.
    proxy = start(rules=rules(tmp_path, budgets=[{"name": "global", "limit_usd": "0.006"}]))
    upstream.knobs.prompt_tokens, upstream.knobs.completion_tokens = 10, 300
    body = json.dumps(ANTHROPIC_BODY).encode()
    first, _ = signed_post(proxy, SONNET_US, "invoke", body)
    assert first.status_code == 200
    refused, _ = signed_post(proxy, SONNET_US, "invoke", body)
    assert refused.status_code == 403
    assert refused.headers["x-amzn-errortype"] == "AccessDeniedException"
    assert "spendfuse" in refused.json()["message"] and refused.json()["__type"] == "AccessDeniedException"
    assert len(upstream.raw) == 1


@pytest.mark.parametrize(
    ("model", "action", "body", "why"),
    [
        # An application inference profile names no model: nothing prices it.
        (
            "arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Aapplication-inference-profile%2Fab12",
            "converse",
            {**CONVERSE_BODY, "inferenceConfig": {"maxTokens": 100}},
            "price",
        ),
        # Another vendor's native InvokeModel body: its output cap cannot be read.
        ("meta.llama3-70b-instruct-v1%3A0", "invoke", {"prompt": "hi", "max_gen_len": 10}, "Converse"),
    ],
)
def test_what_cannot_be_priced_is_refused_as_a_validation_error(
    start, upstream, tmp_path, model, action, body, why
):
    proxy = start(rules=rules(tmp_path))
    response, _ = signed_post(proxy, model, action, json.dumps(body).encode())
    assert response.status_code == 400 and response.headers["x-amzn-errortype"] == "ValidationException"
    assert why in response.json()["message"] and not upstream.raw


@pytest.mark.parametrize("offset", [5, 200, -3])  # a prelude, a payload, the last frame's checksum
def test_a_corrupt_frame_passes_to_the_client_and_charges_the_reservation(start, upstream, tmp_path, offset):
    """The client gets the bytes as Bedrock sent them, damage included (its SDK will see the bad
    checksum); spendfuse cannot trust any count in the stream, so it charges the reservation."""
    proxy = start(rules=rules(tmp_path))
    body = json.dumps(CONVERSE_BODY).encode()
    clean = es.converse_stream(upstream.knobs.prompt_tokens, upstream.knobs.completion_tokens)
    at = str(offset % len(clean))
    response, _ = signed_post(
        proxy, NOVA, "converse-stream", body, EVENTSTREAM, **{"x-test-corrupt-byte": at}
    )
    damaged = bytearray(clean)
    damaged[int(at)] ^= 0x40
    assert response.status_code == 200 and response.content == bytes(damaged)
    [row] = rows(tmp_path / "ledger.sqlite")
    assert row["state"] == "settled" and row["cost_micro"] == row["reserved_micro"] > 0
    assert charged(row) > upstream.bills[0]["usd"]


def test_a_stream_cut_before_its_usage_is_charged_its_reservation(start, upstream, tmp_path):
    proxy = start(rules=rules(tmp_path))
    upstream.knobs.break_stream_after = 2  # two 37-byte pieces: inside the first frame
    body = json.dumps(ANTHROPIC_BODY).encode()
    with pytest.raises(httpx.HTTPError):
        signed_post(proxy, SONNET_US, "invoke-with-response-stream", body, EVENTSTREAM)
    [row] = rows(tmp_path / "ledger.sqlite")
    assert row["state"] == "settled" and row["cost_micro"] == row["reserved_micro"]


# -- Claude on Vertex AI --------------------------------------------------------------------


VERTEX_PATH = (
    "/v1/projects/p-1/locations/{loc}/publishers/anthropic/models/claude-sonnet-4-5@20250929:{method}"
)


@pytest.mark.parametrize(
    ("host", "loc", "method"),
    [
        ("us-east5-aiplatform.googleapis.com", "us-east5", "rawPredict"),
        ("us-east5-aiplatform.googleapis.com", "us-east5", "streamRawPredict"),
        ("aiplatform.googleapis.com", "global", "streamRawPredict"),
    ],
)
def test_vertex_claude_settles_to_its_bill_with_the_clients_token(
    start, upstream, tmp_path, host, loc, method
):
    proxy = start(rules=rules(tmp_path))
    upstream.knobs.prompt_tokens, upstream.knobs.completion_tokens = 2000, 120
    body = {
        "anthropic_version": "vertex-2023-10-16",
        "max_tokens": 500,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": method == "streamRawPredict",
    }
    with client(proxy) as c:
        response = c.post(
            f"https://{host}{VERTEX_PATH.format(loc=loc, method=method)}",
            json=body,
            headers={"authorization": "Bearer ya29.test-token"},
        )
    assert response.status_code == 200, response.text
    if method == "streamRawPredict":
        assert "event: message_delta" in response.text
    else:
        assert response.json()["usage"]["output_tokens"] == 120
    assert upstream.headers[0]["authorization"] == "Bearer ya29.test-token"  # the client's own, kept
    [row] = rows(tmp_path / "ledger.sqlite")
    assert row["provider"] == "google" and row["model"] == "claude-sonnet-4-5@20250929"
    assert charged(row) == upstream.bills[0]["usd"]


def test_vertex_claude_refusals_are_in_anthropics_envelope(start, upstream, tmp_path):
    proxy = start(rules=rules(tmp_path, budgets=[{"name": "global", "limit_usd": "0.000001"}]))
    body = {
        "anthropic_version": "vertex-2023-10-16",
        "max_tokens": 500,
        "messages": [{"role": "user", "content": "hi"}],
    }
    with client(proxy) as c:
        response = c.post(
            "https://us-east5-aiplatform.googleapis.com"
            + VERTEX_PATH.format(loc="us-east5", method="rawPredict"),
            json=body,
            headers={"authorization": "Bearer ya29.test-token"},
        )
    assert response.status_code == 429 and response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "rate_limit_error" and upstream.total_hits == 0
