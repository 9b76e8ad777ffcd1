"""`governance.refusals`: every refusal names its rule and renders in every provider's envelope."""

from __future__ import annotations

import json

import pytest

from governance import refusals, wire
from governance.errors import PricingError
from governance.types import Endpoint, Metering

ENDPOINT = Endpoint("openai", "chat", Metering.METERED, "api.openai.com", "/v1/chat/completions")
ALL = [
    refusals.internal("TypeError"),
    refusals.ledger_unavailable(OSError("disk full")),
    refusals.parse("bad JSON"),
    refusals.unpriced_model(PricingError("m", "openai")),
    refusals.unpriced_tool_fees(["code_interpreter"]),
    refusals.unbounded_server_input("a file by id", "the rules refuse such input"),
    refusals.egress("blocked.example", 443),
    refusals.unmetered_endpoint("POST", ENDPOINT),
    refusals.upgrade(["websocket"]),
    refusals.upgrade(["h2c"]),
    refusals.host_mismatch("names disagree"),
    refusals.raw_transport("raw TCP", "api.openai.com"),
    refusals.rewritten(),
]


@pytest.mark.parametrize("refusal", ALL, ids=lambda r: r.rule + ":" + r.code)
@pytest.mark.parametrize("envelope", ["openai", "anthropic", "google", "bedrock"])
def test_every_refusal_renders_in_every_envelope(refusal, envelope):
    endpoint = Endpoint("x", "", Metering.UNMETERED, "h", "/", envelope)
    status, headers, body = wire.render_error(endpoint, refusal, "rid")
    assert 400 <= status < 600 and headers["x-should-retry"] == "false"
    assert (
        headers["x-spendfuse-refused"] == refusal.rule and refusal.code in json.dumps(headers) + body.decode()
    )
    assert refusal.message.startswith("spendfuse") and refusal.message in body.decode().replace('\\"', '"')


def test_rules_and_codes_are_distinct():
    codes = {(r.rule, r.code) for r in ALL}
    assert len(codes) == len(ALL)
