"""The engine on Bedrock requests: signed over their bytes, so never rewritten (no output-cap
injection, no fit to a budget's room), priced by the path's model id, and settled from the
usage the answer reports in its body, its event stream and its headers."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from governance import policy
from governance.engine import Engine
from governance.errors import RequestParseError
from governance.ledger import Ledger
from governance.settlement import ResponseFacts, stream_tap
from governance.types import Endpoint, Metering, RequestInfo, RequestLine
from tests.support import eventstream as es

NOW = datetime(2026, 11, 22, tzinfo=UTC)
HOST = "bedrock-runtime.us-east-1.amazonaws.com"
SONNET = "us.anthropic.claude-sonnet-4-5-20250929-v1%3A0"


def endpoint(api: str, action: str, model: str = SONNET) -> tuple[Endpoint, RequestLine]:
    path = f"/model/{model}/{action}"
    return Endpoint("bedrock", api, Metering.METERED, HOST, path, "bedrock", "bedrock"), RequestLine(path)


@pytest.fixture
def make(tmp_path: Path):
    """`make(**rules)`: an engine on its own ledger, with a $1 cap and no input margin."""
    made: list[Engine] = []

    def _make(**data) -> Engine:
        rules = {"budgets": [{"limit_usd": 1}], "estimate": {"input_margin": 1}, **data}
        made.append(Engine(policy.parse(rules, Path(".")), Ledger.open(tmp_path / f"{len(made)}.sqlite")))
        return made[-1]

    yield _make
    for engine in made:
        engine.close()


CONVERSE = {"messages": [{"role": "user", "content": [{"text": "hello"}]}]}
INVOKE = {
    "anthropic_version": "bedrock-2023-05-31",
    "max_tokens": 1000,
    "messages": [{"role": "user", "content": "hi"}],
}


def admitted(e: Engine, api: str, action: str) -> RequestInfo:
    """An InvokeModel request on Sonnet 4.5 (US profile), read and admitted."""
    ep, line = endpoint(api, action)
    info = e.read_request(ep, INVOKE, principal="p", request_id="r1", line=line).info
    assert e.admit(info, NOW).allowed
    return info


def test_a_converse_request_without_a_cap_is_reserved_at_the_models_maximum_and_never_clamped(make):
    e = make(clamp_output={"floor_tokens": 100}, budgets=[{"limit_usd": "0.5"}])
    ep, line = endpoint("converse", "converse")
    read = e.read_request(ep, CONVERSE, principal="p", request_id="r1", line=line)
    assert read.info.body_fixed and read.info.max_output_tokens == 64000  # claude-sonnet-4-5's table entry
    assert read.info.provider == "aws"
    decision = e.admit(read.info, NOW)
    # $0.5 cannot hold 64000 output tokens at Bedrock's regional $16.50/Mtok ($1.056): refused
    # whole, never fitted to the room by a cap written into the signed request.
    assert not decision.allowed and decision.output_cap is None


def test_a_request_that_fits_is_forwarded_as_sent(make):
    e = make(clamp_output={"floor_tokens": 100}, budgets=[{"limit_usd": 2}])
    ep, line = endpoint("converse", "converse")
    read = e.read_request(ep, CONVERSE, principal="p", request_id="r1", line=line)
    decision = e.admit(read.info, NOW)
    assert decision.allowed and decision.output_cap is None
    assert e.forward_bytes(read, decision, "bedrock", e.encoded_forward_body(read)) is None


def test_a_global_profile_is_priced_below_a_regional_one(make):
    e = make()
    body = {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 1000,
        "messages": [{"role": "user", "content": "hi"}],
    }
    reserved = {}
    for i, prefix in enumerate(["us.", "global."]):
        ep, line = endpoint("invoke", "invoke", prefix + "anthropic.claude-sonnet-4-5-20250929-v1%3A0")
        info = e.read_request(ep, body, principal="p", request_id=f"r{i}", line=line).info
        reserved[prefix] = e.admit(info, NOW).reserved
    assert reserved["global."] < reserved["us."]


def test_an_arn_nothing_prices_is_refused_unless_the_rules_price_it(make):
    arn = "arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Aapplication-inference-profile%2Fab12"
    body = {**CONVERSE, "inferenceConfig": {"maxTokens": 100}}
    ep, line = endpoint("converse", "converse", arn)
    info = make().read_request(ep, body, principal="p", request_id="r1", line=line).info
    refused = make().admit(info, NOW)
    assert not refused.allowed and refused.refusal.code == "model_not_priced"
    priced = make(
        prices={
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/ab12": {
                "input_mtok": 3,
                "output_mtok": 15,
            }
        }
    )
    info = priced.read_request(ep, body, principal="p", request_id="r1", line=line).info
    assert priced.admit(info, NOW).allowed


def test_a_stream_settles_from_its_event_stream(make):
    e = make()
    info = admitted(e, "invoke_stream", "invoke-with-response-stream")
    tap = stream_tap(info, "bedrock", "application/vnd.amazon.eventstream", "")
    assert tap is not None
    data = es.anthropic_stream("claude-sonnet-4-5-20250929", 1_000_000, 0)
    assert tap(data) == data and tap(b"") == b""
    facts = ResponseFacts(200, "application/vnd.amazon.eventstream", streamed=True, tapped=tap.usage)
    e.settle(e.read_response(info, "bedrock", facts), NOW)
    row = e.ledger.request("r1")
    # 1M input tokens at Bedrock's regional Sonnet 4.5 rate, $3.30/Mtok.
    assert row["state"] == "settled" and Decimal(row["cost_micro"]) == Decimal(3_300_000)


def test_a_whole_answer_settles_from_body_and_headers_at_the_larger_count(make):
    e = make()
    info = admitted(e, "invoke", "invoke")
    answer = b'{"model":"claude-sonnet-4-5-20250929","usage":{"input_tokens":100000,"output_tokens":10}}'
    headers = (("x-amzn-bedrock-input-token-count", "200000"), ("x-amzn-bedrock-output-token-count", "10"))
    e.settle(
        e.read_response(info, "bedrock", ResponseFacts(200, "application/json", answer, headers=headers)), NOW
    )
    # 200k input at $3.30/Mtok + 10 output at $16.50/Mtok: the headers' larger count, never the sum.
    assert e.ledger.request("r1")["cost_micro"] == 660_000 + 165


def test_a_body_model_never_stands_in_for_the_paths(make):
    ep, line = endpoint("converse", "converse", "not-a-model%2Fpath")
    with pytest.raises(RequestParseError):
        make().read_request(
            ep, {**CONVERSE, "model": "amazon.nova-micro-v1:0"}, principal="p", request_id="r", line=line
        )


def test_a_price_of_anthropics_model_is_not_bedrocks(make):
    """An override names the model as its provider does: `claude-sonnet-4-5` is Anthropic's
    price; a Bedrock id is priced by the price data (or an override naming the Bedrock id)."""
    body = {**CONVERSE, "inferenceConfig": {"maxTokens": 100}}
    ep, line = endpoint("converse", "converse")
    cheap = make(prices={"claude-sonnet-4-5": {"input_mtok": "0.01", "output_mtok": "0.01"}})
    info = cheap.read_request(ep, body, principal="p", request_id="r1", line=line).info
    assert cheap.admit(info, NOW).reserved > Decimal("0.0016")  # 100 output at $16.50/Mtok
    named = make(prices={"us.anthropic.claude-sonnet-4-5": {"input_mtok": "0.01", "output_mtok": "0.01"}})
    info = named.read_request(ep, body, principal="p", request_id="r1", line=line).info
    assert named.admit(info, NOW).reserved < Decimal("0.00001")
