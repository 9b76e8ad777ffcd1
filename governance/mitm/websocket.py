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
class _Decided:
    """What was decided about a client frame: passed with `content` (its handle in the
    exchanges), or dropped (`content` None)."""

    message: object
    content: bytes | None
    handle: object = None


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
    last: "_Decided | None" = None  # the client frame just decided, for the guard's re-check

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
        if msg.injected and not msg.from_client:
            return  # ours (an error frame), or another addon's: not the server's answer
        # A frame injected toward the server is metered like the client's own.
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
        session.last = None
        frame = ws.read_client_frame(msg.content, is_text=msg.is_text)
        handle = None
        if frame.kind is ws.FrameKind.FREE:
            handle = session.exchanges.sent(None)
        elif frame.kind is ws.FrameKind.REFUSE:
            assert frame.refusal is not None
            handle = await self._record_and_refuse(flow, session, msg, session.next_id(), frame.refusal)
        else:
            assert frame.body is not None
            handle = await self._bill(flow, session, msg, frame.body)
        session.last = _Decided(msg, None if msg.dropped else msg.content, handle)

    async def recheck(self, flow: http.HTTPFlow) -> None:
        """At the end of the chain (the transport guard): the client frame just decided must
        still be what was decided. One dropped stays dropped; one passed whose content another
        addon changed is refused (its reservation released); one another addon dropped has its
        reservation released."""
        session = self.sessions.get(flow.id)
        if session is None or flow.websocket is None:
            return
        msg, last, session.last = flow.websocket.messages[-1], session.last, None
        if last is None or last.message is not msg:
            return
        if last.content is None:
            if not msg.dropped:
                logger.warning("spendfuse: another addon passed a WebSocket frame spendfuse refused; dropped")
                msg.drop()
            return
        if msg.dropped or msg.content != last.content:
            info = session.exchanges.withdraw(last.handle)
            if not msg.dropped:
                self._refuse_frame(flow, msg, refusals.rewritten())
            if info is not None:
                request_id = info.request_id
                await self.fuse.on_ledger(
                    lambda: session.engine.release(request_id, translate.now(), outcome="not forwarded")
                )

    async def _bill(self, flow: http.HTTPFlow, session: Session, msg, body) -> object:  # type: ignore[no-untyped-def]
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
            return await self._record_and_refuse(flow, session, msg, request_id, refusals.parse(str(e)))
        decision = await self.fuse.on_ledger(lambda: engine.admit(read_.info, translate.now()))
        if not decision.allowed:
            assert decision.refusal is not None  # recorded by the engine
            self._refuse_frame(flow, msg, decision.refusal)
            return None
        try:
            forward = engine.forward_body(read_, decision, endpoint.family)
            if forward is not None:
                msg.content = ws.forwarded_frame(forward)
            return session.exchanges.sent(read_.info)
        except Exception as e:
            logger.exception("spendfuse: %s could not be forwarded after its reservation", request_id)
            what = type(e).__name__
            await self.fuse.on_ledger(
                lambda: engine.release(request_id, translate.now(), outcome=f"not forwarded: {what}")
            )
            self._refuse_frame(flow, msg, refusals.internal(what))
            return None

    async def _record_and_refuse(
        self, flow: http.HTTPFlow, session: Session, msg, request_id: str, refusal: Refusal
    ) -> None:  # type: ignore[no-untyped-def]
        """A refusal made before any reservation: recorded (best effort), then carried out (in
        dry run the frame passes, unreserved, and is kept in order: its handle is returned)."""
        rec = RequestRecord(request_id, session.who.principal, provider=session.endpoint.family, api=ws.API)
        try:
            await self.fuse.on_ledger(session.engine.record_refusal, rec, refusal, translate.now())
        except Exception as e:  # noqa: BLE001 - the refusal stands whether or not it is recorded
            logger.error("spendfuse: could not record refusal %s: %s", request_id, e)
        if verdicts.enforced(refusal, dry_run=session.engine.dry_run, what=request_id) is None:
            return session.exchanges.sent(None)
        self._refuse_frame(flow, msg, refusal)
        return None

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
