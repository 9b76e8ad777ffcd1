"""Streamed responses on the proxy side: the tap installed on each, the upstream of a runaway
closed, and how a streamed flow's end is settled. Only translation: when to cut is the tap's
decision (`governance.families.tap`), what to charge the engine's (`governance.settlement`)."""

from __future__ import annotations

import asyncio
import functools
import logging

from mitmproxy import ctx, http

from governance.families.tap import StreamTap
from governance.mitm import translate
from governance.mitm.state import Pending
from governance.settlement import Settlement, read_cut, stream_tap

logger = logging.getLogger("spendfuse")


def install_tap(flow: http.HTTPFlow, pending: Pending) -> StreamTap | None:
    """Stream an event-stream response through the tap that reads its usage and guards it
    against running away (`governance.settlement.stream_tap`), and return it; any other
    response is buffered (None)."""
    assert flow.response is not None
    headers = flow.response.headers
    tap = stream_tap(
        pending.info,
        pending.endpoint.family,
        headers.get("content-type", ""),
        headers.get("content-encoding", ""),
        sized="content-length" in headers,
        margins=pending.engine.policy.estimate.script_margins,
    )
    if tap is not None:
        tap.on_cut = functools.partial(close_upstream, flow)
        pending.tap = tap
        flow.response.stream = tap
    return tap


def close_upstream(flow: http.HTTPFlow) -> None:
    """Close the flow's upstream connection, soon (not from inside the stream function that
    asks for it). mitmproxy does not honour `flow.kill()` while a body streams; closing the
    server connection stops the upstream, and the flow then ends in `error` (or `response`, if
    the upstream had already finished). Each metered stream has an upstream connection of its
    own (HTTP/1.1 upstream, `governance.mitm.guard`), so no other stream is touched."""

    def close() -> None:
        proxyserver = ctx.master.addons.get("proxyserver")
        handler = proxyserver.connections.get(flow.client_conn.id) if proxyserver is not None else None
        if handler is not None and flow.server_conn in handler.transports:
            handler.close_connection(flow.server_conn)

    asyncio.get_running_loop().call_soon(close)


def response_settlement(flow: http.HTTPFlow, pending: Pending) -> Settlement:
    """How an answered flow settles: a stream spendfuse cut at its reservation, else by what
    the upstream answered."""
    tap = pending.tap
    if tap is not None and tap.cut:
        return read_cut(pending.info, tap.cut)
    facts = translate.response_facts(flow, tap, pending.endpoint.family)
    return pending.engine.read_response(pending.info, pending.endpoint.family, facts)


def error_settlement(flow: http.HTTPFlow, pending: Pending) -> Settlement:
    """How a failed flow settles: a stream spendfuse cut at its reservation, else by the usage
    its stream showed, or its hold when the upstream was reached."""
    tap = pending.tap
    if tap is not None and tap.cut:
        return read_cut(pending.info, tap.cut)
    return pending.engine.read_error(
        pending.info,
        tap.usage if tap is not None else None,
        reached=translate.reached_upstream(flow),
        error=flow.error.msg if flow.error else "error",
    )
