"""The fake upstream's WebSocket `/v1/responses` (what Codex opens first): each `response.create`
frame is answered with the Responses events as text frames, billed with the fake's own count
(its knobs, within the frame's `max_output_tokens`), like the HTTP route. A prewarm
(`"generate": false`) is answered without billing. Frames are counted in `hits`:
`WS upgrade`, `WS response.create`, `WS prewarm`, `WS other`."""

from __future__ import annotations

import json
import time
from typing import Any

import wsproto
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.handshake import generate_accept_token


def is_upgrade(headers: Any) -> bool:
    return "websocket" in headers.get("upgrade", "").lower()


def serve(handler: Any) -> None:
    """Answer the upgrade on `handler`'s connection, then serve frames until the client closes."""
    up = handler.upstream
    with up.lock:
        up.hits["WS upgrade"] += 1
        up.headers.append({k.lower(): v for k, v in handler.headers.items()})
    accept = generate_accept_token(handler.headers["sec-websocket-key"].encode())
    handler.send_response(101)
    handler.send_header("Upgrade", "websocket")
    handler.send_header("Connection", "Upgrade")
    handler.send_header("Sec-WebSocket-Accept", accept.decode())
    handler.end_headers()
    handler.wfile.flush()
    conn = wsproto.Connection(wsproto.ConnectionType.SERVER)
    text: list[str] = []
    while True:
        try:
            data = handler.rfile.read1(65536)
        except OSError:
            data = b""
        conn.receive_data(data or None)
        for event in conn.events():
            if isinstance(event, TextMessage):
                text.append(event.data)
                if event.message_finished:
                    _frame(handler, conn, "".join(text))
                    text = []
            elif isinstance(event, BytesMessage):
                with up.lock:
                    up.hits["WS other"] += 1
            elif isinstance(event, Ping):
                _send(handler, conn, event.response())
            elif isinstance(event, CloseConnection):
                if conn.state is wsproto.connection.ConnectionState.REMOTE_CLOSING:
                    _send(handler, conn, event.response())
                return
        if not data:
            return


def _send(handler: Any, conn: wsproto.Connection, event: Any) -> None:
    handler.wfile.write(conn.send(event))
    handler.wfile.flush()


def _event(handler: Any, conn: wsproto.Connection, obj: dict[str, Any]) -> None:
    _send(handler, conn, TextMessage(json.dumps(obj)))


def _frame(handler: Any, conn: wsproto.Connection, data: str) -> None:
    from tests.support.fake_upstream import _bill

    up, k = handler.upstream, handler.upstream.knobs
    try:
        body = json.loads(data)
    except ValueError:
        body = {}
    if body.get("type") != "response.create":
        with up.lock:
            up.hits["WS other"] += 1
        _event(handler, conn, {"type": "error", "status": 400, "error": {"type": "invalid_request_error"}})
        return
    model = body.get("model", "?")
    prewarm = body.get("generate") is False
    cap = body.get("max_output_tokens")
    output = 0 if prewarm else min([k.completion_tokens, *([cap] if isinstance(cap, int) else [])])
    input_tokens = 0 if prewarm else k.prompt_tokens
    with up.lock:
        up.hits["WS prewarm" if prewarm else "WS response.create"] += 1
        up.bodies.append(body)
        rid = f"resp_ws_{len(up.contexts) + 1}"
        up.contexts[rid] = input_tokens + output
        if not prewarm:
            up.billed.append({"model": model, "input_tokens": input_tokens, "output_tokens": output})
            bill = _bill(model, handler.headers.get("host", ""), input_tokens, output, 0, None)
            if bill is not None:
                up.bills.append({"model": model, "usd": bill})
    response = {"id": rid, "object": "response", "model": model, "status": "in_progress", "usage": None}
    _event(handler, conn, {"type": "response.created", "sequence_number": 0, "response": response})
    if k.ws_stall and not prewarm:
        return  # generating until the client goes away: no terminal event
    for i in range(0 if prewarm else k.chunks):
        if k.chunk_delay_s:
            time.sleep(k.chunk_delay_s)
        _event(
            handler, conn, {"type": "response.output_text.delta", "sequence_number": i + 1, "delta": f"w{i} "}
        )
    usage = {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output,
    }
    final = {**response, "status": "completed", "usage": usage}
    _event(handler, conn, {"type": "response.completed", "sequence_number": k.chunks + 1, "response": final})
