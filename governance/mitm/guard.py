"""The transport guard: the part of spendfuse that runs at the END of the addon chain."""

import logging
from typing import TYPE_CHECKING

from mitmproxy import ctx, http, tcp, udp
from mitmproxy.proxy import commands, events, layer, layers
from mitmproxy.proxy.layers.tls import parse_client_hello
from mitmproxy.tls import ClientHelloData

from governance import refusals, verdicts
from governance.errors import LedgerUnavailable
from governance.mitm import custody, translate
from governance.mitm.drain import keep_upstream
from governance.store import RequestRecord
from governance.types import Refusal

if TYPE_CHECKING:
    from governance.mitm.fuse import SpendFuse

logger = logging.getLogger("spendfuse")

_RAW_LAYERS = (layers.TCPLayer, layers.UDPLayer, layers.RawQuicLayer)


class _Refused(layer.Layer):
    """Takes the place of a layer spendfuse refuses: closes the client's connection at the first
    event, so not one byte is relayed."""

    def __init__(self, context, reason: str) -> None:  # type: ignore[no-untyped-def]
        super().__init__(context)
        self.reason = reason
        self.closed = False

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if not self.closed:
            self.closed = True
            yield commands.Log(f"spendfuse: closed a connection: {self.reason}", logging.WARNING)
            yield commands.CloseConnection(self.context.client)


def _layer_chain(first: layer.Layer | None) -> list[layer.Layer]:
    chain = []
    while first is not None and len(chain) < 16:
        chain.append(first)
        first = getattr(first, "child_layer", None)
    return chain


def _hello_sni(data: bytes) -> str | None:
    try:
        hello = parse_client_hello(data)
    except Exception:  # noqa: BLE001 - not a ClientHello we can read: no name from it
        return None
    return hello.sni if hello is not None else None


class TransportGuard:
    """Runs after mitmproxy's own NextLayer has chosen how to carry a connection. Every byte to an
    LLM host must travel in an HTTP flow that spendfuse decided on, so a connection that would be
    relayed raw (TCP, UDP, QUIC that is not HTTP/3) toward an LLM host, by any of its names, is
    closed, and a TLS passthrough of one is turned back into interception. It only translates:
    the decisions are `Engine.screen_raw`'s and `Engine.screen`'s."""

    name = "spendfuse_transport_guard"

    def __init__(self, fuse: "SpendFuse") -> None:
        self.fuse = fuse

    def _names(self, conn_client, conn_server, data: bytes = b"") -> list[str]:  # type: ignore[no-untyped-def]
        names = []
        if conn_server is not None and conn_server.address:
            names.append(str(conn_server.address[0]))
        if conn_client is not None:
            if conn_client.sni:
                names.append(conn_client.sni)
            if connect := self.fuse.state.connect_target(conn_client.id):
                names.append(connect)
        if data and (sni := _hello_sni(data)):
            names.append(sni)
        return names

    def _refusal(self, names: list[str], port: int | None, protocol: str) -> Refusal | None:
        engine = self.fuse.engine
        if engine is None:
            return refusals.internal("not configured")
        refusal = engine.screen_raw(names, port, protocol)
        return verdicts.enforced(refusal, dry_run=engine.dry_run, what=f"a {protocol} connection")

    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        try:
            self._next_layer(nextlayer)
        except Exception as e:  # noqa: BLE001 - fail closed: a layer that was not checked never runs
            logger.exception("spendfuse: checking a connection's next layer failed")
            if nextlayer.layer is not None and not isinstance(nextlayer.layer, layers.HttpLayer):
                nextlayer.layer = _Refused(nextlayer.context, f"internal error ({type(e).__name__})")

    def _next_layer(self, nextlayer: layer.NextLayer) -> None:
        chosen = nextlayer.layer
        if chosen is None:
            return
        context = nextlayer.context
        data = nextlayer.data_client()
        raw = next((lay for lay in _layer_chain(chosen) if isinstance(lay, _RAW_LAYERS)), None)
        if isinstance(chosen, layers.HttpLayer):
            keep_upstream(chosen, self.fuse.drains)  # a stream whose client hangs up is read on
        if raw is None:
            if isinstance(chosen, layers.HttpLayer) and 0 < len(data) < 3 and data[0] == 0x16:
                # The first bytes of a TLS record, split off by the client: wait for the rest
                # rather than parse them as HTTP.
                nextlayer.layer = None
            return
        port = context.server.address[1] if context.server.address else None
        protocol = {layers.TCPLayer: "raw TCP", layers.UDPLayer: "UDP"}.get(type(raw), "QUIC")
        refusal = self._refusal(self._names(context.client, context.server, data), port, protocol)
        if refusal is not None:
            nextlayer.layer = _Refused(context, refusal.message)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """After every other addon's `requestheaders`: no request body is streamed upstream.

        mitmproxy forwards a request whose `stream` is set as its body arrives, and runs the
        `request` hooks only afterwards, so spendfuse would decide on a request the provider
        already has. Whatever set it (an option, another addon, a later `-s` script), it is undone
        here, for every request: none is decided yet, and any of them may turn out to be LLM
        traffic once its body is read. The body is then buffered and checked as usual."""
        if flow.request.stream:
            flow.request.stream = False
            logger.warning(
                "spendfuse: %s %s: another addon asked to stream the request body upstream before "
                "spendfuse decided on it; it is buffered and checked instead",
                flow.id,
                flow.request.pretty_url,
            )

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """After every other addon's `responseheaders`: the usage tap still reads what the
        upstream sends. Another addon that streams the response (`True`, or a function of its
        own) would otherwise take the tap's place, and the stream would settle without usage, at
        its whole reservation. Its function still runs, on the bytes the tap passed on."""
        pending = self.fuse.state.pending(flow.id)
        tap = pending.tap if pending is not None else None
        if tap is None or flow.response is None or flow.response.stream is tap:
            return
        other = flow.response.stream
        if callable(other):
            flow.response.stream = tap.then(other)
        elif other:
            flow.response.stream = tap
        # Buffered after all (stream False): `response` reads usage from the whole body.

    async def request(self, flow: http.HTTPFlow) -> None:
        """After every other addon (map_remote, modify_body, later scripts): a request must still
        be what spendfuse decided. One decided as not LLM traffic must not have become LLM
        traffic; one metered must still go to the same LLM host with the body it was priced for."""
        fuse = self.fuse
        fs = fuse.state.flows.get(flow.id)
        decided = fs.decided if fs is not None else None
        engine = fuse.engine
        if fs is None or decided is None or flow.response is not None or engine is None:
            return
        fs.decided = None
        endpoint = None
        try:
            verdict = engine.screen(translate.incoming(flow, fuse.state))
            endpoint = verdict.endpoint
            changed = not decided.still(verdict) or (
                decided.body is not None and translate.priced_fingerprint(flow) != decided.body
            )
        except Exception:  # noqa: BLE001 - the request cannot be re-checked: it is refused below
            logger.exception("spendfuse: re-checking %s at the end of the chain failed", flow.id)
            changed = True
        if not changed:
            plan, fs.custody = fs.custody, None
            if plan is not None and plan.strip:
                # Last in the chain: no other addon's request hook sees the custody key.
                injected = custody.inject(flow.request, plan)
                if injected is not None:
                    fuse.redactor.sending(flow, injected)
            return
        refusal = refusals.rewritten()
        logger.warning("spendfuse: %s %s", flow.id, refusal.message)
        pending, fs.pending = fs.pending, None
        if pending is None:
            # Recorded under whom it was decided for: its own headers are stripped by now.
            rec = RequestRecord(translate.request_id(flow, fuse.state), decided.principal)
            await fuse.refuse_early(flow, endpoint, rec, refusal)  # recorded, and answered
            return
        request_id = pending.info.request_id  # its row exists: the hold is released, not charged
        try:
            await fuse.on_ledger(
                lambda: pending.engine.release(
                    request_id, translate.now(), outcome="rewritten after admission"
                )
            )
        except LedgerUnavailable as e:  # the refusal stands; the reaper charges the hold later
            logger.error("spendfuse: could not release %s after refusing it: %s", request_id, e)
        fuse.answer(flow, endpoint, refusal)

    def tls_clienthello(self, data: ClientHelloData) -> None:
        if not data.ignore_connection:
            return
        try:
            names = self._names(data.context.client, data.context.server)
            if data.client_hello.sni:
                names.append(data.client_hello.sni)
            port = data.context.server.address[1] if data.context.server.address else None
            if self._refusal(names, port, "TLS passthrough") is not None:
                data.ignore_connection = False  # intercept it, so its requests are screened
        except Exception:  # noqa: BLE001 - fail closed: intercept what could not be checked
            logger.exception("spendfuse: checking a TLS passthrough failed; intercepting it")
            data.ignore_connection = False

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        self._raw_flow_start(flow, "raw TCP")

    def udp_start(self, flow: udp.UDPFlow) -> None:
        self._raw_flow_start(flow, "UDP")

    def _raw_flow_start(self, flow: tcp.TCPFlow | udp.UDPFlow, protocol: str) -> None:
        port = flow.server_conn.address[1] if flow.server_conn.address else None
        try:
            refusal = self._refusal(self._names(flow.client_conn, flow.server_conn), port, protocol)
        except Exception as e:  # noqa: BLE001 - fail closed: a flow that was not checked never connects
            logger.exception("spendfuse: checking a %s flow failed", protocol)
            refusal = refusals.internal(type(e).__name__)
        if refusal is not None:
            # Before the layer opens its server connection: an error set now stops the connect.
            flow.server_conn.error = refusal.message
            if flow.killable:
                flow.kill()
            logger.warning("spendfuse: %s", refusal.message)

    def websocket_start(self, flow: http.HTTPFlow) -> None:
        engine = self.fuse.engine
        if engine is None or engine.dry_run or self.fuse.websockets.admitted(flow.id):
            return  # a metered WebSocket (`websockets: meter`): its frames are metered
        verdict = engine.screen(translate.incoming(flow, self.fuse.state))
        if verdict.endpoint is None:
            return
        # Upgrades to LLM hosts are refused in `request`; one that got here anyway is closed.
        self.fuse.state.flow(flow.id).unadmitted_websocket = True
        logger.warning("spendfuse: closing a WebSocket to %s that was never admitted", verdict.endpoint.host)
        proxyserver = ctx.master.addons.get("proxyserver")
        handler = proxyserver.connections.get(flow.client_conn.id) if proxyserver is not None else None
        if handler is not None:
            handler.close_connection(flow.server_conn)
            handler.close_connection(flow.client_conn)

    async def websocket_message(self, flow: http.HTTPFlow) -> None:
        fs = self.fuse.state.flows.get(flow.id)
        if fs is not None and fs.unadmitted_websocket and flow.websocket is not None:
            flow.websocket.messages[-1].drop()
            return
        await self.fuse.websockets.recheck(flow)  # a metered socket's frame is still what was decided

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self.fuse.state.flows.pop(flow.id, None)
