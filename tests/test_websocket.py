"""`governance.websocket`: which upgrades are metered, what a frame asks for, how the server's
frames settle the requests in flight (pure; end to end in tests/test_e2e_websocket.py)."""

from __future__ import annotations

import json

import pytest

from governance import policy, refusals
from governance import websocket as ws
from governance.gate import Action
from governance.types import RequestInfo, Usage
from tests.conftest import write_rules
from tests.test_gate import verdict


@pytest.fixture
def rules(tmp_path):
    return policy.load(write_rules(tmp_path / "r.yaml"))


# -- the upgrade ----------------------------------------------------------------------------------


def test_the_responses_socket_is_metered_by_default(rules):
    v = verdict(rules, method="GET", path="/v1/responses", upgrade=["websocket"])
    assert v.action is Action.WEBSOCKET
    assert (v.endpoint.family, v.endpoint.api, v.endpoint.host) == ("openai", "responses", "api.openai.com")
    assert (
        verdict(rules, method="GET", path="/v1/responses", upgrade=["WebSocket"]).action is Action.WEBSOCKET
    )


@pytest.mark.parametrize(
    ("path", "values", "kw"),
    [
        ("/v1/realtime", ["websocket"], {}),  # audio sessions: not metered
        ("/v1/chat/completions", ["websocket"], {}),
        ("/v1/responses", ["websocket", "x-foo"], {}),
        ("/v1/responses", ["websocket/13"], {}),
        ("/v1/responses", ["websocket"], {"body": {"model": "gpt-4o"}}),
        ("/v1/responses", ["websocket"], {"headers": [("x-http-method-override", "POST")]}),
    ],
)
def test_other_upgrades_stay_refused(rules, path, values, kw):
    v = verdict(rules, method="GET", path=path, upgrade=values, **kw)
    assert v.action is Action.REFUSE


def test_refuse_mode_keeps_the_426(tmp_path):
    rules = policy.load(write_rules(tmp_path / "r.yaml", websockets="refuse"))
    v = verdict(rules, method="GET", path="/v1/responses", upgrade=["websocket"])
    assert v.action is Action.REFUSE and v.refusal.code == "websocket_not_supported"


def test_a_metered_socket_still_needs_names_that_agree(rules):
    v = verdict(
        rules,
        method="GET",
        path="/v1/responses",
        upgrade=["websocket"],
        host="localhost",
        sni="api.openai.com",
    )
    assert v.action is Action.REFUSE and v.refusal.rule == "host_mismatch"


def test_the_setting_is_checked(tmp_path):
    with pytest.raises(policy.RulesInvalid):
        policy.load(write_rules(tmp_path / "r.yaml", websockets="pass"))


# -- client frames --------------------------------------------------------------------------------


def frame(obj) -> bytes:
    return json.dumps(obj).encode()


def test_a_response_create_is_billed_as_its_body():
    f = ws.read_client_frame(
        frame({"type": "response.create", "model": "gpt-4o", "input": "hi"}), is_text=True
    )
    assert f.kind is ws.FrameKind.BILL and f.body == {"model": "gpt-4o", "input": "hi"}


@pytest.mark.parametrize("no_input", [{}, {"input": []}, {"input": ""}, {"input": None}])
def test_the_prewarm_is_free(no_input):
    obj = {"type": "response.create", "model": "gpt-4o", "instructions": "x", "generate": False, **no_input}
    assert ws.read_client_frame(frame(obj), is_text=True).kind is ws.FrameKind.FREE


@pytest.mark.parametrize(
    "extra",
    [
        {"generate": False, "input": "hi"},  # input: billed, whatever generate says
        {"generate": False, "previous_response_id": "resp_1"},
        {"generate": "false"},
        {"generate": 0},
    ],
)
def test_anything_more_than_a_prewarm_is_billed(extra):
    obj = {"type": "response.create", "model": "gpt-4o", **extra}
    assert ws.read_client_frame(frame(obj), is_text=True).kind is ws.FrameKind.BILL


@pytest.mark.parametrize(
    ("content", "is_text"),
    [
        (b"not json", True),
        (b"[1, 2]", True),
        (frame({"type": "response.create"}), False),  # binary
        (frame({"type": "response.cancel"}), True),
        (frame({"type": "session.update"}), True),
        (frame({"model": "gpt-4o", "input": "hi"}), True),  # no type
        (b"\xff\xfe", True),
    ],
)
def test_everything_else_is_refused(content, is_text):
    f = ws.read_client_frame(content, is_text=is_text)
    assert f.kind is ws.FrameKind.REFUSE and f.refusal.rule == "request_parse"


def test_the_error_frame_is_what_codex_stops_on():
    r = refusals.parse("nope")
    assert json.loads(ws.error_frame(r)) == {
        "type": "error",
        "status": 400,
        "error": {"type": "invalid_request_error", "message": r.message},
    }


def test_a_prepared_body_keeps_its_frame_type():
    assert json.loads(ws.forwarded_frame({"model": "m", "max_output_tokens": 5})) == {
        "type": "response.create",
        "model": "m",
        "max_output_tokens": 5,
    }


# -- server frames and settling -------------------------------------------------------------------


def info(n: int) -> RequestInfo:
    return RequestInfo(f"r{n}", "openai", "responses", "gpt-4o", "p", True, 10, 100, "request")


def created(rid: str) -> ws.ServerEvent:
    return ws.read_server_frame(frame({"type": "response.created", "response": {"id": rid}}), is_text=True)


def completed(rid: str, inp=5, out=3, kind="response.completed") -> ws.ServerEvent:
    usage = {"input_tokens": inp, "output_tokens": out, "total_tokens": inp + out}
    obj = {"type": kind, "response": {"id": rid, "model": "gpt-4o", "usage": usage}}
    return ws.read_server_frame(frame(obj), is_text=True)


def test_server_frames_that_matter():
    assert (
        ws.read_server_frame(frame({"type": "response.output_text.delta", "delta": "x"}), is_text=True)
        is None
    )
    assert ws.read_server_frame(b"\x00", is_text=False) is None
    e = completed("resp_1")
    assert e.kind == "terminal" and e.response_id == "resp_1"
    assert (e.usage.input_tokens, e.usage.output_tokens) == (5, 3)
    for kind in ("response.failed", "response.incomplete"):
        assert completed("x", kind=kind).kind == "terminal"
    err = ws.read_server_frame(frame({"type": "error", "status": 429, "error": {}}), is_text=True)
    assert (err.kind, err.status) == ("error", 429)


def test_each_terminal_settles_its_own_request_in_order():
    x = ws.Exchanges()
    x.sent(None)  # prewarm
    x.sent(info(1))
    x.sent(info(2))
    assert x.on_server(created("resp_p")) is None
    assert x.on_server(completed("resp_p", 0, 0)) is None  # the prewarm's: nothing to settle
    x.on_server(created("resp_1"))
    x.on_server(created("resp_2"))
    s2 = x.on_server(completed("resp_2", 7, 2))
    assert s2.info.request_id == "r2" and s2.usage.input_tokens == 7 and s2.upstream_ran
    s1 = x.on_server(completed("resp_1"))
    assert s1.info.request_id == "r1" and s1.usage.output_tokens == 3
    assert x.reserved() == []


def test_a_terminal_without_usage_charges_the_reservation():
    x = ws.Exchanges()
    x.sent(info(1))
    s = x.on_server(ws.ServerEvent("terminal", "response.failed", None, None))
    assert s.usage is None and s.upstream_ran  # settle(): charged in full


def test_an_error_before_the_request_started_releases_it():
    x = ws.Exchanges()
    x.sent(info(1))
    x.on_server(created("resp_1"))
    x.sent(info(2))
    s = x.on_server(ws.ServerEvent("error", "error", status=400))
    assert s.info.request_id == "r2" and not s.upstream_ran and s.usage is None
    # An error once every request started ends no known one: the running one stays open.
    assert x.on_server(ws.ServerEvent("error", "error", status=500)) is None
    assert [i.request_id for i in x.reserved()] == ["r1"]


def test_a_close_charges_what_is_open():
    x = ws.Exchanges()
    x.sent(None)
    x.sent(info(1))
    x.on_server(created("resp_1"))
    x.sent(info(2))
    closed = x.closed("code 1006")
    assert [(s.info.request_id, s.usage, s.upstream_ran) for s in closed] == [
        ("r1", None, True),
        ("r2", None, True),
    ]
    assert x.reserved() == [] and x.closed("again") == []


def test_usage_is_read_as_the_responses_reader_reads_it():
    obj = {
        "type": "response.completed",
        "response": {
            "id": "r",
            "model": "gpt-4o-2024-08-06",
            "usage": {
                "input_tokens": 100,
                "input_tokens_details": {"cached_tokens": 40},
                "output_tokens": 9,
                "output_tokens_details": {"reasoning_tokens": 4},
                "total_tokens": 109,
            },
        },
    }
    u = ws.read_server_frame(frame(obj), is_text=True).usage
    assert isinstance(u, Usage) and u.model == "gpt-4o-2024-08-06"
    assert (u.input_tokens, u.cache_read_tokens, u.output_tokens) == (100, 40, 9)


def test_a_frame_withdrawn_is_forgotten_and_its_reservation_returned():
    x = ws.Exchanges()
    free = x.sent(None)
    one = x.sent(info(1))
    assert x.withdraw(one).request_id == "r1" and x.withdraw(one) is None
    assert x.withdraw(free) is None and x.open == []


def test_a_prewarm_that_reports_usage_is_flagged(caplog):
    x = ws.Exchanges()
    x.sent(None)
    assert x.on_server(completed("resp_p", 50, 0)) is None
    assert "reported usage" in caplog.text
