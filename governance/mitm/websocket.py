"""Metered WebSockets (`websockets: meter`): frames in, the engine's verdicts carried out.

The fuse lets a metered upgrade through (`upgraded`) after every gate the HTTP path applies.
Here each client frame is read by `governance.websocket`: a `response.create` is reserved with
`Engine.admit` before mitmproxy passes it on (the hook holds the socket until it returns); a
refused one is dropped and the client gets the error frame in its place. Server frames settle
the reservations in order; a socket that ends with one open is charged like a broken stream.
Frames this addon injects come back through `websocket_message` and are skipped.
"""

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mitmproxy import ctx, http

from governance import refusals, verdicts
from governance import websocket as ws
from governance.engine import Engine
from governance.errors import LedgerUnavailable, RequestParseError
from governance.identity import Identity
from governance.mitm import translate
from governance.mitm.state import Decided, Pending, decided_endpoint
from governance.settlement import Settlement
from governance.store import RequestRecord
from governance.types import Endpoint, Refusal, RequestLine

if TYPE_CHECKING:
    from governance.mitm.fuse import SpendFuse

logger = logging.getLogger("spendfuse")

# Frames larger than this are parsed and tokenized off the event loop.
_OFFLOAD_BYTES = 64 * 1024


@dataclass
class Session:
    """One admitted socket: whom it was admitted for, and its requests in flight."""

    endpoint: Endpoint
    engine: Engine  # the one that admitted it: a reconfigured proxy settles in the same ledger
    who: Identity
    request_id: str  # the upgrade's; each frame is `<request_id>.<n>`
    line: RequestLine
    flow: http.HTTPFlow
    exchanges: ws.Exchanges = field(default_factory=ws.Exchanges)
    frames: int = 0

    def next_id(self) -> str:
        self.frames += 1
        return f"{self.request_id}.{self.frames}"


class WebSocketMeter:
    """The fuse's WebSocket hooks (registered with it, so they run before the transport guard)."""

    name = "spendfuse_websockets"

    def __init__(self, fuse: "SpendFuse") -> None:
        self.fuse = fuse
        self.sessions: dict[str, Session] = {}

    def upgraded(self, flow: http.HTTPFlow, endpoint: Endpoint, engine: Engine, who: Identity) -> None:
        """The upgrade was admitted: its frames are metered from now on."""
        request_id = translate.request_id(flow, self.fuse.state)
        line = translate.request_line(flow)
        self.sessions[flow.id] = Session(endpoint, engine, who, request_id, line, flow)
        # For the transport guard's check at the end of the chain, as for any request.
        self.fuse.state.flow(flow.id).decided = Decided(decided_endpoint(endpoint), None, who.principal)

    def admitted(self, flow_id: str) -> bool:
        return flow_id in self.sessions

    def take_pending(self) -> list[Pending]:
        """Every reservation still open on a socket, forgotten (at shutdown)."""
        taken = [
            Pending(info, s.endpoint, s.flow, s.engine)
            for s in self.sessions.values()
            for info in s.exchanges.reserved()
        ]
        self.sessions.clear()
        return taken

    # -- hooks --------------------------------------------------------------------------------

    def response(self, flow: http.HTTPFlow) -> None:
        if flow.id in self.sessions and (flow.response is None or flow.response.status_code != 101):
            del self.sessions[flow.id]  # the upstream declined the upgrade: no socket to meter

    def error(self, flow: http.HTTPFlow) -> None:
        if flow.websocket is None:
            self.sessions.pop(flow.id, None)

    async def websocket_message(self, flow: http.HTTPFlow) -> None:
        session = self.sessions.get(flow.id)
        if session is None or flow.websocket is None:
            return
        msg = flow.websocket.messages[-1]
        if msg.injected:
            return  # ours (an error frame), or another addon's: not the client's request
        try:
            if msg.from_client:
                await self._client_frame(flow, session, msg)
            else:
                event = ws.read_server_frame(msg.content, is_text=msg.is_text)
                if event is not None:
                    s = session.exchanges.on_server(event)
                    if s is not None:
                        await self._settle(session, s)
        except Exception as e:
            logger.exception("spendfuse: a WebSocket frame hook failed")
            if msg.from_client and not msg.dropped:
                self._refuse_frame(flow, msg, refusals.internal(type(e).__name__))

    async def websocket_end(self, flow: http.HTTPFlow) -> None:
        session = self.sessions.pop(flow.id, None)
        if session is None:
            return
        ws_data = flow.websocket
        reason = f"code {ws_data.close_code}" if ws_data is not None and ws_data.close_code else "ended"
        if flow.error is not None:
            reason = flow.error.msg.split("\n")[0][:60]
        for s in session.exchanges.closed(reason):
            await self._settle(session, s)

    # -- frames -------------------------------------------------------------------------------

    async def _client_frame(self, flow: http.HTTPFlow, session: Session, msg) -> None:  # type: ignore[no-untyped-def]
        frame = ws.read_client_frame(msg.content, is_text=msg.is_text)
        if frame.kind is ws.FrameKind.FREE:
            session.exchanges.sent(None)
            return
        if frame.kind is ws.FrameKind.REFUSE:
            assert frame.refusal is not None
            await self._record_and_refuse(flow, session, msg, session.next_id(), frame.refusal)
            return
        assert frame.body is not None
        await self._bill(flow, session, msg, frame.body)

    async def _bill(self, flow: http.HTTPFlow, session: Session, msg, body) -> None:  # type: ignore[no-untyped-def]
        """Reserve a `response.create` before it is passed on, or refuse it."""
        engine, who, endpoint = session.engine, session.who, session.endpoint
        request_id = session.next_id()

        def read():  # type: ignore[no-untyped-def]
            key_id = who.key.id if who.key else None
            return engine.read_request(
                endpoint,
                body,
                principal=who.principal,
                request_id=request_id,
                key_id=key_id,
                line=session.line,
            )

        try:
            read_ = await asyncio.to_thread(read) if len(msg.content) > _OFFLOAD_BYTES else read()
        except RequestParseError as e:
            await self._record_and_refuse(flow, session, msg, request_id, refusals.parse(str(e)))
            return
        decision = await self.fuse.on_ledger(lambda: engine.admit(read_.info, translate.now()))
        if not decision.allowed:
            assert decision.refusal is not None  # recorded by the engine
            self._refuse_frame(flow, msg, decision.refusal)
            return
        try:
            forward = engine.forward_body(read_, decision, endpoint.family)
            if forward is not None:
                msg.content = ws.forwarded_frame(forward)
            session.exchanges.sent(read_.info)
        except Exception as e:
            logger.exception("spendfuse: %s could not be forwarded after its reservation", request_id)
            what = type(e).__name__
            await self.fuse.on_ledger(
                lambda: engine.release(request_id, translate.now(), outcome=f"not forwarded: {what}")
            )
            self._refuse_frame(flow, msg, refusals.internal(what))

    async def _record_and_refuse(
        self, flow: http.HTTPFlow, session: Session, msg, request_id: str, refusal: Refusal
    ) -> None:  # type: ignore[no-untyped-def]
        """A refusal made before any reservation: recorded (best effort), then carried out."""
        rec = RequestRecord(request_id, session.who.principal, provider=session.endpoint.family, api=ws.API)
        try:
            await self.fuse.on_ledger(session.engine.record_refusal, rec, refusal, translate.now())
        except Exception as e:  # noqa: BLE001 - the refusal stands whether or not it is recorded
            logger.error("spendfuse: could not record refusal %s: %s", request_id, e)
        if verdicts.enforced(refusal, dry_run=session.engine.dry_run, what=request_id) is not None:
            self._refuse_frame(flow, msg, refusal)

    def _refuse_frame(self, flow: http.HTTPFlow, msg, refusal: Refusal) -> None:  # type: ignore[no-untyped-def]
        """Drop the client's frame and answer the error frame in its place."""
        msg.drop()
        ctx.master.commands.call("inject.websocket", flow, True, ws.error_frame(refusal))
        logger.info("spendfuse: refused a WebSocket frame to %s: %s", flow.request.host, refusal.message)

    async def _settle(self, session: Session, s: Settlement) -> None:
        try:
            await self.fuse.on_ledger(session.engine.settle, s, translate.now())
        except LedgerUnavailable as e:
            logger.error("spendfuse: %s stays held until the reaper charges it: %s", s.info.request_id, e)
