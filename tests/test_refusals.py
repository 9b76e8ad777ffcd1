"""`governance.refusals`: every refusal names its rule and renders in every provider's envelope."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from pydantic import ValidationError

from governance import RULES_DIR, refusals, wire
from governance.errors import PricingError
from governance.families import ENVELOPES, shapes
from governance.rulefile import RulesInvalid, parse_yaml
from governance.types import Endpoint, Metering, Refusal, RefusalKind

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


RATE = Refusal(
    rule="rate_limit:pace:requests@key=a",
    code="rate_limit_exceeded",
    kind=RefusalKind.RATE,
    message="spendfuse: rate limit",
    limit=Decimal(3),
    spent=Decimal(3),
    reserved=Decimal(0),
    requested=Decimal(1),
    resets="2026-11-22T10:01:00.000000Z",
    retry_after=50,
    unit="requests",
)


@pytest.mark.parametrize(
    "envelope,status", [("openai", 429), ("anthropic", 429), ("google", 429), ("bedrock", 429)]
)
def test_a_window_that_resets_is_a_retryable_429_with_retry_after(envelope, status):
    got, headers, body = wire.render_error(
        Endpoint("x", "", Metering.UNMETERED, "h", "/", envelope), RATE, "rid"
    )
    assert got == status and headers["retry-after"] == "50" and "x-should-retry" not in headers
    assert headers["x-spendfuse-limit-requests"] == "3" and "x-spendfuse-limit-usd" not in headers
    if envelope == "google":
        assert json.loads(body)["error"]["details"][1]["retryDelay"] == "50s"


@pytest.mark.parametrize(
    "kind,envelope,status,marker",
    [
        (RefusalKind.AUTH, "openai", 401, "invalid_api_key"),
        (RefusalKind.AUTH, "anthropic", 401, "authentication_error"),
        (RefusalKind.AUTH, "google", 401, "UNAUTHENTICATED"),
        (RefusalKind.AUTH, "bedrock", 403, "UnrecognizedClientException"),
        (RefusalKind.PROXY_AUTH, "openai", 407, "proxy_auth_failed"),
        (RefusalKind.PROXY_AUTH, "anthropic", 407, "authentication_error"),
    ],
)
def test_identity_refusals_use_each_providers_auth_error(kind, envelope, status, marker):
    refusal = Refusal("identity", "proxy_auth_failed", kind, "spendfuse: wrong secret")
    got, headers, body = wire.render_error(
        Endpoint("x", "", Metering.UNMETERED, "h", "/", envelope), refusal, "r"
    )
    assert got == status and marker in body.decode() + json.dumps(headers)
    assert headers["x-should-retry"] == "false"
    assert (headers.get("proxy-authenticate") is not None) == (kind is RefusalKind.PROXY_AUTH)


def test_committed_refusal_shapes_schema_is_fresh():
    assert (RULES_DIR / "refusal_shapes.schema.json").read_text() == shapes.json_schema()


def test_every_envelope_has_a_shape_for_every_kind():
    table = shapes.shipped()
    assert set(table.root) == set(ENVELOPES)
    for envelope in ENVELOPES:
        for kind in RefusalKind:
            assert 400 <= table.shape(envelope, kind).status <= 599


def test_a_shapes_file_missing_a_kind_is_refused():
    data = parse_yaml((RULES_DIR / "refusal_shapes.yaml").read_text())
    del data["openai"]["rate"]
    with pytest.raises(ValidationError, match="envelope 'openai': missing kinds \\['rate'\\]"):
        shapes.RefusalShapes.model_validate(data)


@pytest.mark.parametrize(
    "bad", [{"status": 200, "type": "x"}, {"status": 429}, {"status": 429, "type": "x", "y": 1}]
)
def test_a_malformed_shape_is_refused(bad):
    data = parse_yaml((RULES_DIR / "refusal_shapes.yaml").read_text())
    data["google"]["quota"] = bad
    with pytest.raises(ValidationError):
        shapes.RefusalShapes.model_validate(data)


def test_the_shapes_reach_the_client():
    """What the data says is what each envelope's client gets: status and type, and the
    provider's own code where the data names one."""
    refusal = refusals.egress("blocked.example", 443)
    for envelope, kinds in parse_yaml((RULES_DIR / "refusal_shapes.yaml").read_text()).items():
        for kind, want in kinds.items():
            r = Refusal(rule=refusal.rule, code="spendfuse_code", kind=RefusalKind(kind), message="m")
            ep = Endpoint("x", "chat", Metering.METERED, "h", "/p", envelope)
            status, headers, body = wire.render_error(ep, r, "req_1")
            doc = json.loads(body)
            assert status == want["status"]
            if envelope == "bedrock":
                seen_type = headers["x-amzn-errortype"]
            else:
                seen_type = doc["error"]["status" if envelope == "google" else "type"]
            assert seen_type == want["type"]
            if envelope == "openai":
                assert doc["error"]["code"] == want.get("code", "spendfuse_code")
            if envelope == "anthropic":
                assert doc["error"]["details"]["error_code"] == want.get("code", "spendfuse_code")


def test_an_envelope_without_shapes_stops_the_start():
    with pytest.raises(RulesInvalid, match="nowhere: no refusal shapes for this envelope"):
        shapes.require([*ENVELOPES, "nowhere"])
    shapes.require(ENVELOPES)


def test_bifrost_codes_give_budgets_402_blocked_403_and_rate_limits_429():
    """`refusal_codes: bifrost` changes the status of exactly Bifrost's three kinds of refusal."""
    from governance.refusal_codes import bifrost_status
    from governance.types import Refusal, RefusalKind

    def status(rule: str, kind: RefusalKind = RefusalKind.QUOTA) -> int | None:
        return bifrost_status(Refusal(rule=rule, code="c", kind=kind, message="m")).status

    assert status("budget:daily@key=a") == 402
    assert status("budget:global", RefusalKind.RATE) == 402
    assert status("rate_limit:pace:requests@key=a", RefusalKind.RATE) == 429
    assert status("model_access@key=a", RefusalKind.INVALID) == 403
    assert status("key_state@key=a", RefusalKind.AUTH) == 403
    assert status("model_multiplier_cap", RefusalKind.INVALID) is None
    assert status("request_parse", RefusalKind.INVALID) is None
