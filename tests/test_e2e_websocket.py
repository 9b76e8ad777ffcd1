"""End to end through a real mitmdump: Codex's WebSocket transport (`wss://…/v1/responses`),
metered frame by frame (`websockets: meter`, the default), or refused with 426 (`refuse`).

The client speaks Codex's handshake through HTTPS_PROXY-style CONNECT with the proxy's CA; the
fake upstream serves the socket and bills with its own count (`upstream.bills`, at the prices
the rules below give spendfuse too)."""

from __future__ import annotations

import threading
from decimal import Decimal
from pathlib import Path

import pytest

from governance import money
from governance.ledger import Ledger
from tests.conftest import write_rules
from tests.support.wsclient import CodexSocket, prewarm
from tests.test_e2e import rows

# The fake provider's gpt-4o prices (tests/support/fake_upstream.py `_PRICES`), so its bill is
# the oracle in dollars.
PRICES = {"gpt-4o": {"input_mtok": "2.5", "output_mtok": "10"}}
CAP = 1000  # max_output_tokens of each request: $0.01 of output at most


def ruled(tmp_path, limit: str = "1", **more):
    return write_rules(
        tmp_path / "rules.yaml", prices=PRICES, budgets=[{"name": "global", "limit_usd": limit}], **more
    )


def billed(upstream) -> Decimal:
    with upstream.lock:
        return sum((b["usd"] for b in upstream.bills), Decimal(0))


def ledger_spend(db) -> tuple[Decimal, Decimal]:
    """(settled, held) in the global budget's counters."""
    rows(db)  # wait until no hold is left (or 10 s)
    led = Ledger.open(db)
    try:
        t = led.window_totals("global", "")
    finally:
        led.close()
    return money.to_usd(t.settled, t.settled_rest), money.to_usd(t.held, 0)


def ask(sock: CodexSocket, text: str = "hi") -> list[dict]:
    return sock.create(model="gpt-4o", input=[{"role": "user", "content": text}], max_output_tokens=CAP)


def test_served_frames_settle_to_the_providers_bill(start, upstream, tmp_path):
    proxy = start(rules=ruled(tmp_path))
    sock = CodexSocket(proxy.port, proxy.ca)
    assert sock.status == 101
    sock.send(prewarm())
    assert sock.until_done()[-1]["type"] == "response.completed"
    for prompt, completion in ((11, 7), (120, 40), (3, 999)):
        upstream.knobs.prompt_tokens, upstream.knobs.completion_tokens = prompt, completion
        events = ask(sock)
        assert [e["type"] for e in events][-1] == "response.completed"
        assert events[-1]["response"]["usage"]["output_tokens"] == completion
    sock.close()
    assert upstream.hits["WS prewarm"] == 1 and upstream.hits["WS response.create"] == 3
    # Codex's handshake reached the upstream as sent (the proxy's own headers aside).
    sent = upstream.headers[0]
    assert sent["openai-beta"] == "responses_websockets=2026-02-06" and sent["originator"] == "codex_exec"
    recorded = rows(tmp_path / "ledger.sqlite")
    assert len(recorded) == 3 and {r["state"] for r in recorded} == {"settled"}
    assert {r["outcome"] for r in recorded} == {"websocket response.completed"}
    assert [r["output_tokens"] for r in recorded] == [7, 40, 999]
    settled, held = ledger_spend(tmp_path / "ledger.sqlite")
    assert held == 0 and settled == billed(upstream) > 0


def test_a_refused_frame_never_reaches_the_upstream_and_the_socket_stays_usable(start, upstream, tmp_path):
    # Each request is billed its whole cap (about $0.01): two fit in $0.025, a third does not.
    upstream.knobs.completion_tokens = CAP
    proxy = start(rules=ruled(tmp_path, "0.025"))
    sock = CodexSocket(proxy.port, proxy.ca)
    sock.send(prewarm())
    sock.until_done()
    assert ask(sock)[-1]["type"] == "response.completed"
    assert ask(sock)[-1]["type"] == "response.completed"
    refused = ask(sock)
    assert len(refused) == 1 and refused[0]["type"] == "error" and refused[0]["status"] == 400
    assert refused[0]["error"]["type"] == "invalid_request_error"
    assert "budget" in refused[0]["error"]["message"] and "global" in refused[0]["error"]["message"]
    # Still usable: a prewarm is answered, and another billable frame is refused again.
    sock.send(prewarm())
    assert sock.until_done()[-1]["type"] == "response.completed"
    assert ask(sock)[0]["type"] == "error"
    sock.close()
    assert upstream.hits["WS response.create"] == 2 and upstream.hits["WS prewarm"] == 2
    recorded = rows(tmp_path / "ledger.sqlite")
    assert [r["decision"] for r in recorded] == ["allowed", "allowed", "refused", "refused"]
    assert all(r["rule"] == "budget:global" for r in recorded[2:])
    settled, held = ledger_spend(tmp_path / "ledger.sqlite")
    assert held == 0 and settled == billed(upstream) <= Decimal("0.025")


def test_a_frame_that_cannot_be_read_is_refused_and_recorded(start, upstream, tmp_path):
    proxy = start(rules=ruled(tmp_path))
    sock = CodexSocket(proxy.port, proxy.ca)
    sock.send("{not json")
    err = sock.recv()
    assert err["type"] == "error" and err["status"] == 400 and "cannot meter" in err["error"]["message"]
    sock.send({"type": "response.cancel"})
    assert sock.recv()["type"] == "error"
    assert ask(sock)[-1]["type"] == "response.completed"
    sock.close()
    assert upstream.hits["WS other"] == 0 and upstream.hits["WS response.create"] == 1
    recorded = rows(tmp_path / "ledger.sqlite")
    assert [(r["decision"], r["rule"]) for r in recorded] == [
        ("refused", "request_parse"),
        ("refused", "request_parse"),
        ("allowed", None),
    ]


def test_a_disconnect_with_a_reservation_open_charges_it(start, upstream, tmp_path):
    upstream.knobs.ws_stall = True  # the response is still generating when the client goes
    proxy = start(rules=ruled(tmp_path))
    sock = CodexSocket(proxy.port, proxy.ca)
    sock.send({"type": "response.create", "model": "gpt-4o", "input": "hi", "max_output_tokens": CAP})
    assert sock.recv()["type"] == "response.created"
    sock.abort()
    [row] = rows(tmp_path / "ledger.sqlite")
    assert row["state"] != "held" and row["outcome"].startswith("websocket closed")
    assert row["cost_micro"] == row["reserved_micro"] > 0  # the whole reservation
    assert upstream.hits["WS response.create"] == 1


@pytest.mark.parametrize(
    ("rules", "option"), [({"websockets": "refuse"}, {}), ({}, {"spendfuse_websockets": "refuse"})]
)
def test_refuse_mode_answers_426_and_reaches_no_upstream(start, upstream, tmp_path, rules, option):
    proxy = start(rules=ruled(tmp_path, **rules), **option)
    sock = CodexSocket(proxy.port, proxy.ca)
    sock.abort()
    assert sock.status == 426 and b"websocket_not_supported" in sock.rejected
    assert upstream.total_hits == 0
    assert rows(tmp_path / "ledger.sqlite")[0]["rule"] == "websocket"


def test_several_sockets_under_one_cap_never_overshoot(start, upstream, tmp_path):
    # Every request is billed about its reservation ($0.01): 4.5 of them fit, so exactly four
    # are served, whichever socket asks; a fifth admission would break the count.
    upstream.knobs.completion_tokens = CAP
    upstream.knobs.chunk_delay_s = 0.02  # responses overlap across sockets
    proxy = start(rules=ruled(tmp_path, "0.045"))
    served: list[int] = []
    refused: list[int] = []
    failures: list[BaseException] = []

    def agent(i: int) -> None:
        try:
            sock = CodexSocket(proxy.port, proxy.ca)
            sock.send(prewarm())
            sock.until_done()
            while True:
                last = ask(sock, f"agent {i}")[-1]
                if last["type"] != "response.completed":
                    refused.append(i)
                    break
                served.append(i)
            sock.close()
        except BaseException as e:  # noqa: BLE001 - reported below
            failures.append(e)

    threads = [threading.Thread(target=agent, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures, failures
    assert len(served) == 4 and len(refused) == 4
    assert upstream.hits["WS response.create"] == 4
    settled, held = ledger_spend(tmp_path / "ledger.sqlite")
    assert held == 0 and settled == billed(upstream) <= Decimal("0.045")


def test_another_addon_cannot_change_a_decided_frame(start, upstream, tmp_path):
    # A script after spendfuse rewrites frames after they were reserved, and passes refused ones
    # again: the transport guard, last in the chain, holds both to what was decided.
    late = Path(__file__).parent / "support" / "ws_late_addon.py"
    proxy = start(rules=ruled(tmp_path, "0.015"), scripts=(late,))
    sock = CodexSocket(proxy.port, proxy.ca)
    assert ask(sock)[-1]["type"] == "response.completed"  # served as reserved
    rewritten = ask(sock, "rewrite me")
    assert rewritten[0]["type"] == "error" and "rewrote" in rewritten[0]["error"]["message"]
    upstream.knobs.completion_tokens = CAP
    assert ask(sock)[-1]["type"] == "response.completed"
    refused = ask(sock)  # past the cap: refused, and passed again by the script
    assert refused[0]["type"] == "error" and "budget" in refused[0]["error"]["message"]
    sock.send("{not json")
    assert sock.recv()["type"] == "error"
    sock.close()
    assert upstream.hits["WS response.create"] == 2 and upstream.hits["WS other"] == 0
    recorded = rows(tmp_path / "ledger.sqlite")
    assert [(r["decision"], r["state"]) for r in recorded][:2] == [
        ("allowed", "settled"),
        ("allowed", "released"),
    ]
    settled, held = ledger_spend(tmp_path / "ledger.sqlite")
    assert held == 0 and settled == billed(upstream)


def test_dry_run_refuses_no_frame_and_records_what_it_would(start, upstream, tmp_path):
    upstream.knobs.completion_tokens = CAP
    proxy = start(rules=ruled(tmp_path, "0.015"), spendfuse_dry_run="true")
    sock = CodexSocket(proxy.port, proxy.ca)
    assert ask(sock)[-1]["type"] == "response.completed"
    sock.send("{not json")  # passed as sent: the fake answers it with its own error
    assert sock.recv()["type"] == "error"
    assert ask(sock)[-1]["type"] == "response.completed"  # past the cap: would be refused
    sock.close()
    assert upstream.hits["WS response.create"] == 2 and upstream.hits["WS other"] == 1
    recorded = rows(tmp_path / "ledger.sqlite")
    assert [(r["decision"], r["rule"]) for r in recorded] == [
        ("allowed", None),
        ("dry_run", "request_parse"),
        ("dry_run", "budget:global"),
    ]
    settled, held = ledger_spend(tmp_path / "ledger.sqlite")
    assert held == 0 and settled == billed(upstream) > Decimal("0.015")


def test_the_option_replaces_the_rules_setting(start, upstream, tmp_path):
    proxy = start(rules=ruled(tmp_path, websockets="refuse"), spendfuse_websockets="meter")
    sock = CodexSocket(proxy.port, proxy.ca)
    assert sock.status == 101 and ask(sock)[-1]["type"] == "response.completed"
    sock.close()
    assert rows(tmp_path / "ledger.sqlite")[0]["outcome"] == "websocket response.completed"


def test_two_requests_in_flight_are_reserved_apart_and_settled_in_order(start, upstream, tmp_path):
    upstream.knobs.completion_tokens = 100  # each answer is billed its own cap: 5, then 9
    proxy = start(rules=ruled(tmp_path))
    sock = CodexSocket(proxy.port, proxy.ca)
    for cap in (5, 9):  # the second is sent before the first is answered
        sock.send({"type": "response.create", "model": "gpt-4o", "input": "hi", "max_output_tokens": cap})
    first, second = sock.until_done(), sock.until_done()
    assert [
        first[-1]["response"]["usage"]["output_tokens"],
        second[-1]["response"]["usage"]["output_tokens"],
    ] == [5, 9]
    sock.close()
    recorded = rows(tmp_path / "ledger.sqlite")
    assert [(r["max_output_tokens"], r["output_tokens"], r["state"]) for r in recorded] == [
        (5, 5, "settled"),
        (9, 9, "settled"),
    ]
    settled, held = ledger_spend(tmp_path / "ledger.sqlite")
    assert held == 0 and settled == billed(upstream)


def test_a_virtual_key_upgrades_with_the_custody_key(start, upstream, tmp_path):
    """Codex holding only a virtual key: the upgrade reaches the provider with the custody key
    in its place, and its frames are metered as any other."""
    from governance.scopes import secret_hash

    real = "sk-proj-REALwebsocketCUSTODY"
    rules = write_rules(
        tmp_path / "rules.yaml",
        version=2,
        prices=PRICES,
        budgets=[{"id": "global", "max_usd": 1}],
        keys=[{"id": "codex", "secret_sha256": secret_hash("sk-proxy"), "budgets": ["global"]}],
        credentials=[{"id": "oa", "provider": "openai", "env": "OA_REAL"}],
        custody="required",
    )
    proxy = start(rules=rules, env={"OA_REAL": real})
    sock = CodexSocket(proxy.port, proxy.ca, api_key="sk-proxy")
    assert sock.status == 101
    assert ask(sock)[-1]["type"] == "response.completed"
    sock.close()
    assert upstream.headers[0]["authorization"] == f"Bearer {real}"
    [row] = rows(tmp_path / "ledger.sqlite")
    assert row["state"] == "settled" and row["principal"] == "key:codex"
    assert real not in proxy.output()
