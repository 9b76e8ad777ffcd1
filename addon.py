"""spendfuse's mitmproxy addon: `mitmdump -s addon.py`, or the fail-closed `spendfuse run`.

This is the only module that touches mitmproxy: options, hooks, flow <-> domain values and
sending refusals. Every decision is made by `governance.engine`; every database call runs on
one ledger thread, so the event loop never blocks on SQLite.

Fail closed: a hook that cannot decide answers the client with a refusal in its provider's
envelope. mitmproxy's own `safecall` would log an exception and forward the request, so no
exception is allowed to escape a request hook.
"""

# No `from __future__ import annotations` here: mitmproxy loads this file as a script that is
# not in sys.modules, and dataclasses then cannot resolve string annotations.
import asyncio
import base64
import binascii
import json
import logging
import os
import sys
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

from mitmproxy import command, ctx, exceptions, http, tcp, udp
from mitmproxy.proxy import commands, events, layer, layers, mode_specs
from mitmproxy.proxy.layers.tls import parse_client_hello
from mitmproxy.tls import ClientHelloData
from mitmproxy.utils import asyncio_utils

from governance import DEFAULT_RULES, bodies, gate, policy, refusals, shape, tokens, wire
from governance.engine import Engine, ReadRequest
from governance.errors import LedgerUnavailable, PolicyError, RequestParseError
from governance.gate import HEALTH_HOST, Action, Incoming, Verdict
from governance.hosts import canonical_host
from governance.identity import KEY_HEADERS, Credentials, Identity
from governance.ledger import Ledger, RequestRecord
from governance.ledger import default_path as default_ledger_path
from governance.ledger_thread import LedgerThread
from governance.types import Decision, Endpoint, Metering, Refusal, RefusalKind, RequestInfo, usd
from governance.wire.tap import StreamTap, read_sse_body

logger = logging.getLogger("spendfuse")

# Modes where the destination is an address the client's own resolver chose (no CONNECT names
# it), so the SNI or Host says which host it is for.
_RESOLVED_DESTINATION_MODES = (mode_specs.TransparentMode, mode_specs.WireGuardMode, mode_specs.LocalMode)
# Upstream API keys, in the order they identify a principal.
_API_KEY_HEADERS = ("x-api-key", "api-key", "authorization", "x-goog-api-key")
_PRINCIPAL_HEADERS = frozenset({"proxy-authorization", *KEY_HEADERS, *_API_KEY_HEADERS})
# Meant for spendfuse alone: never forwarded to anyone.
# The proxy's own request to a provider's token counter, on behalf of an admitted caller.
INTERNAL_HEADER = "x-spendfuse-internal"
_OWN_HEADERS = ("proxy-authorization", INTERNAL_HEADER, *KEY_HEADERS)
# The client's credentials and API versions, sent on to the provider's token counter.
_COUNTER_HEADERS = frozenset(
    {
        "authorization",
        "x-api-key",
        "api-key",
        "anthropic-version",
        "anthropic-beta",
        "openai-organization",
        "openai-project",
        "openai-beta",
    }
)
# How often the rules file is checked for edits.
RULES_POLL_SECONDS = 0.5
# Bodies larger than this are parsed and tokenized off the event loop.
_OFFLOAD_BYTES = 64 * 1024
# So are bodies that carry a PDF (base64 of `%PDF-`): a small one can take pypdf a second to read.
_PDF_BASE64 = b"JVBERi0"


@dataclass(frozen=True)
class OptionSpec:
    name: str
    env: str
    default: str
    help: str


# Every option is a string that spendfuse parses itself. mitmproxy drops a script whose typed
# option gets a malformed `--set` value without a word (and forwards traffic unmetered); a
# string is never malformed to mitmproxy, so bad values reach `configure` and stop startup.
OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec(
        "spendfuse_rules",
        "SPENDFUSE_RULES",
        str(DEFAULT_RULES),
        "Path of the rules file (YAML). Defaults to the shipped rules/default.yaml.",
    ),
    OptionSpec(
        "spendfuse_db",
        "SPENDFUSE_DB",
        "",
        "Path of the SQLite ledger, created if missing. Several proxies may share one file; a "
        "URL (postgresql://...) is refused, as this build keeps its ledger in SQLite. "
        "Empty: ledger.sqlite in a per-user state directory ($SPENDFUSE_STATE_DIR, else "
        "$XDG_STATE_HOME/spendfuse, else ~/.local/state/spendfuse). In-memory ledgers are refused.",
    ),
    OptionSpec(
        "spendfuse_budget",
        "SPENDFUSE_BUDGET",
        "",
        "Global budget in USD; replaces the rules' global cap. Empty: use the rules.",
    ),
    OptionSpec(
        "spendfuse_max_multiplier",
        "SPENDFUSE_MAX_MULTIPLIER",
        "",
        "Refuse models whose multiplier is above this. Empty: use the rules.",
    ),
    OptionSpec(
        "spendfuse_dry_run",
        "SPENDFUSE_DRY_RUN",
        "false",
        "true: log and record what would be refused, but refuse nothing.",
    ),
)


def _env_default(spec: OptionSpec) -> str:
    return os.environ.get(spec.env, spec.default)


def parse_bool(value: str, name: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("", "0", "false", "no", "off"):
        return False
    raise exceptions.OptionsError(f"{name} must be true or false, not {value!r}")


def parse_decimal(value: str, name: str) -> Decimal | None:
    v = value.strip().lstrip("$")
    if not v:
        return None
    try:
        d = Decimal(v)
    except InvalidOperation:
        raise exceptions.OptionsError(f"{name} must be a number, not {value!r}") from None
    if not d.is_finite() or d < 0:
        raise exceptions.OptionsError(f"{name} must be a non-negative number, not {value!r}")
    return d


def now() -> datetime:
    """The one place real time is read; everything below takes `now` as an argument."""
    return datetime.now(UTC)


@dataclass
class Pending:
    """An allowed flow's reservation, kept off `flow.metadata` (which is copied and serialised)."""

    info: RequestInfo
    endpoint: Endpoint
    flow: http.HTTPFlow
    engine: Engine  # the one that reserved it: a reconfigured proxy settles in the same ledger
    tap: StreamTap | None = None
    decision: Decision | None = None


@dataclass(frozen=True)
class Decided:
    """What spendfuse decided a forwarded request was, for the check at the end of the chain:
    the LLM endpoint it was for (host entry, API, metering; None: not LLM traffic), when metered
    the fingerprint of what it was priced from, and whom it was recorded under."""

    endpoint: tuple[str, str, Metering] | None
    body: int | None
    principal: str

    def still(self, verdict: Verdict) -> bool:
        """Whether a fresh verdict on the request is what was decided. Traffic passed as not LLM
        must still be neither LLM traffic nor refused (egress); LLM traffic must still be for the
        same host entry, API and metering (a free count turned into a billed call is not). The
        destination itself may change: a relay or a test harness sends it elsewhere."""
        ep = verdict.endpoint
        if self.endpoint is None:
            return ep is None and verdict.action is not Action.REFUSE
        return ep is not None and (ep.entry, ep.api, ep.metering) == self.endpoint


def _decided_endpoint(endpoint: Endpoint) -> tuple[str, str, Metering]:
    return endpoint.entry, endpoint.api, endpoint.metering


def _priced_fingerprint(flow: http.HTTPFlow) -> int:
    """What a metered request was priced from: its body, and the headers that change what the
    provider bills (Anthropic's betas, such as the 1M-token context)."""
    return hash((flow.request.raw_content, tuple(flow.request.headers.get_all("anthropic-beta"))))


def _rules_signature(path: str) -> tuple:
    """What changes when the rules file is edited or replaced: its identity, size and mtime."""
    try:
        st = os.stat(path)
    except OSError:
        return (path, None)
    return (path, st.st_ino, st.st_size, st.st_mtime_ns)


def _body_as_sent(req: http.Request) -> bytes | None:
    """A request's body for the gate's look at it, as its server would read it (`bodies.as_read`:
    inflated within a bound; None past it)."""
    encodings = [e for v in req.headers.get_all("content-encoding") for e in v.split(",")]
    return bodies.as_read(req.raw_content or b"", encodings)


def _reached_upstream(flow: http.HTTPFlow) -> bool:
    """Whether the request can have reached the upstream: a response came, or the connection to
    it came up (TLS included). When it cannot have, nothing was billed."""
    server = flow.server_conn
    return flow.response is not None or (
        server is not None
        and server.timestamp_tcp_setup is not None
        and (flow.request.scheme == "http" or server.timestamp_tls_setup is not None)
    )


def _proxy_credentials(header: str | None) -> tuple[str, str | None] | None:
    """`(user, secret)` of a `Proxy-Authorization: Basic` header, or None when there is none."""
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        text = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, secret = text.partition(":")
    return (user, secret if sep else None) if user else None


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
    """The part of spendfuse that runs at the END of the addon chain, after mitmproxy's own
    NextLayer has chosen how to carry a connection. Every byte to an LLM host must travel in an
    HTTP flow that spendfuse decided on, so a connection that would be relayed raw (TCP, UDP,
    QUIC that is not HTTP/3) toward an LLM host, by any of its names, is closed, and a TLS
    passthrough of one is turned back into interception. It only translates: the decisions are
    `Engine.screen_raw`'s."""

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
            if connect := self.fuse._connect_targets.get(conn_client.id):
                names.append(connect)
        if data and (sni := _hello_sni(data)):
            names.append(sni)
        return names

    def _refusal(self, names: list[str], port: int | None, protocol: str) -> Refusal | None:
        engine = self.fuse.engine
        if engine is None:
            return refusals.internal("not configured")
        refusal = engine.screen_raw(names, port, protocol)
        if refusal is not None and engine.dry_run:
            logger.warning("spendfuse: dry run: would close a %s connection: %s", protocol, refusal.message)
            return None
        return refusal

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
        chain = _layer_chain(chosen)
        raw = next((lay for lay in chain if isinstance(lay, _RAW_LAYERS)), None)
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
        pending = self.fuse._pending.get(flow.id)
        tap = pending.tap if pending is not None else None
        if tap is None or flow.response is None or flow.response.stream is tap:
            return
        other = flow.response.stream
        if callable(other):
            flow.response.stream = lambda data: other(tap(data))
        elif other:
            flow.response.stream = tap
        # Buffered after all (stream False): `response` reads usage from the whole body.

    async def request(self, flow: http.HTTPFlow) -> None:
        """After every other addon (map_remote, modify_body, later scripts): a request must still
        be what spendfuse decided. One decided as not LLM traffic must not have become LLM
        traffic; one metered must still go to the same LLM host with the body it was priced for."""
        decided = self.fuse._decided.pop(flow.id, None)
        engine = self.fuse.engine
        if decided is None or flow.response is not None or engine is None:
            return
        endpoint = None
        try:
            verdict = engine.screen(self.fuse._incoming(flow))
            endpoint = verdict.endpoint
            changed = not decided.still(verdict) or (
                decided.body is not None and _priced_fingerprint(flow) != decided.body
            )
        except Exception:  # noqa: BLE001 - the request cannot be re-checked: it is refused below
            logger.exception("spendfuse: re-checking %s at the end of the chain failed", flow.id)
            changed = True
        if not changed:
            return
        refusal = refusals.rewritten()
        logger.warning("spendfuse: %s %s", flow.id, refusal.message)
        pending = self.fuse._pending.pop(flow.id, None)
        if pending is None:
            # Recorded under whom it was decided for: its own headers are stripped by now.
            rec = RequestRecord(self.fuse._request_id(flow), decided.principal)
            await self.fuse._refuse_early(flow, endpoint, rec, refusal)  # recorded, and answered
            return
        request_id = pending.info.request_id  # its row exists: the hold is released, not charged
        try:
            await self.fuse._on_ledger(
                lambda: pending.engine.ledger.release(request_id, now(), outcome="rewritten after admission")
            )
        except LedgerUnavailable as e:  # the refusal stands; the reaper charges the hold later
            logger.error("spendfuse: could not release %s after refusing it: %s", request_id, e)
        self.fuse._answer(flow, endpoint, refusal)

    def tls_clienthello(self, data: ClientHelloData) -> None:
        if not data.ignore_connection:
            return
        try:
            self._tls_passthrough(data)
        except Exception:  # noqa: BLE001 - fail closed: intercept what could not be checked
            logger.exception("spendfuse: checking a TLS passthrough failed; intercepting it")
            data.ignore_connection = False

    def _tls_passthrough(self, data: ClientHelloData) -> None:
        names = self._names(data.context.client, data.context.server)
        if data.client_hello.sni:
            names.append(data.client_hello.sni)
        port = data.context.server.address[1] if data.context.server.address else None
        if self._refusal(names, port, "TLS passthrough") is not None:
            data.ignore_connection = False  # intercept it, so its requests are screened

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
        if engine is None or engine.dry_run:
            return
        verdict = engine.screen(self.fuse._incoming(flow))
        if verdict.endpoint is None:
            return
        # Upgrades to LLM hosts are refused in `request`; one that got here anyway is closed.
        self.fuse._unadmitted_websockets.add(flow.id)
        logger.warning("spendfuse: closing a WebSocket to %s that was never admitted", verdict.endpoint.host)
        proxyserver = ctx.master.addons.get("proxyserver")
        handler = proxyserver.connections.get(flow.client_conn.id) if proxyserver is not None else None
        if handler is not None:
            handler.close_connection(flow.server_conn)
            handler.close_connection(flow.client_conn)

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        if flow.id in self.fuse._unadmitted_websockets and flow.websocket is not None:
            flow.websocket.messages[-1].drop()

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self.fuse._unadmitted_websockets.discard(flow.id)


class SpendFuse:
    """The addon. `__init__` does no I/O: the ledger opens in `configure`."""

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.config_error: str | None = "not configured yet"
        self._ledger_worker: LedgerThread | None = None
        self._pending: dict[str, Pending] = {}
        self._answered: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self._proxy_users: dict[str, tuple[str, str | None]] = {}  # connection id -> CONNECT's credentials
        self._internal: dict[str, Identity] = {}  # token -> caller, while the proxy asks a counter for it
        self._connect_targets: dict[str, str] = {}  # client connection id -> its CONNECT host
        self._request_ids: dict[str, str] = {}  # flow id -> ledger request id, while the flow lives
        self._unadmitted_websockets: set[str] = set()
        self._decided: dict[str, Decided] = {}  # forwarded flows, until the guard re-checks them
        self.guard = TransportGuard(self)
        self._reaper: asyncio.Task | None = None
        self._watcher: asyncio.Task | None = None
        self._rules_seen: tuple | None = None
        self._forcing = False

    # -- lifecycle (sync, as mitmproxy requires) -----------------------------------------------

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        for spec in OPTIONS:
            loader.add_option(spec.name, str, _env_default(spec), f"{spec.help} Env: {spec.env}.")

    def _ledger_thread(self) -> LedgerThread:
        if self._ledger_worker is None:
            self._ledger_worker = LedgerThread(on_idle=self._ledger_idle)
        return self._ledger_worker

    def _ledger_idle(self) -> None:
        """On the ledger thread, when nothing is queued: housekeeping off the requests' path."""
        if self.engine is not None:
            self.engine.ledger.checkpoint_if_due()

    def configure(self, updated: set[str]) -> None:
        if getattr(ctx.options, "stream_large_bodies", None):
            # A streamed request reaches `request` with no body, after it was forwarded.
            raise exceptions.OptionsError(
                "spendfuse refuses to run with stream_large_bodies set: streamed requests are "
                "forwarded before they can be checked. Unset it (use body_size_limit to cap memory)."
            )
        if any(name.startswith("spendfuse_") for name in updated) or self.engine is None:
            self._configure_engine()
        assert self.engine is not None
        problems = gate.exempted_llm_hosts(
            self.engine.hosts,
            ignore_hosts=getattr(ctx.options, "ignore_hosts", ()) or (),
            allow_hosts=getattr(ctx.options, "allow_hosts", ()) or (),
            tcp_hosts=getattr(ctx.options, "tcp_hosts", ()) or (),
            udp_hosts=getattr(ctx.options, "udp_hosts", ()) or (),
        )
        if problems:
            shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            raise exceptions.OptionsError(
                f"spendfuse refuses options that exempt LLM hosts from interception (their traffic would "
                f"pass unmetered): {shown}"
            )
        # Forced after validation, so a bad option fails before this re-enters:
        # - eager connection_strategy connects upstream before the request hook runs, even for
        #   refused requests;
        # - rawtcp relays bytes that are neither TLS nor HTTP to wherever the client asked, and
        #   the bytes of a TLS handshake split or dressed up to look like neither are exactly that.
        forced = {}
        if getattr(ctx.options, "connection_strategy", "lazy") != "lazy":
            forced["connection_strategy"] = "lazy"
        if getattr(ctx.options, "rawtcp", False):
            forced["rawtcp"] = False
        if forced and not self._forcing:
            self._forcing = True
            try:
                ctx.options.update(**forced)
            finally:
                self._forcing = False

    @staticmethod
    def _load_rules() -> tuple[policy.Policy, list[policy.Problem]]:
        """The rules file with the options' overrides applied, and its warnings. Raises
        `PolicyError` (or `OptionsError` for a malformed override)."""
        o = ctx.options
        budget = parse_decimal(o.spendfuse_budget, "spendfuse_budget")
        max_multiplier = parse_decimal(o.spendfuse_max_multiplier, "spendfuse_max_multiplier")
        warnings: list[policy.Problem] = []
        rules = policy.with_overrides(
            policy.load(o.spendfuse_rules, warnings=warnings),
            budget_usd=budget,
            max_multiplier=max_multiplier,
        )
        policy.require_limits(rules, o.spendfuse_rules)
        return rules, warnings

    def _configure_engine(self) -> None:
        o = ctx.options
        dry_run = parse_bool(o.spendfuse_dry_run, "spendfuse_dry_run")
        try:
            rules, warnings = self._load_rules()
        except PolicyError as e:
            raise exceptions.OptionsError(f"spendfuse_rules: {e}") from e
        for w in warnings:
            logger.warning("spendfuse: %s: %s: %s", o.spendfuse_rules, w.where(), w.message)
        db = o.spendfuse_db or str(default_ledger_path())
        try:
            ledger = self._ledger_thread().call_blocking(Ledger.open, db)
        except LedgerUnavailable as e:
            raise exceptions.OptionsError(f"spendfuse_db: {e}") from e
        try:
            tokens.preload()
        except Exception as e:
            raise exceptions.OptionsError(f"spendfuse cannot load its tokenizer encodings: {e}") from e
        try:
            salt = self._ledger_thread().call_blocking(ledger.salt)
        except LedgerUnavailable as e:
            raise exceptions.OptionsError(f"spendfuse_db: {e}") from e
        old, self.engine = self.engine, Engine(rules, ledger, dry_run=dry_run, salt=salt)
        self._rules_seen = _rules_signature(o.spendfuse_rules)
        self.config_error = None
        if old is not None:
            self._ledger_thread().submit(old.ledger.close)
        caps = ", ".join(f"{b.id} {usd(b.max_usd)} ({b.reset})" for b in rules.budgets) or "none"
        logger.info(
            "spendfuse: rules %s, ledger %s, budgets: %s, %d rate limit(s), %d key(s), max multiplier: %s%s",
            o.spendfuse_rules,
            ledger.path,
            caps,
            len(rules.rate_limits),
            len(rules.keys),
            rules.max_multiplier or "off",
            ", DRY RUN" if dry_run else "",
        )

    def running(self) -> None:
        typos = sorted(k for k in getattr(ctx.options, "deferred", {}) if k.startswith("spendfuse"))
        if typos:
            # Logged at error level during startup, so mitmdump exits instead of running unenforced.
            logger.error(
                "spendfuse: unknown option(s) %s; known: %s",
                ", ".join(typos),
                ", ".join(s.name for s in OPTIONS),
            )
        # The guard must run after mitmproxy's NextLayer, TlsConfig and every script: last in the chain.
        existing = ctx.master.addons.get(TransportGuard.name)
        if existing is None:
            ctx.master.addons.add(self.guard)
        else:
            existing.fuse = self  # a reloaded script: the guard serves the new instance
        if self.engine is not None and self._reaper is None:
            self._reaper = asyncio_utils.create_task(
                self._reap_forever(), name="spendfuse reaper", keep_ref=True
            )
        if self.engine is not None and self._watcher is None:
            self._watcher = asyncio_utils.create_task(
                self._watch_rules(), name="spendfuse rules watcher", keep_ref=True
            )

    # -- live changes to the rules --------------------------------------------------------------

    async def _watch_rules(self) -> None:
        """Reload the rules when their file changes: polled, so it works on every filesystem."""
        changing: tuple | None = None
        while True:
            await asyncio.sleep(RULES_POLL_SECONDS)
            try:
                signature = _rules_signature(ctx.options.spendfuse_rules)
                if signature == self._rules_seen:
                    changing = None
                elif signature == changing:
                    # Unchanged for a whole poll: an editor or a copy has finished writing it, so
                    # a half-written file is never applied.
                    self.reload_rules()
                    changing = None
                else:
                    changing = signature
            except Exception:
                logger.exception("spendfuse: watching the rules file failed")

    @command.command("spendfuse.reload")
    def reload_rules(self) -> None:
        """Load the rules file again. A good file takes effect at once, for every request not yet
        admitted; a bad one is refused with every problem logged, and the old rules stay."""
        engine = self.engine
        if engine is None:
            return
        path = ctx.options.spendfuse_rules
        self._rules_seen = _rules_signature(path)
        try:
            rules, warnings = self._load_rules()
        except (PolicyError, exceptions.OptionsError) as e:
            logger.error(
                "spendfuse: the edited rules were NOT applied; the previous rules stay in force: %s", e
            )
            return
        for w in warnings:
            logger.warning("spendfuse: %s: %s: %s", path, w.where(), w.message)
        # Same ledger, same counters: a changed limit applies to the spend already recorded.
        self.engine = Engine(rules, engine.ledger, dry_run=engine.dry_run, salt=engine.salt)
        logger.info("spendfuse: rules %s reloaded", path)

    async def _reap_forever(self) -> None:
        while True:
            engine = self.engine
            if engine is not None:
                try:
                    n = await self._on_ledger(
                        engine.ledger.reap, now(), engine.policy.ledger.hold_ttl_seconds
                    )
                    if n:
                        logger.warning("spendfuse: charged %d stale reservation(s) left by a crash", n)
                except LedgerUnavailable as e:
                    logger.error("spendfuse: reaping stale reservations failed: %s", e)
            await asyncio.sleep(300)

    def done(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        if self._watcher is not None:
            self._watcher.cancel()
        self._connect_targets.clear()
        self._request_ids.clear()
        if self._ledger_worker is not None:
            if self.engine is not None:
                self._settle_in_flight()
                self._ledger_worker.submit(self.engine.ledger.close)
            self._ledger_worker.close()
            self._ledger_worker = None

    def _settle_in_flight(self) -> None:
        """A clean shutdown settles every flow still in flight, instead of leaving holds for the
        next run to charge in full: the usage a stream showed, else the reservation if the
        request reached the upstream, else nothing."""
        pending, self._pending = self._pending, {}
        for flow_id, p in pending.items():
            usage = p.tap.usage if p.tap is not None else None
            outcome = "proxy shut down" + ("; usage seen" if usage is not None else "")
            try:
                assert self._ledger_worker is not None
                self._ledger_worker.call_blocking(
                    lambda p=p, usage=usage, outcome=outcome: p.engine.finish(
                        p.info, usage, now(), outcome=outcome, upstream_ran=_reached_upstream(p.flow)
                    )
                )
            except LedgerUnavailable as e:
                logger.error("spendfuse: could not settle %s at shutdown (the reaper will): %s", flow_id, e)

    async def _on_ledger(self, fn, *args):  # type: ignore[no-untyped-def]
        return await self._ledger_thread().call(fn, *args)

    # -- connection facts ------------------------------------------------------------------------

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        try:
            creds = _proxy_credentials(flow.request.headers.get("proxy-authorization"))
            if creds:
                self._proxy_users[flow.client_conn.id] = creds
            self._connect_targets[flow.client_conn.id] = flow.request.host
            engine = self.engine
            if engine is None:
                self._answer(flow, None, refusals.internal(f"not configured: {self.config_error}"))
                return
            if creds:
                who = engine.identify(Credentials(proxy_user=creds[0], proxy_secret=creds[1]))
                if isinstance(who, Refusal) and who.kind is RefusalKind.PROXY_AUTH:
                    await self._refuse_early(flow, None, None, who)
                    self._answered.pop(flow.id, None)
                    self._request_ids.pop(flow.id, None)
                    return
            names = [flow.request.host, *flow.request.headers.get_all("host")]
            refusal = engine.screen_connect(names, flow.request.port)
            if refusal is not None:
                await self._refuse_early(flow, None, None, refusal)
                # A CONNECT's answer fires no `response`: forget what the refusal kept for one.
                self._answered.pop(flow.id, None)
                self._request_ids.pop(flow.id, None)
        except Exception as e:
            logger.exception("spendfuse: CONNECT hook failed")
            self._answer(flow, None, refusals.internal(type(e).__name__))

    def client_disconnected(self, client) -> None:  # type: ignore[no-untyped-def]
        self._proxy_users.pop(client.id, None)
        self._connect_targets.pop(client.id, None)

    def _credentials(self, flow: http.HTTPFlow) -> Credentials:
        """What the request presents about who sends it (see `governance.identity`)."""
        # One pass over the headers: each `headers.get` is a scan of its own.
        found: dict[str, str] = {}
        for name, value in flow.request.headers.items():
            name = name.lower()
            if name in _PRINCIPAL_HEADERS and value and name not in found:
                found[name] = value
        proxy = self._proxy_users.get(flow.client_conn.id) or _proxy_credentials(
            found.get("proxy-authorization")
        )
        api_key = next((found[n] for n in _API_KEY_HEADERS if n in found), None)
        mode = flow.client_conn.proxy_mode
        # The port the proxy listens on for this mode: in transparent modes the connection's own
        # address is the destination the client dialled, which says nothing about who it is.
        port = mode.listen_port(getattr(ctx.options, "listen_port", None))
        listeners = (str(port), mode.full_spec) if port else (mode.full_spec,)
        header = next((n for n in KEY_HEADERS if n in found), None)
        return Credentials(
            proxy_user=proxy[0] if proxy else None,
            proxy_secret=proxy[1] if proxy else None,
            key_header=found[header] if header else None,
            key_header_name=header,
            listeners=listeners,
            api_key=api_key.removeprefix("Bearer ").strip() if api_key else None,
        )

    def _principal(self, flow: http.HTTPFlow) -> str:
        """The principal a request is recorded under (`unidentified` when its claim failed)."""
        if self.engine is None:
            return "default"
        who = self.engine.identify(self._credentials(flow))
        return who.principal if isinstance(who, Identity) else "unidentified"

    # -- answering ----------------------------------------------------------------------------

    def _answer(self, flow: http.HTTPFlow, endpoint: Endpoint | None, refusal: Refusal) -> None:
        ep = endpoint or Endpoint("unknown", "", Metering.UNMETERED, flow.request.host, flow.request.path)
        status, headers, body = wire.render_error(ep, refusal, f"req_spendfuse_{flow.id}")
        flow.response = http.Response.make(status, body, headers)
        self._answered[flow.id] = (status, headers, body)
        flow.metadata["spendfuse"] = {
            "decision": "refused",
            "rule": refusal.rule,
            "code": refusal.code,
            "message": refusal.message,
        }
        logger.info("spendfuse: refused %s %s%s: %s", flow.request.method, ep.host, ep.path, refusal.message)

    async def _refuse_early(
        self, flow: http.HTTPFlow, endpoint: Endpoint | None, rec: RequestRecord | None, refusal: Refusal
    ) -> None:
        """Record a refusal made before any reservation, then answer it (or, in dry run, let the
        flow pass). Recording is best effort: the refusal is sent even when the ledger is down."""
        engine = self.engine
        if rec is None:
            rec = RequestRecord(
                self._request_id(flow), self._principal(flow), provider=endpoint.family if endpoint else None
            )
        if engine is not None:
            decision = "dry_run" if engine.dry_run else "refused"
            try:
                await self._on_ledger(
                    lambda: engine.ledger.record_refusal(
                        rec, now(), rule=refusal.rule, reason=refusal.message, decision=decision
                    )
                )
            except Exception as e:  # noqa: BLE001 - the refusal is sent whether or not it is recorded
                logger.error("spendfuse: could not record refusal %s: %s", rec.request_id, e)
        self._fail(flow, endpoint, refusal)

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
                    self._health(flow)
                else:
                    self._answer(flow, None, refusals.internal(f"not configured: {self.config_error}"))
                return
            verdict = engine.screen(self._incoming(flow))
            await self._act(flow, verdict, engine)
        except LedgerUnavailable as e:
            logger.error("spendfuse: ledger unavailable: %s", e)
            await self._refuse_early(
                flow, verdict.endpoint if verdict else None, None, refusals.ledger_unavailable(e)
            )
        except Exception as e:
            logger.exception("spendfuse: request hook failed")
            refusal = refusals.internal(type(e).__name__)
            await self._refuse_early(flow, verdict.endpoint if verdict else None, None, refusal)

    def _incoming(self, flow: http.HTTPFlow) -> Incoming:
        """The request's facts for the gate: every name it carries for its target."""
        req = flow.request
        mode = flow.client_conn.proxy_mode
        names: list[tuple[str, str]] = [("url", req.host)]
        if isinstance(mode, mode_specs.ReverseMode):
            # The destination is the operator's reverse target; the client's Host names the proxy
            # and is replaced upstream, unless keep_host_header sends it on.
            if getattr(ctx.options, "keep_host_header", False):
                names += [("host", v) for v in req.headers.get_all("host")]
        else:
            if connect := self._connect_targets.get(flow.client_conn.id):
                names.append(("connect", connect))
            if flow.client_conn.sni:
                names.append(("sni", flow.client_conn.sni))
            names += [("host", v) for v in req.headers.get_all("host")]
            if req.authority:
                names.append(("authority", req.authority))
        return Incoming(
            method=req.method,
            path=req.path,
            port=req.port,
            names=tuple(names),
            upgrade=tuple(req.headers.get_all("upgrade")),
            destination_is_resolved=isinstance(mode, _RESOLVED_DESTINATION_MODES),
            claims=shape.method_claims(req.method, req.headers.items(multi=True), req.path),
            has_body=bool(req.raw_content),
            body=lambda: _body_as_sent(req),
        )

    async def _act(self, flow: http.HTTPFlow, verdict: Verdict, engine: Engine) -> None:
        """Carry out the gate's verdict."""
        if verdict.action is Action.HEALTH:
            self._health(flow)
            return
        internal = self._internal.get(flow.request.headers.get(INTERNAL_HEADER, ""))
        who = internal or engine.identify(self._credentials(flow))
        for name in _OWN_HEADERS:  # ours: never sent to anyone
            flow.request.headers.pop(name, None)
        endpoint = verdict.endpoint
        refused = who if isinstance(who, Refusal) else None
        if refused is not None and engine.dry_run:
            # Dry run refuses nothing, and meters everything: the caller counts as unidentified.
            logger.warning("spendfuse: dry run: would refuse %s: %s", flow.id, refused.message)
            who, refused = Identity("unidentified"), None
        principal = who.principal if isinstance(who, Identity) else "unidentified"
        if verdict.action is Action.PASS:
            # Wrong proxy credentials are refused on every host; a key header only matters to LLM hosts.
            if refused is not None and refused.kind is RefusalKind.PROXY_AUTH:
                await self._refuse_early(
                    flow, None, RequestRecord(self._request_id(flow), "unidentified"), refused
                )
                return
            self._decided[flow.id] = Decided(None, None, principal)
            return
        if verdict.action is Action.REFUSE or refused is not None:
            refusal = refused or verdict.refusal
            assert refusal is not None
            provider = endpoint.family if endpoint else None
            rec = RequestRecord(self._request_id(flow), principal, provider=provider)
            await self._refuse_early(flow, endpoint, rec, refusal)
            return
        assert endpoint is not None
        if verdict.action is Action.FREE:
            self._decided[flow.id] = Decided(_decided_endpoint(endpoint), None, principal)
            if "allow_unmetered" in verdict.notes:
                logger.info(
                    "spendfuse: letting unmetered %s %s%s through (allow_unmetered)",
                    flow.request.method,
                    endpoint.host,
                    endpoint.path,
                )
            return
        assert isinstance(who, Identity)
        await self._metered_request(flow, endpoint, engine, who)

    def _request_id(self, flow: http.HTTPFlow) -> str:
        """The ledger's id for this request. A flow's id, except that a client replay re-sends a
        recorded flow under its old id, and each sending is a request of its own."""
        known = self._request_ids.get(flow.id)
        if known is None:
            known = flow.id if flow.is_replay != "request" else f"{flow.id}~{uuid.uuid4().hex[:12]}"
            self._request_ids[flow.id] = known
        return known

    def _fail(self, flow: http.HTTPFlow, endpoint: Endpoint | None, refusal: Refusal) -> None:
        self._pending.pop(flow.id, None)
        if self.engine is not None and self.engine.dry_run:
            logger.warning("spendfuse: dry run: would refuse %s: %s", flow.id, refusal.message)
            return
        self._answer(flow, endpoint, refusal)

    def _health(self, flow: http.HTTPFlow) -> None:
        ok = self.engine is not None
        body = {
            "status": "ok" if ok else "unconfigured",
            "dry_run": bool(self.engine and self.engine.dry_run),
        }
        if not ok:
            body["error"] = self.config_error
        flow.response = http.Response.make(
            200 if ok else 503, json.dumps(body), {"content-type": "application/json"}
        )

    async def _metered_request(
        self, flow: http.HTTPFlow, endpoint: Endpoint, engine: Engine, who: Identity
    ) -> None:
        request_id = self._request_id(flow)
        principal = who.principal
        key_id = who.key.id if who.key else None
        raw = flow.request.raw_content or b""
        try:
            # A compressed body's decoded size is not known until it is decoded.
            encoded = "content-encoding" in flow.request.headers
            if len(raw) > _OFFLOAD_BYTES or _PDF_BASE64 in raw or encoded:
                read = await asyncio.to_thread(
                    self._read, flow, endpoint, engine, principal, request_id, key_id
                )
            else:
                read = self._read(flow, endpoint, engine, principal, request_id, key_id)
            # Everything that can fail about the forwarded bytes fails before reserving.
            forward = wire.encode_json_body(read.forward_body) if read.forward_body is not None else None
        except RequestParseError as e:
            rec = RequestRecord(request_id, principal, provider=endpoint.family, api=endpoint.api)
            await self._refuse_early(flow, endpoint, rec, refusals.parse(str(e)))
            return
        counter = engine.counter_request(read, endpoint.family)
        decision = await self._on_ledger(
            lambda: engine.admit(read.info, now(), count_may_help=counter is not None)
        )
        if decision.hinges_on_count:
            assert counter is not None
            read = await self._count_input(flow, engine, read, counter, who)
            decision = await self._on_ledger(engine.admit, read.info, now())
        if not decision.allowed:
            assert decision.refusal is not None
            self._answer(flow, endpoint, decision.refusal)
            return
        # Allowed: from here on the reservation must be settled by `response` or `error`, or
        # released here if the flow cannot be forwarded after all.
        try:
            if decision.output_cap is not None:  # output-cap injection: the body changes again
                forward = wire.encode_json_body(engine.forward_body(read, decision, endpoint.family))
            if forward is not None:
                flow.request.content = forward
            # Read usage from plain bytes; the stream tap still decodes if an upstream compresses.
            flow.request.headers["accept-encoding"] = "identity"
            flow.metadata["spendfuse"] = {
                "decision": "dry_run" if decision.refusal else "allowed",
                "model": read.info.model,
                "principal": principal,
                "reserved_usd": f"{decision.reserved:.6f}",
                **(
                    {"injected_output_tokens": decision.output_cap} if decision.output_cap is not None else {}
                ),
                **({"would_refuse": decision.refusal.rule} if decision.refusal else {}),
            }
            self._pending[flow.id] = Pending(read.info, endpoint, flow, engine, decision=decision)
            self._decided[flow.id] = Decided(
                _decided_endpoint(endpoint), _priced_fingerprint(flow), principal
            )
        except Exception as e:
            logger.exception("spendfuse: %s could not be forwarded after its reservation", request_id)
            what = type(e).__name__
            await self._on_ledger(
                lambda: engine.ledger.release(request_id, now(), outcome=f"not forwarded: {what}")
            )
            self._fail(flow, endpoint, refusals.internal(what))

    async def _count_input(
        self, flow: http.HTTPFlow, engine: Engine, read: ReadRequest, counter: tuple[str, dict], who: Identity
    ) -> ReadRequest:
        """A refusal (or a price tier) that hinges on the estimate's margins: ask the provider's
        free counter for the input, with the client's own credentials, and reserve that (with
        the rules' counter margin) instead. The
        counter's request goes through this proxy like any other (a free endpoint, screened and
        routed as usual). If it fails, the estimate stands: never a guess lower than it."""
        suffix, body = counter
        counted = await self._ask_counter(
            flow, flow.request.path.split("?", 1)[0].rstrip("/") + suffix, body, who
        )
        if counted is None:
            return read
        logger.info(
            "spendfuse: %s near a limit or a price tier: the provider counts %d input tokens (estimated %d)",
            read.info.request_id,
            counted,
            read.info.input_tokens,
        )
        return replace(read, info=engine.with_counted_input(read.info, counted))

    async def _ask_counter(self, flow: http.HTTPFlow, path: str, body: dict, who: Identity) -> int | None:
        """POST `body` to `path` on the flow's own target, through this proxy, with the flow's
        credentials. The count, or None on any failure."""
        import httpx

        port = self._own_port()
        if port is None:
            return None
        headers = {k: v for k, v in flow.request.headers.items() if k.lower() in _COUNTER_HEADERS}
        # The counter's request is the caller's: it passes identity (require_key, key access)
        # as the caller did, and the token ends with this call.
        token = uuid.uuid4().hex
        headers[INTERNAL_HEADER] = token
        self._internal[token] = who
        url = f"{flow.request.scheme}://{flow.request.host}:{flow.request.port}{path}"
        ca = Path(ctx.options.confdir).expanduser() / "mitmproxy-ca-cert.pem"
        try:
            async with httpx.AsyncClient(
                proxy=f"http://127.0.0.1:{port}", verify=str(ca), timeout=10
            ) as client:
                answer = await client.post(url, json=body, headers=headers)
            counted = answer.json().get("input_tokens") if answer.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError) as e:
            logger.warning("spendfuse: the provider's token counter failed (%s); keeping the estimate", e)
            return None
        finally:
            self._internal.pop(token, None)
        if isinstance(counted, bool) or not isinstance(counted, int) or counted < 0:
            logger.warning(
                "spendfuse: the provider's token counter answered %s; keeping the estimate",
                answer.status_code,
            )
            return None
        return counted

    @staticmethod
    def _own_port() -> int | None:
        """The port of this proxy's regular (HTTP proxy) listener, or None."""
        proxyserver = ctx.master.addons.get("proxyserver")
        for server in getattr(proxyserver, "servers", ()):
            if isinstance(server.mode, mode_specs.RegularMode):
                for address in server.listen_addrs:
                    return int(address[1])
        return None

    @staticmethod
    def _read(
        flow: http.HTTPFlow,
        endpoint: Endpoint,
        engine: Engine,
        principal: str,
        request_id: str,
        key_id: str | None = None,
    ) -> ReadRequest:
        try:
            text = flow.request.get_content(strict=True)
        except ValueError as e:
            raise RequestParseError(f"cannot decode the request body: {e}") from e
        body = wire.decode_json_body(text or b"")
        betas = [b for v in flow.request.headers.get_all("anthropic-beta") for b in v.split(",")]
        return engine.read_request(
            endpoint, body, principal=principal, request_id=request_id, betas=betas, key_id=key_id
        )

    # -- response -----------------------------------------------------------------------------

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        pending = self._pending.get(flow.id)
        if pending is None or flow.response is None:
            return
        decision = pending.decision
        if decision is not None and decision.remaining is not None:
            # The agent's headroom, as it stood once this request was reserved at its worst case.
            flow.response.headers["x-spendfuse-remaining-usd"] = f"{decision.remaining:.6f}"
            flow.response.headers["x-spendfuse-budget"] = decision.binding or ""
        try:
            if flow.response.headers.get("content-type", "").lower().startswith("text/event-stream"):
                reader = wire.FAMILIES[pending.endpoint.family].StreamUsage(pending.info.api)
                tap = StreamTap(reader, flow.response.headers.get("content-encoding", ""))
                pending.tap = tap
                flow.response.stream = tap
        except Exception:
            # Not streaming means buffering: `response` then reads usage from the whole body.
            logger.exception("spendfuse: could not install the stream tap for %s", flow.id)

    async def response(self, flow: http.HTTPFlow) -> None:
        self._request_ids.pop(flow.id, None)
        self._decided.pop(flow.id, None)
        answered = self._answered.pop(flow.id, None)
        if answered is not None:
            if (
                flow.is_replay == "response"
                and flow.response is not None
                and flow.response.status_code != answered[0]
            ):
                # Server replay overwrites a refusal with the recorded answer; put the refusal back.
                status, headers, body = answered
                flow.response = http.Response.make(status, body, headers)
            return
        pending = self._pending.pop(flow.id, None)
        if pending is None:
            return
        try:
            await self._settle_response(flow, pending, pending.engine)
        except Exception:
            logger.exception("spendfuse: settling %s failed", flow.id)
            await self._charge_held(pending.engine, pending)

    async def _charge_held(self, engine: Engine, pending: Pending) -> None:
        """When settling failed for a reason other than the ledger, charge the reservation (an
        upper bound of what the provider billed) rather than leave the hold to the reaper."""
        request_id = pending.info.request_id
        try:
            await self._on_ledger(
                lambda: engine.ledger.charge_reservation(request_id, now(), outcome="settle failed")
            )
        except LedgerUnavailable as e:
            logger.error("spendfuse: %s stays held until the reaper charges it: %s", request_id, e)

    async def _settle_response(self, flow: http.HTTPFlow, pending: Pending, engine: Engine) -> None:
        resp = flow.response
        assert resp is not None
        family = wire.FAMILIES[pending.endpoint.family]
        if flow.is_replay == "response":
            # A replayed answer cost no real money.
            await self._on_ledger(
                lambda: engine.ledger.release(pending.info.request_id, now(), outcome="replayed")
            )
            return
        usage = None
        tap = pending.tap
        if tap is not None and tap.chunks > 0:
            usage = tap.usage
        elif resp.raw_content:
            content = resp.get_content(strict=False) or b""
            if resp.headers.get("content-type", "").lower().startswith("text/event-stream"):
                usage = read_sse_body(family.StreamUsage(pending.info.api), content)
            else:
                try:
                    body = json.loads(content)
                except ValueError:
                    body = None
                usage = family.usage_from_body(pending.info.api, body)
        if usage is not None:
            outcome = "usage"
        elif resp.status_code >= 400:
            outcome = f"upstream_error_{resp.status_code}"
        else:
            outcome = "no_usage"
        await self._on_ledger(
            lambda: engine.finish(
                pending.info,
                usage,
                now(),
                outcome=outcome,
                upstream_ran=usage is not None or resp.status_code < 400,
            )
        )

    async def error(self, flow: http.HTTPFlow) -> None:
        self._request_ids.pop(flow.id, None)
        self._answered.pop(flow.id, None)
        self._decided.pop(flow.id, None)
        pending = self._pending.pop(flow.id, None)
        if pending is None:
            return
        engine = pending.engine
        try:
            usage = pending.tap.usage if pending.tap is not None else None
            reached = _reached_upstream(flow)
            msg = (flow.error.msg if flow.error else "error").split("\n")[0][:80]
            await self._on_ledger(
                lambda: engine.finish(
                    pending.info,
                    usage,
                    now(),
                    upstream_ran=reached,
                    outcome=f"usage; then {msg}" if usage is not None else f"error: {msg}",
                )
            )
        except Exception:
            logger.exception("spendfuse: settling failed flow %s failed", flow.id)
            await self._charge_held(engine, pending)


addons = [SpendFuse()]


def ensure_ca_bundle(confdir: Path) -> tuple[Path, Path]:
    """Create mitmproxy's CA in `confdir` if missing, and a bundle of certifi's roots plus that
    CA (SSL_CERT_FILE replaces a client's default roots, so it needs both). Returns
    `(bundle, ca_cert)`."""
    import certifi
    from mitmproxy import certs

    confdir.mkdir(parents=True, exist_ok=True)
    certs.CertStore.from_store(str(confdir), "mitmproxy", 2048)
    ca = confdir / "mitmproxy-ca-cert.pem"
    bundle = confdir / "spendfuse-ca-bundle.pem"
    content = Path(certifi.where()).read_text() + "\n" + ca.read_text()
    if not bundle.exists() or bundle.read_text() != content:
        tmp = bundle.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(content)
        os.replace(tmp, bundle)
    return bundle, ca


# -- the fail-closed launcher ----------------------------------------------------------------------


def launch(argv: list[str]) -> int:
    """`spendfuse run [mitmdump args]`: mitmdump with spendfuse registered before the arguments
    are parsed, so a malformed or misspelled `spendfuse_*` option exits non-zero instead of
    leaving a proxy that forwards without enforcement."""
    from mitmproxy.addons.script import ScriptLoader
    from mitmproxy.tools import cmdline
    from mitmproxy.tools import main as mitm_main
    from mitmproxy.tools.dump import DumpMaster

    class SpendfuseMaster(DumpMaster):
        def __init__(self, options, **kwargs):  # type: ignore[no-untyped-def]
            super().__init__(options, **kwargs)
            addon = SpendFuse()
            self.addons.add(addon)
            # Run before scripts and replay: a `-s` script that rewrites the target host must
            # not turn LLM traffic into traffic spendfuse does not recognise.
            chain = self.addons.chain
            chain.remove(addon)
            first_script = next((i for i, a in enumerate(chain) if isinstance(a, ScriptLoader)), len(chain))
            chain.insert(first_script, addon)

    if any(Path(a).name == "addon.py" for a in argv):
        print("spendfuse run already loads the addon; do not pass -s addon.py", file=sys.stderr)
        return 2

    def extra(args):  # type: ignore[no-untyped-def]
        # The same flow-filter handling as mitmdump's own entry point.
        if args.filter_args:
            v = " ".join(args.filter_args)
            return dict(save_stream_filter=v, readfile_filter=v, dumper_filter=v)
        return {}

    try:
        mitm_main.run(SpendfuseMaster, cmdline.mitmdump, argv, extra)
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    return 0
