"""A client that hangs up mid-stream is charged for what the upstream generated: the upstream is
read on to its end (and its final usage), within bounds, instead of being closed with the client.

mitmproxy closes a flow's upstream connection as soon as its client goes away (measured: the
upstream saw the close within 0.1 s), and the usage of an OpenAI or Anthropic stream comes at its
end, so the flow would settle at its whole reservation. Here:

1. the HTTP layer of each client connection passes on every command but one: the close of a
   streaming flow's upstream connection caused by the client's own close (`keep_upstream`);
2. the flow's `error` hook ("Client disconnected.") leaves the reservation open (`hung_up`); the
   tap reads on, sending nothing; the upstream's end fires `response`, which settles the usage;
3. the client connection's `client_disconnected` hook waits for its drains (mitmproxy closes
   every upstream of a connection right after that hook);
4. bounds: a drain that lasts `DRAIN_SECONDS` or reads `DRAIN_BYTES` is stopped, its upstream
   closed, and the reservation charged (`stop`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mitmproxy import http
from mitmproxy.proxy import commands, events, layers

from governance.mitm import streams
from governance.mitm.state import Pending
from governance.settlement import Settlement

if TYPE_CHECKING:
    from governance.mitm.fuse import SpendFuse

logger = logging.getLogger("spendfuse")

DRAIN_SECONDS = 60.0  # the longest an abandoned stream is read on
DRAIN_BYTES = 16 * 1024 * 1024  # the most bytes read from it after the client went away


@dataclass
class Drain:
    flow: http.HTTPFlow
    pending: Pending
    done: asyncio.Event = field(default_factory=asyncio.Event)
    timer: asyncio.TimerHandle | None = None


class Drains:
    """The streams being read on after their client went away, by flow id."""

    def __init__(self, fuse: SpendFuse, settle: Callable[[Pending, Settlement], Awaitable[None]]) -> None:
        self.fuse = fuse
        self.settle = settle  # the fuse's own settling (the ledger, then the flow's marks)
        self.active: dict[str, Drain] = {}

    def wants(self, flow: http.HTTPFlow) -> bool:
        """Whether the flow is a metered stream in mid-body, whose upstream is worth reading on."""
        pending = self.fuse.state.pending(flow.id)
        tap = pending.tap if pending is not None else None
        return (
            tap is not None
            and tap.chunks > 0
            and not tap.ended
            and tap.cut is None
            and tap.usage is None
            and flow.response is not None
            and flow.response.stream is not False
        )

    def hung_up(self, flow: http.HTTPFlow) -> bool:
        """In `error`: whether the flow's client went away from a stream being drained. True:
        its reservation stays open (the stream's end settles it)."""
        if flow.id not in self.active:
            return False
        logger.info("spendfuse: %s: the client went away; reading the stream on to its usage", flow.id)
        return True

    def started(self, flow: http.HTTPFlow) -> None:
        """The client of this streaming flow went away and its upstream stays open: the tap
        reads on, passing nothing, within the drain's bounds."""
        pending = self.fuse.state.pending(flow.id)
        assert pending is not None and pending.tap is not None  # `wants` checked it
        drain = self.active[flow.id] = Drain(flow, pending)
        tap = pending.tap
        tap.hung_up, tap.drain_limit = True, DRAIN_BYTES
        tap.on_overflow = lambda why: self.stop(flow.id, f"the client went away, and then {why}")
        drain.timer = asyncio.get_running_loop().call_later(
            DRAIN_SECONDS, self.stop, flow.id, "the client went away, and then it passed the drain's time"
        )

    def finished(self, flow_id: str) -> None:
        """The drained stream ended (its `response` settled it)."""
        drain = self.active.pop(flow_id, None)
        if drain is not None:
            if drain.timer is not None:
                drain.timer.cancel()
            drain.done.set()

    def stop(self, flow_id: str, why: str) -> None:
        """Give up on a drain: close its upstream and charge its reservation."""
        drain = self.active.pop(flow_id, None)
        if drain is None:
            return
        if drain.timer is not None:
            drain.timer.cancel()
        self.fuse.state.end(flow_id)
        streams.close_upstream(drain.flow)
        settlement = Settlement(drain.pending.info, None, f"error: {why}"[:120], upstream_ran=True)

        async def settle() -> None:
            try:
                await self.settle(drain.pending, settlement)
            finally:
                drain.done.set()

        asyncio.get_running_loop().create_task(settle())

    def wait(self, client_id: str) -> Awaitable[None] | None:
        """In `client_disconnected`: an awaitable that ends when the drains of the client's flows
        are over (mitmproxy closes every upstream of a connection right after that hook); None
        when it has none, so the hook stays synchronous for every other connection."""
        drains = [d for d in self.active.values() if d.flow.client_conn.id == client_id]
        if not drains:
            return None

        async def until_drained() -> None:
            try:
                await asyncio.wait_for(asyncio.gather(*(d.done.wait() for d in drains)), DRAIN_SECONDS + 5)
            except TimeoutError:
                logger.warning("spendfuse: a drained stream outlived its bound; its connection is closed")

        return until_drained()


def _filtered(
    lay: Any, drop: Callable[[events.Event, commands.Command], bool], before: Callable[[], None]
) -> None:
    """Make `lay` pass on every command its `_handle_event` yields but those `drop` picks (which
    are not blocking: no result is owed for them); results go back as they come. `before` runs
    ahead of each event."""
    inner = lay._handle_event

    def handle(event: events.Event) -> Generator[commands.Command, Any, None]:
        before()
        gen = inner(event)
        try:
            command = next(gen)
            while True:
                if drop(event, command):
                    command = gen.send(None)
                    continue
                result = yield command
                command = gen.send(result)
        except StopIteration:
            return

    lay._handle_event = handle


def keep_upstream(http_layer: layers.HttpLayer, drains: Drains) -> None:
    """Let the HTTP layer of a client connection keep a streaming flow's upstream open when the
    client closes: the upstream's close that the client's own close causes is dropped, and so is
    the stream's removal from the layer (its answer still has to be read); the flow is drained."""
    held: dict[int, tuple[str, Any]] = {}  # stream id -> (flow id, HTTP stream) being drained

    def restore() -> None:
        # The stream drops itself from the layer once its error hook returns: put it back while
        # its drain lasts, so the rest of its answer reaches it (and the tap).
        for stream_id, (flow_id, stream) in list(held.items()):
            if flow_id not in drains.active:
                del held[stream_id]
            elif stream_id not in http_layer.streams:
                http_layer.streams[stream_id] = stream

    def drop(event: events.Event, command: commands.Command) -> bool:
        client_gone = (
            isinstance(event, events.ConnectionClosed) and event.connection == http_layer.context.client
        )
        if not client_gone or not isinstance(command, commands.CloseConnection):
            return False
        found = _drained(http_layer, command, drains)
        if found is None:
            return False
        flow, stream = found
        drains.started(flow)
        held[stream.stream_id] = (flow.id, stream)
        return True

    _filtered(http_layer, drop, restore)


def _drained(
    http_layer: layers.HttpLayer, command: commands.CloseConnection, drains: Drains
) -> tuple[http.HTTPFlow, Any] | None:
    """The flow (and its HTTP stream) whose upstream `command` closes, when that upstream should
    be drained instead."""
    if command.connection == http_layer.context.client:
        return None
    for stream in list(http_layer.streams.values()):
        flow = getattr(stream, "flow", None)
        if flow is not None and flow.server_conn == command.connection and drains.wants(flow):
            return flow, stream
    return None
