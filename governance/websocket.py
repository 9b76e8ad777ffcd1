"""Metering a WebSocket to the Responses API (`wss://…/v1/responses`, Codex's first transport).

The rules' `websockets: meter` lets the upgrade through (`metered_upgrade`); on the socket, each
client frame is read here as plain bytes:

- `response.create` is a Responses request body (its `type` aside): read, reserved and forwarded
  like `POST /v1/responses`, before it is passed on (`BILL`);
- Codex's prewarm (`"generate": false`, no input) runs no model: passed unreserved (`FREE`);
- anything else is refused (`REFUSE`): a frame that cannot be read, a binary frame, or another
  type. Only `response.create` is passed because the server's answers are matched to the
  requests in order: a frame the server answers with an `error` of its own could otherwise be
  taken for the end of a reserved request that is still running.

A refused frame is dropped and the client gets `error_frame` in its place (measured: Codex stops
at once and prints the message). `Exchanges` pairs the server's frames with the requests in
flight, in order, and says how each settles (`governance.settlement.Settlement`): by the usage of
its `response.completed`, `.failed` or `.incomplete`, released when the server refused it before
starting it, and charged in full when the socket closes while it is open (like a broken stream).
"""

from __future__ import annotations

import enum
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from governance import refusals, wire
from governance.settlement import Settlement
from governance.types import Endpoint, Metering, Refusal, RequestInfo, Usage

logger = logging.getLogger(__name__)

#: The only family and API metered over a WebSocket (the Realtime API's audio sessions are not).
FAMILY = "openai"
API = "responses"
CREATE = "response.create"
_TERMINAL = frozenset({"response.completed", "response.failed", "response.incomplete"})
_CREATED = "response.created"
# Server frames worth parsing: the rest (deltas, the bulk of a response) pass unread.
_MARKERS = (
    b'"response.created"',
    b'"response.completed"',
    b'"response.failed"',
    b'"response.incomplete"',
    b'"error"',
)


def metered_upgrade(endpoint: Endpoint | None, tokens: list[str], mode: str) -> bool:
    """Whether an upgrade is let through to be metered frame by frame: the rules meter
    WebSockets, it asks for `websocket` alone, and its route, posted, is a metered Responses
    request (`endpoint` is how the route classifies as a POST)."""
    return (
        mode == "meter"
        and tokens == ["websocket"]
        and endpoint is not None
        and endpoint.metering is Metering.METERED
        and endpoint.family == FAMILY
        and endpoint.api == API
    )


class FrameKind(enum.Enum):
    BILL = "bill"  # a response.create: reserve it, then pass it on
    FREE = "free"  # a prewarm: runs no model
    REFUSE = "refuse"  # drop it and answer `error_frame`


@dataclass(frozen=True)
class ClientFrame:
    kind: FrameKind
    body: Mapping[str, Any] | None = None  # BILL: the Responses request body (without `type`)
    refusal: Refusal | None = None  # REFUSE: why


def _empty(value: Any) -> bool:
    return value is None or value == [] or value == ""


def read_client_frame(content: bytes, *, is_text: bool) -> ClientFrame:
    """What a client frame asks for (see the module doc). Fails closed."""
    if not is_text:
        return ClientFrame(
            FrameKind.REFUSE, refusal=refusals.parse("a binary WebSocket frame cannot be metered")
        )
    try:
        obj = json.loads(content)
    except ValueError:
        obj = None
    if not isinstance(obj, dict):
        return ClientFrame(
            FrameKind.REFUSE, refusal=refusals.parse("a WebSocket frame that is not a JSON object")
        )
    kind = obj.get("type")
    if kind != CREATE:
        shown = kind if isinstance(kind, str) else json.dumps(kind)[:40]
        return ClientFrame(
            FrameKind.REFUSE,
            refusal=refusals.parse(
                f"only response.create frames are metered on this WebSocket, not {shown!r}"
            ),
        )
    if obj.get("generate") is False and _empty(obj.get("input")) and _empty(obj.get("previous_response_id")):
        return ClientFrame(FrameKind.FREE)
    return ClientFrame(FrameKind.BILL, body={k: v for k, v in obj.items() if k != "type"})


def forwarded_frame(body: Mapping[str, Any]) -> bytes:
    """The `response.create` frame that carries a prepared body (one the engine changed)."""
    return json.dumps({"type": CREATE, **body}, separators=(",", ":")).encode()


def error_frame(refusal: Refusal) -> bytes:
    """The text frame a refused frame is answered with: OpenAI's WebSocket error event with
    status 400, which Codex maps like an HTTP 400 (fatal, message shown)."""
    event = {
        "type": "error",
        "status": 400,
        "error": {"type": "invalid_request_error", "message": refusal.message},
    }
    return json.dumps(event, separators=(",", ":")).encode()


@dataclass(frozen=True)
class ServerEvent:
    kind: str  # "created" | "terminal" | "error"
    type: str  # the event's own type
    response_id: str | None = None
    usage: Usage | None = None
    status: int | None = None  # an error event's status


def read_server_frame(content: bytes, *, is_text: bool) -> ServerEvent | None:
    """The event a server frame reports, when it matters to settling (None: pass it unread)."""
    if not is_text or not any(m in content for m in _MARKERS):
        return None
    try:
        obj = json.loads(content)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        return None
    kind = obj["type"]
    resp = obj.get("response") if isinstance(obj.get("response"), Mapping) else {}
    rid = resp.get("id") if isinstance(resp.get("id"), str) else None
    if kind == _CREATED:
        return ServerEvent("created", kind, rid)
    if kind in _TERMINAL:
        usage = wire.FAMILIES[FAMILY].usage_from_body(API, resp)
        return ServerEvent("terminal", kind, rid, usage)
    if kind == "error":
        status = obj.get("status")
        return ServerEvent("error", kind, status=status if isinstance(status, int) else None)
    return None


@dataclass(eq=False)  # each is itself: two free frames are still two
class _InFlight:
    info: RequestInfo | None  # None: a free frame (a prewarm), nothing reserved
    response_id: str | None = None  # once the server created its response
    started: bool = False


@dataclass
class Exchanges:
    """The requests in flight on one socket, oldest first, and how each settles. Pure: the
    caller carries out the settlements it returns."""

    open: list[_InFlight] = field(default_factory=list)

    def sent(self, info: RequestInfo | None) -> object:
        """A request frame was passed on (`info`: its reservation; None: free). Returns a handle
        for `withdraw`."""
        entry = _InFlight(info)
        self.open.append(entry)
        return entry

    def withdraw(self, handle: object) -> RequestInfo | None:
        """A frame `sent` was not passed on after all (dropped later): forget it, and return its
        reservation to release (None: it had none, or it is no longer open)."""
        if handle not in self.open:
            return None
        self.open.remove(handle)  # type: ignore[arg-type]
        return handle.info  # type: ignore[attr-defined]

    def reserved(self) -> list[RequestInfo]:
        return [f.info for f in self.open if f.info is not None]

    def on_server(self, event: ServerEvent) -> Settlement | None:
        """What a server event settles. `response.created` starts the oldest request not yet
        started; a terminal event ends the request with its response id (else the oldest), at its
        usage (none: its whole reservation); an `error` before a request started means the server
        refused it: released. An error after every request started settles nothing (which one it
        ends is unknown): the socket's close charges what is still open."""
        if event.kind == "created":
            waiting = next((f for f in self.open if not f.started), None)
            if waiting is not None:
                waiting.started, waiting.response_id = True, event.response_id
            return None
        if event.kind == "terminal":
            done = next((f for f in self.open if f.response_id and f.response_id == event.response_id), None)
            done = done or (self.open[0] if self.open else None)
            if done is None:
                return None
            self.open.remove(done)
            if done.info is None:
                if event.usage is not None and (event.usage.input_tokens or event.usage.output_tokens):
                    # A prewarm is taken to run no model; one that reports usage says otherwise.
                    logger.warning(
                        "a free WebSocket frame reported usage (%s); it was not reserved", event.usage
                    )
                return None
            return Settlement(done.info, event.usage, f"websocket {event.type}", upstream_ran=True)
        waiting = next((f for f in self.open if not f.started), None)
        if waiting is None:
            return None
        self.open.remove(waiting)
        if waiting.info is None:
            return None
        outcome = f"upstream_error_{event.status}" if event.status else "upstream_error"
        return Settlement(waiting.info, None, f"websocket {outcome}", upstream_ran=False)

    def closed(self, reason: str) -> list[Settlement]:
        """Every reservation still open when the socket closed: charged in full (the upstream
        had each frame, and may have billed it), like a broken stream."""
        out = [
            Settlement(f.info, None, f"websocket closed: {reason}", upstream_ran=True)
            for f in self.open
            if f.info
        ]
        self.open.clear()
        return out
