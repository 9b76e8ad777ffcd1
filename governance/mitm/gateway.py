"""The gateway listener, mitmproxy side: a reverse-mode listener whose requests name their
upstream by path prefix (`governance.gateway`), for clients that take a base URL and no proxy.

`--set spendfuse_gateway=PORT` (or `spendfuse run --gateway PORT`) adds the listener
`reverse:http://gateway.spendfuse.invalid@PORT` beside the others; giving that `--mode` by hand does the
same. The fuse calls `route` first thing in its `request` hook, so the flow it screens, meters and
records is the rewritten one, whatever addons run around it: the same decisions, ledger and
refusals as proxy mode. A request that names no upstream is answered 404 and never forwarded."""

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from mitmproxy import ctx, exceptions, http
from mitmproxy.proxy import mode_specs

from governance import gateway
from governance.errors import PolicyError
from governance.gateway import Route, Router
from governance.ledger import RequestRecord
from governance.mitm import translate

if TYPE_CHECKING:
    from governance.mitm.fuse import SpendFuse

logger = logging.getLogger("spendfuse")

#: Set on a routed flow: the prefix it was routed by.
METADATA = "spendfuse_gateway"


def is_gateway(mode: mode_specs.ProxyMode) -> bool:
    """Whether `mode` is spendfuse's gateway listener."""
    return isinstance(mode, mode_specs.ReverseMode) and gateway.is_gateway_target(
        mode.scheme, mode.address[0]
    )


class Gateway:
    """The routing table in force and the listener option. `__init__` does no I/O."""

    def __init__(self) -> None:
        self.router: Router | None = None

    def configure(self, updated: set[str]) -> None:
        """Load the table (fail closed: a bad one stops the proxy) and add the listener that
        `spendfuse_gateway` names to mitmproxy's modes."""
        o = ctx.options
        if "spendfuse_gateway_routes" in updated or self.router is None:
            path = o.spendfuse_gateway_routes or str(gateway.DEFAULT_ROUTES)
            try:
                self.router = gateway.load(Path(path).expanduser())
            except PolicyError as e:
                raise exceptions.OptionsError(f"spendfuse_gateway_routes: {e}") from e
        for spec in o.mode:
            try:
                mode = mode_specs.ProxyMode.parse(spec)
            except ValueError:
                continue  # mitmproxy's own check reports it
            if isinstance(mode, mode_specs.ReverseMode) and mode.address[0] == gateway.GATEWAY_TARGET:
                if not is_gateway(mode):
                    raise exceptions.OptionsError(
                        f"the gateway listener is reverse:{gateway.GATEWAY_SCHEME}://"
                        f"{gateway.GATEWAY_TARGET}@PORT, not {spec!r}"
                    )
        if "spendfuse_gateway" in updated and o.spendfuse_gateway.strip():
            try:
                spec = gateway.listener_spec(o.spendfuse_gateway)
            except ValueError as e:
                raise exceptions.OptionsError(f"spendfuse_gateway: {e}") from None
            if spec not in o.mode:
                o.update(mode=[*o.mode, spec])

    async def running(self) -> None:
        """Start a gateway listener the proxy server missed. mitmdump loads `-s` scripts in a task
        of their own, after it has begun to set up the listeners its modes named then: one added
        by `spendfuse_gateway` would never listen. A listener that cannot start stops start-up."""
        ps = ctx.master.addons.get("proxyserver")
        if ps is None:
            return
        listening = {server.mode for server in ps.servers}
        wanted = [mode_specs.ProxyMode.parse(m) for m in ctx.options.mode]
        if any(is_gateway(m) and m not in listening for m in wanted):
            if not await ps.setup_servers():
                logger.error("spendfuse: the gateway listener could not start")

    async def refused(self, flow: http.HTTPFlow, fuse: "SpendFuse") -> bool:
        """Route a gateway flow (see `route`), or answer it with its 404, recorded, and say so.
        Answered in dry run too: a request that names no upstream has nowhere to go."""
        unrouted = self.route(flow)
        if unrouted is None:
            return False
        rec = RequestRecord(
            translate.request_id(flow, fuse.state), translate.principal(fuse.engine, flow, fuse.state)
        )
        await fuse.record_refusal(rec, unrouted.refusal)
        fuse.answer(flow, unrouted.endpoint, unrouted.refusal)
        return True

    def route(self, flow: http.HTTPFlow) -> gateway.Unrouted | None:
        """Rewrite a gateway flow to its upstream (scheme, host, port, path and Host header), or
        say why it goes nowhere. Only for flows where `is_gateway(flow.client_conn.proxy_mode)`."""
        req = flow.request
        target = req.path
        if req.authority and req.http_version.startswith("HTTP/1"):
            target = f"{req.scheme}://{req.authority}{req.path}"  # absolute-form: refused below
        router = self.router
        if router is None:  # configure failed, and the proxy did not start: unreachable
            raise RuntimeError("the gateway has no routing table")
        result = router.route(req.method, target)
        if not isinstance(result, Route):
            return result
        req.scheme = result.scheme
        req.host = result.host
        req.port = result.port
        req.path = result.path
        req.headers.pop("host", None)  # every Host the client sent: the table names the host
        req.host_header = result.host_header
        flow.metadata[METADATA] = result.prefix
        return None
