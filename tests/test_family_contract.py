"""The API family contract (`governance.families.ApiFamily`), run against every registered
family with its fixtures (`tests/fixtures/<family>/contract.yaml`): a new family passes these
or is not done. Error envelopes (metered or not) are checked against the shapes in
`rules/refusal_shapes.yaml`."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from governance import RULES_DIR
from governance.errors import RequestParseError
from governance.families import ENVELOPES, FAMILIES, ApiFamily, ErrorEnvelope, shapes
from governance.families.tap import StreamReader, StreamTap
from governance.hostrules import shipped_table
from governance.rulefile import parse_yaml
from governance.types import ParsedRequest, Refusal, RefusalKind, RequestLine, Usage

FIXTURES = Path(__file__).parent / "fixtures"


def contract(name: str) -> dict[str, Any]:
    return parse_yaml((FIXTURES / name / "contract.yaml").read_text())


def cases() -> list[tuple[str, str]]:
    return [(name, api) for name in FAMILIES for api in FAMILIES[name].APIS]


def fixture(name: str, api: str) -> dict[str, Any]:
    return contract(name)["apis"][api]


def assert_usage(usage: Usage | None, want: dict[str, Any]) -> None:
    assert usage is not None
    assert {k: getattr(usage, k) for k in want} == want


# -- registration ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_family_satisfies_the_protocol_under_its_name(name):
    family = FAMILIES[name]
    assert isinstance(family, ApiFamily)
    assert family.NAME == name and ENVELOPES[name] is family


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_api_has_fixtures_and_a_route(name):
    family = FAMILIES[name]
    routes = shipped_table().families[name]
    assert set(contract(name)["apis"]) == set(family.APIS)
    assert set(routes.metered.values()) == set(family.APIS)


def test_the_rules_accept_exactly_the_registered_families():
    schema = json.loads((RULES_DIR / "policy.schema.json").read_text())
    family = schema["$defs"]["HostRule"]["properties"]["family"]["anyOf"][0]
    envelope = schema["$defs"]["HostRule"]["properties"]["envelope"]["anyOf"][0]
    assert family["enum"] == list(FAMILIES)
    assert envelope["enum"] == list(ENVELOPES)
    assert set(shipped_table().families) == set(FAMILIES)


# -- requests -------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "api"), cases())
def test_parse_reads_the_model_and_refuses_a_body_without_one(name, api):
    family = FAMILIES[name]
    request = fixture(name, api)["request"]
    parsed = family.parse_request(api, request)
    assert isinstance(parsed, ParsedRequest)
    # Whether it streams is the body's, except where the API says it (Google's and Bedrock's
    # streaming methods and paths).
    streams = fixture(name, api).get("streams", fixture(name, api).get("streamed", True))
    assert (parsed.model, parsed.stream, parsed.max_output_tokens) == (request["model"], streams, 50)
    with pytest.raises(RequestParseError):
        family.parse_request(api, {k: v for k, v in request.items() if k != "model"})


@pytest.mark.parametrize(("name", "api"), cases())
def test_parse_reads_the_request_as_its_client_sends_it(name, api):
    """With its path and headers (`line:` in the fixture, e.g. a model named in the path), a
    request's facts are the ones its provider bills for."""
    family = FAMILIES[name]
    case = fixture(name, api)
    wire_line = case.get("line", {})
    line = RequestLine(wire_line.get("path", ""), tuple(wire_line.get("headers", {}).items()))
    parsed = family.parse_request(api, case.get("wire_request", case["request"]), line)
    assert (parsed.model, parsed.max_output_tokens) == (case.get("model", case["request"]["model"]), 50)


@pytest.mark.parametrize(("name", "api"), cases())
@pytest.mark.parametrize("cap", [1, 777])
def test_the_output_cap_written_is_the_cap_parsed(name, api, cap):
    family = FAMILIES[name]
    request = fixture(name, api)["request"]
    before = copy.deepcopy(request)
    capped = family.with_output_cap(api, request, cap)
    assert family.parse_request(api, capped).max_output_tokens == cap
    assert request == before  # the caller's body is not changed
    uncapped = {k: v for k, v in request.items() if not k.startswith("max_")}
    assert family.parse_request(api, family.with_output_cap(api, uncapped, cap)).max_output_tokens == cap


@pytest.mark.parametrize(("name", "api"), cases())
def test_prepare_keeps_what_was_priced_and_settles(name, api):
    family = FAMILIES[name]
    request = fixture(name, api)["request"]
    parsed = family.parse_request(api, request)
    prepared = family.prepare_request(api, request, parsed)
    body = request if prepared is None else prepared
    again = family.parse_request(api, body)
    assert (again.model, again.max_output_tokens, again.stream, again.choices) == (
        parsed.model,
        parsed.max_output_tokens,
        parsed.stream,
        parsed.choices,
    )
    assert family.prepare_request(api, body, again) is None  # once prepared, nothing more to do


@pytest.mark.parametrize("name", list(FAMILIES))
def test_price_flags_come_from_the_price_headers(name):
    family = FAMILIES[name]
    given = contract(name)["price_headers"]
    assert set(given) == set(family.PRICE_HEADERS)
    assert family.price_flags(lambda h: list(given.get(h.lower(), []))) == contract(name)["price_flags"]
    assert family.price_flags(lambda h: []) == []


@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_counter_gets_the_client_credentials(name):
    family = FAMILIES[name]
    assert family.API_KEY_HEADERS and all(h == h.lower() for h in family.API_KEY_HEADERS)
    assert set(family.API_KEY_HEADERS) <= family.COUNTER_HEADERS


# -- the token counter ----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "api"), cases())
def test_the_counter_request_targets_a_free_route(name, api):
    family = FAMILIES[name]
    spec = fixture(name, api)
    route = next(r for r, a in shipped_table().families[name].metered.items() if a == api)
    # A route's `{model}` placeholder stands for the model the request is sent to.
    path = contract(name)["base_path"] + route.replace("{model}", spec["request"]["model"])
    found = family.counter_request(api, path + "/?beta=true", spec["request"])
    if spec["counter"] is None:
        assert found is None
        return
    counter_path, body = found
    assert counter_path == spec["counter"]
    free = counter_path[len(contract(name)["base_path"]) :].replace(spec["request"]["model"], "{model}")
    # Routes match the normalised (lower-cased) path.
    assert free.lower() in shipped_table().families[name].free
    counted = body
    for key in spec.get("counter_model", ["model"]):  # where the counter's body names the model
        counted = counted[key]
    assert counted == spec.get("counter_model_value", spec["request"]["model"]) and "max_tokens" not in body


@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize(
    ("status", "count", "want"),
    [
        (200, 4321, 4321),
        (200, 0, 0),
        (200, -1, None),
        (200, True, None),
        (200, "12", None),
        (401, 4321, None),
    ],
)
def test_a_counter_answer_is_a_count_or_nothing(name, status, count, want):
    family, field = FAMILIES[name], contract(name)["counter_count"]
    assert family.read_counter_response(status, {field: count}) == want
    for not_an_answer in ([field], None, "4321", {}):
        assert family.read_counter_response(status, not_an_answer) is None


# -- usage ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "api"), cases())
def test_usage_from_a_whole_answer(name, api):
    family = FAMILIES[name]
    spec = fixture(name, api)
    body = json.loads((FIXTURES / name / spec["body"]).read_text())
    assert_usage(family.usage_from_body(api, body), spec["body_usage"])
    for nothing in ({}, [], "text", None, {"usage": None}):
        assert family.usage_from_body(api, nothing) is None


@pytest.mark.parametrize(("name", "api"), cases())
@pytest.mark.parametrize("piece", [1, 7, 64, 1 << 20])
def test_the_stream_reader_owns_its_framing(name, api, piece):
    family = FAMILIES[name]
    spec = fixture(name, api)
    data = (FIXTURES / name / spec["stream"]).read_bytes()
    reader = family.stream_reader(api)
    assert isinstance(reader, StreamReader)
    for i in range(0, len(data), piece):
        reader.feed(data[i : i + piece])
    reader.close()
    assert_usage(reader.usage, spec["stream_usage"])


@pytest.mark.parametrize(("name", "api"), cases())
def test_a_tap_with_the_stream_reader_passes_bytes_and_reads_usage(name, api):
    family = FAMILIES[name]
    spec = fixture(name, api)
    data = (FIXTURES / name / spec["stream"]).read_bytes()
    tap = StreamTap(family.stream_reader(api))
    assert b"".join(tap(data[i : i + 5]) for i in range(0, len(data), 5)) + tap(b"") == data
    assert_usage(tap.usage, spec["stream_usage"])


@pytest.mark.parametrize(("name", "api"), cases())
def test_a_cut_stream_has_no_usage(name, api):
    family = FAMILIES[name]
    data = (FIXTURES / name / fixture(name, api)["stream"]).read_bytes()
    reader = family.stream_reader(api)
    reader.feed(data[: len(data) // 4])
    reader.close()
    assert reader.usage is None


# -- error envelopes ------------------------------------------------------------------------


@pytest.mark.parametrize("envelope", list(ENVELOPES))
@pytest.mark.parametrize("kind", list(RefusalKind))
def test_every_envelope_renders_every_kind_in_its_shape(envelope, kind):
    family = ENVELOPES[envelope]
    assert isinstance(family, ErrorEnvelope) and family.NAME == envelope
    assert family.API_KEY_HEADERS and all(h == h.lower() for h in family.API_KEY_HEADERS)
    refusal = Refusal(rule="r", code="c", kind=kind, message="spendfuse: no", retry_after=3)
    status, headers, body = family.render_error(refusal, "req_1")
    assert status == shapes.shape(envelope, kind).status
    assert headers["x-spendfuse-refused"] == "r" and headers["content-type"] == "application/json"
    assert shapes.shape(envelope, kind).type in body.decode() + json.dumps(headers)
    assert "spendfuse: no" in json.loads(body).__repr__()
