"""The fuse hooks: every HTTP flow in, the engine's verdict carried out.

Fail closed: a hook that cannot decide answers the client with a refusal in its provider's
envelope. mitmproxy's own `safecall` would log an exception and forward the request, so no
exception is allowed to escape a request hook.
"""

import functools
import json
import logging

from mitmproxy import command, ctx, http

from governance import clients, refusals, verdicts
from governance.decisions import About
from governance.engine import Engine
from governance.errors import LedgerUnavailable
from governance.gate import HEALTH_HOST, Action, Verdict
from governance.hosts import canonical_host
from governance.identity import KEY_HEADERS, Credentials, Identity
from governance.injection import Plan
from governance.mitm import custody, marks, notes, options, streams, translate
from governance.mitm.admission import Admission
from governance.mitm.counter import INTERNAL_HEADER, CounterClient
from governance.mitm.drain import Drains
from governance.mitm.gateway import Gateway, is_gateway
from governance.mitm.guard import TransportGuard
from governance.mitm.runtime import Runtime
from governance.mitm.state import Decided, Pending, State, decided_endpoint
from governance.mitm.websocket import WebSocketMeter
from governance.settlement import Settlement
from governance.store import RequestRecord
from governance.types import Endpoint, Refusal, RefusalKind

logger = logging.getLogger("spendfuse")

# Meant for spendfuse alone: never forwarded to anyone.
_OWN_HEADERS = ("proxy-authorization", INTERNAL_HEADER, *KEY_HEADERS)


def _health(flow: http.HTTPFlow, runtime: Runtime) -> None:
    """Answer the health probe: configured (and in dry run or not), or why not."""
    engine = runtime.engine
    body = {"status": "ok" if engine else "unconfigured", "dry_run": bool(engine and engine.dry_run)}
    if engine is None:
        body["error"] = runtime.config_error
    flow.response = http.Response.make(
        200 if engine else 503, json.dumps(body), {"content-type": "application/json"}
    )


def _free_plan(
    engine: Engine, flow: http.HTTPFlow, endpoint: Endpoint, who: Identity, creds: Credentials
) -> Plan | Refusal:
    """The custody plan of a free request (a token count, a model list): it names no model."""
    tls = flow.request.scheme == "https"
    return engine.custody(endpoint, None, who, has_api_key=creds.api_key is not None, tls=tls)


class SpendFuse:
    """The addon. `__init__` does no I/O: the ledger opens in `configure`. Its transport guard
    joins the end of the addon chain once mitmproxy runs."""

    def __init__(self) -> None:
        self.runtime = Runtime()
        self.state = State()
        self.counter = CounterClient(self.state)
        self.guard = TransportGuard(self)
        self.admission = Admission(self)
        self.gateway = Gateway()
        self.redactor = custody.Redactor()
        self.websockets = WebSocketMeter(self)
        self.drains = Drains(self, lambda pending, s: _settle(self.runtime, pending, s))
        self.addons = [self.redactor, self.websockets]  # their hooks run right after this addon's

    @property
    def engine(self) -> Engine | None:
        return self.runtime.engine

    def _ledger_thread(self):  # type: ignore[no-untyped-def]
        return self.runtime.ledger_thread()

    async def on_ledger(self, fn, *args):  # type: ignore[no-untyped-def]
        return await self.runtime.on_ledger(fn, *args)

    # -- lifecycle (sync, as mitmproxy requires) -----------------------------------------------

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        options.add_options(loader)

    def configure(self, updated: set[str]) -> None:
        self.runtime.configure(updated)
        self.gateway.configure(updated)

    async def running(self) -> None:
        # The guard must run after mitmproxy's NextLayer, TlsConfig and every script: last in the chain.
        existing = ctx.master.addons.get(TransportGuard.name)
        if existing is None:
            ctx.master.addons.add(self.guard)
        else:
            existing.fuse = self  # a reloaded script: the guard serves the new instance
        self.runtime.running()
        await self.gateway.running()

    @command.command("spendfuse.reload")
    def reload_rules(self) -> None:
        """Load the rules file again. A good file takes effect at once, for every request not yet
        admitted; a bad one is refused with every problem logged, and the old rules stay."""
        self.runtime.reload_rules()

    def done(self) -> None:
        in_flight = self.state.take_pending() + self.websockets.take_pending()
        self.state.flows.clear()
        self.state.conns.clear()
        self.runtime.done(in_flight)

    # -- connections ------------------------------------------------------------------------------

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        try:
            creds = translate.proxy_credentials(flow.request.headers.get("proxy-authorization"))
            conn = self.state.conn(flow.client_conn.id)
            if creds:
                conn.proxy_user = creds
            conn.connect_target = flow.request.host
            engine = self.engine
            if engine is None:
                self.answer(flow, None, refusals.internal(f"not configured: {self.runtime.config_error}"))
                return
            refusal: Refusal | None = None
            if creds:
                who = engine.identify(Credentials(proxy_user=creds[0], proxy_secret=creds[1]))
                if isinstance(who, Refusal) and who.kind is RefusalKind.PROXY_AUTH:
                    refusal = who
            if refusal is None:
                refusal = engine.screen_connect(
                    [flow.request.host, *flow.request.headers.get_all("host")], flow.request.port
                )
            if refusal is not None:
                await self.refuse_early(flow, None, None, refusal)
                # A CONNECT's answer fires no `response`: forget what the refusal kept for one.
                self.state.end(flow.id)
        except Exception as e:
            logger.exception("spendfuse: CONNECT hook failed")
            self.answer(flow, None, refusals.internal(type(e).__name__))

    def client_disconnected(self, client):  # type: ignore[no-untyped-def]
        self.state.conns.pop(client.id, None)
        return self.drains.wait(client.id)  # awaited: mitmproxy closes its upstreams after this hook

    # -- answering ----------------------------------------------------------------------------

    def answer(
        self, flow: http.HTTPFlow, endpoint: Endpoint | None, refusal: Refusal, about: About = None
    ) -> None:
        """Answer the flow with `refusal` in its endpoint's envelope (whatever dry run says);
        `about`: what is known of the request (`RequestRecord`, `RequestInfo`), for its record."""
        self.state.flow(flow.id).answered = answer_flow(flow, endpoint, refusal, self.engine)
        marks.refused(flow, endpoint, refusal, about, self.runtime.observers)

    async def refuse_early(
        self, flow: http.HTTPFlow, endpoint: Endpoint | None, rec: RequestRecord | None, refusal: Refusal
    ) -> None:
        """Record a refusal made before any reservation, then answer it (or, in dry run, let the
        flow pass)."""
        if rec is None:
            provider = endpoint.family if endpoint else None
            rec = RequestRecord(
                translate.request_id(flow, self.state),
                translate.principal(self.engine, flow, self.state),
                provider=provider,
            )
        await self.record_refusal(rec, refusal)
        self.fail(flow, endpoint, refusal, rec)

    async def record_refusal(self, rec: RequestRecord, refusal: Refusal) -> None:
        """Record a refusal made before any reservation. Best effort: the refusal is sent even
        when the ledger is down."""
        if self.engine is not None:
            try:
                await self.on_ledger(self.engine.record_refusal, rec, refusal, translate.now())
            except Exception as e:  # noqa: BLE001 - the refusal is sent whether or not it is recorded
                logger.error("spendfuse: could not record refusal %s: %s", rec.request_id, e)

    def fail(
        self, flow: http.HTTPFlow, endpoint: Endpoint | None, refusal: Refusal, about: About = None
    ) -> None:
        fs = self.state.flows.get(flow.id)
        if fs is not None:
            fs.pending = None
        dry_run = self.engine is not None and self.engine.dry_run
        if verdicts.enforced(refusal, dry_run=dry_run, what=flow.id) is not None:
            self.answer(flow, endpoint, refusal, about)
        else:
            marks.refused(flow, endpoint, refusal, about, self.runtime.observers, dry_run=True)

    # -- request ------------------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Before any later addon sees the request: the transport guard is still last in the
        chain. An addon added after it (by a later script's `running`, say) would otherwise act
        after the guard, and could stream a request body upstream with nothing to undo it. The
        chain is moved in place, before the hooks after this one run, so this request is covered."""
        addons = ctx.master.addons
        guard = addons.get(TransportGuard.name)
        if guard is not None and addons.chain and addons.chain[-1] is not guard:
            addons.chain.remove(guard)
            addons.chain.append(guard)
            logger.warning("spendfuse: an addon was added after the transport guard; the guard is last again")

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.error is not None:
            return
        verdict: Verdict | None = None
        try:
            engine = self.engine
            if engine is None:
                if canonical_host(flow.request.host) == HEALTH_HOST:
                    _health(flow, self.runtime)
                else:
                    self.answer(flow, None, refusals.internal(f"not configured: {self.runtime.config_error}"))
                return
            # Before anything is decided: the fuse screens the flow the gateway routed.
            if is_gateway(flow.client_conn.proxy_mode) and await self.gateway.refused(flow, self):
                return
            verdict = engine.screen(translate.incoming(flow, self.state))
            await self._act(flow, verdict, engine)
        except LedgerUnavailable as e:
            logger.error("spendfuse: ledger unavailable: %s", e)
            await self.refuse_early(
                flow, verdict.endpoint if verdict else None, None, refusals.ledger_unavailable(e)
            )
        except Exception as e:
            logger.exception("spendfuse: request hook failed")
            refusal = refusals.internal(type(e).__name__)
            await self.refuse_early(flow, verdict.endpoint if verdict else None, None, refusal)

    async def _act(self, flow: http.HTTPFlow, verdict: Verdict, engine: Engine) -> None:
        """Carry out the gate's verdict."""
        if verdict.action is Action.HEALTH:
            _health(flow, self.runtime)
            return
        creds = translate.credentials(flow, self.state)
        caller = self.counter.caller(flow)
        who = caller[0] if caller else engine.identify(creds)
        for name in _OWN_HEADERS:  # ours: never sent to anyone
            flow.request.headers.pop(name, None)
        if isinstance(who, Identity) and who.virtual_api_key:
            custody.strip_credentials(flow.request)  # a virtual key is ours too, whatever happens next
        endpoint = verdict.endpoint
        refused = who if isinstance(who, Refusal) else None
        if refused is not None and verdicts.enforced(refused, dry_run=engine.dry_run, what=flow.id) is None:
            # Dry run refuses nothing, and meters everything: the caller counts as unidentified.
            who, refused = Identity("unidentified"), None
        principal = who.principal if isinstance(who, Identity) else "unidentified"
        fs = self.state.flow(flow.id)
        if verdict.action is Action.PASS:
            # Wrong proxy credentials are refused on every host; a key header only matters to LLM hosts.
            if refused is not None and refused.kind is RefusalKind.PROXY_AUTH:
                rec = RequestRecord(translate.request_id(flow, self.state), "unidentified")
                await self.refuse_early(flow, None, rec, refused)
                return
            fs.decided = Decided(None, None, principal)
            return
        plan = None
        if verdict.action in (Action.FREE, Action.WEBSOCKET) and isinstance(who, Identity) and endpoint:
            plan = caller[1] if caller else _free_plan(engine, flow, endpoint, who, creds)
            refused = plan if isinstance(plan, Refusal) else refused
        if verdict.action is Action.REFUSE or refused is not None:
            refusal = refused or verdict.refusal
            assert refusal is not None
            provider = endpoint.family if endpoint else None
            rec = RequestRecord(translate.request_id(flow, self.state), principal, provider=provider)
            await self.refuse_early(flow, endpoint, rec, refusal)
            return
        assert endpoint is not None
        assert isinstance(who, Identity)
        if verdict.action is Action.WEBSOCKET:  # admitted like any request; its frames are metered
            assert not isinstance(plan, Refusal)  # refused above
            fs.custody = plan  # the upgrade request carries the custody key, as a free request does
            return self.websockets.upgraded(flow, endpoint, engine, who)
        if verdict.action is Action.FREE:
            assert not isinstance(plan, Refusal)  # refused above
            fs.custody = plan
            fs.decided = Decided(decided_endpoint(endpoint), None, principal)
            unmetered = "allow_unmetered" in verdict.notes
            rid = translate.request_id(flow, self.state)
            marks.let_through(flow, endpoint, rid, principal, unmetered, self.runtime.observers)
            if unmetered:
                logger.info(
                    "spendfuse: letting unmetered %s %s%s through (allow_unmetered)",
                    flow.request.method,
                    endpoint.host,
                    endpoint.path,
                )
            return
        await self.admission.admit(flow, endpoint, engine, who, has_api_key=creds.api_key is not None)

    # -- response -----------------------------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        pending = self.state.pending(flow.id)
        if pending is None or flow.response is None:
            return
        decision = pending.decision
        if decision is not None and decision.remaining is not None:
            # The agent's headroom, as it stood once this request was reserved at its worst case.
            flow.response.headers["x-spendfuse-remaining-usd"] = f"{decision.remaining:.6f}"
            flow.response.headers["x-spendfuse-budget"] = decision.binding or ""
        try:
            tap = streams.install_tap(flow, pending)
            if tap is not None:
                tap.on_end = functools.partial(notes.note_usage, flow)
        except Exception:
            # Not streaming means buffering: `response` then reads usage from the whole body.
            logger.exception("spendfuse: could not install the stream tap for %s", flow.id)

    async def response(self, flow: http.HTTPFlow) -> None:
        fs = self.state.end(flow.id)
        answered = fs.answered
        if answered is not None:
            if (
                flow.is_replay == "response"
                and flow.response is not None
                and flow.response.status_code != answered.status
            ):
                # Server replay overwrites a refusal with the recorded answer; put the refusal back.
                flow.response = http.Response.make(answered.status, answered.body, answered.headers)
            return
        pending = fs.pending
        if pending is None:
            return
        try:
            s = streams.response_settlement(flow, pending)
        except Exception:
            logger.exception("spendfuse: settling %s failed", flow.id)
            s = Settlement(pending.info, None, "settle failed", upstream_ran=True, charge=True)
        await _settle(self.runtime, pending, s)
        self.drains.finished(flow.id)

    async def error(self, flow: http.HTTPFlow) -> None:
        if self.drains.hung_up(flow):
            return  # read on: the stream's end settles it (governance.mitm.drain)
        pending = self.state.end(flow.id).pending
        if pending is None:
            return
        try:
            s = streams.error_settlement(flow, pending)
        except Exception:
            logger.exception("spendfuse: settling failed flow %s failed", flow.id)
            s = Settlement(pending.info, None, "settle failed", upstream_ran=True, charge=True)
        await _settle(self.runtime, pending, s)


async def _settle(runtime: Runtime, pending: Pending, s: Settlement) -> None:
    """Settle a flow's reservation, and show how on the flow."""
    try:
        done = await runtime.on_ledger(pending.engine.settle, s, translate.now())
    except LedgerUnavailable as e:
        logger.error("spendfuse: %s stays held until the reaper charges it: %s", pending.info.request_id, e)
        return
    marks.settled(pending.flow, pending.info, pending.decision, done, runtime.observers)


def answer_flow(
    flow: http.HTTPFlow, endpoint: Endpoint | None, refusal: Refusal, engine: Engine | None
) -> verdicts.Answer:
    """Set the flow's response to `refusal` in its endpoint's envelope, shaped for its client."""
    req = flow.request
    ans = verdicts.answer(
        endpoint,
        req.host,
        req.path,
        refusal,
        f"req_spendfuse_{flow.id}",
        headers=req.headers.get_all,
        clients=engine.refusal_clients if engine is not None else clients.shipped(),
    )
    flow.response = http.Response.make(ans.status, ans.body, ans.headers)
    host, path = (endpoint.host, endpoint.path) if endpoint else (req.host, req.path)
    logger.info("spendfuse: refused %s %s%s: %s", req.method, host, path, refusal.message)
    return ans
