"""Flows into plain facts for the engine: who sends a request, every name it carries for its
target, its body, what the upstream answered and whether it was reached. No decisions here."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from mitmproxy import ctx, http
from mitmproxy.proxy import mode_specs

from governance import bodies, families, gateway, shape, wire
from governance.families.common import bearer_key
from governance.families.google import API_KEY_QUERY
from governance.gate import Incoming
from governance.identity import KEY_HEADERS, Credentials, Identity
from governance.mitm.state import State
from governance.settlement import ResponseFacts
from governance.types import RequestLine
from governance.wire.tap import StreamTap

if TYPE_CHECKING:
    from governance.engine import Engine

# Modes where the destination is an address the client's own resolver chose (no CONNECT names
# it), so the SNI or Host says which host it is for.
_RESOLVED_DESTINATION_MODES = (mode_specs.TransparentMode, mode_specs.WireGuardMode, mode_specs.LocalMode)
_PRINCIPAL_HEADERS = frozenset({"proxy-authorization", *KEY_HEADERS, *families.API_KEY_HEADERS})


def now() -> datetime:
    """The one place real time is read; everything below takes `now` as an argument."""
    return datetime.now(UTC)


def proxy_credentials(header: str | None) -> tuple[str, str | None] | None:
    """`(user, secret)` of a `Proxy-Authorization: Basic` header, or None when there is none."""
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        text = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, secret = text.partition(":")
    return (user, secret if sep else None) if user else None


def credentials(flow: http.HTTPFlow, state: State, *, listen_port: int | None = None) -> Credentials:
    """What the request presents about who sends it (see `governance.identity`). `listen_port`:
    the proxy's `listen_port` option (default: read from the running proxy)."""
    # One pass over the headers: each `headers.get` is a scan of its own.
    found: dict[str, str] = {}
    for name, value in flow.request.headers.items():
        name = name.lower()
        if name in _PRINCIPAL_HEADERS and value and name not in found:
            found[name] = value
    conn = state.conns.get(flow.client_conn.id)
    proxy = (conn.proxy_user if conn else None) or proxy_credentials(found.get("proxy-authorization"))
    api_key = next((found[n] for n in families.API_KEY_HEADERS if n in found), None)
    if api_key is None and API_KEY_QUERY + "=" in flow.request.path:
        api_key = flow.request.query.get(API_KEY_QUERY) or None  # Google's `?key=`
    mode = flow.client_conn.proxy_mode
    # The port the proxy listens on for this mode: in transparent modes the connection's own
    # address is the destination the client dialled, which says nothing about who it is.
    if listen_port is None:
        listen_port = getattr(ctx.options, "listen_port", None)
    port = mode.listen_port(listen_port)
    listeners = (str(port), mode.full_spec) if port else (mode.full_spec,)
    header = next((n for n in KEY_HEADERS if n in found), None)
    return Credentials(
        proxy_user=proxy[0] if proxy else None,
        proxy_secret=proxy[1] if proxy else None,
        key_header=found[header] if header else None,
        key_header_name=header,
        listeners=listeners,
        api_key=bearer_key(api_key) if api_key else None,
    )


def incoming(flow: http.HTTPFlow, state: State, *, keep_host_header: bool | None = None) -> Incoming:
    """The request's facts for the gate: every name it carries for its target. `keep_host_header`:
    the proxy's option of that name (default: read from the running proxy)."""
    req = flow.request
    mode = flow.client_conn.proxy_mode
    names: list[tuple[str, str]] = [("url", req.host)]
    if isinstance(mode, mode_specs.ReverseMode):
        # The destination is the operator's reverse target; the client's Host names the proxy
        # and is replaced upstream, unless keep_host_header sends it on. On spendfuse's gateway
        # listener the Host is the one the gateway set from its table (governance.gateway).
        if keep_host_header is None:
            keep_host_header = getattr(ctx.options, "keep_host_header", False)
        if keep_host_header or gateway.is_gateway_target(mode.scheme, mode.address[0]):
            names += [("host", v) for v in req.headers.get_all("host")]
    else:
        if connect := state.connect_target(flow.client_conn.id):
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
        body=lambda: body_as_sent(req),
    )


def body_as_sent(req: http.Request) -> bytes | None:
    """A request's body for the gate's look at it, as its server would read it (`bodies.as_read`:
    inflated within a bound; None past it)."""
    encodings = [e for v in req.headers.get_all("content-encoding") for e in v.split(",")]
    return bodies.as_read(req.raw_content or b"", encodings)


def request_body(flow: http.HTTPFlow, family: str) -> tuple[object, list[str]]:
    """The request's decoded JSON body (its content codings undone as its provider would:
    `bodies.as_metered`) and its price flags (Anthropic's betas) as `family` reads them. Raises
    `RequestParseError`."""
    codings = flow.request.headers.get("content-encoding", "").split(",")
    body = wire.decode_json_body(bodies.as_metered(flow.request.raw_content or b"", codings))
    return body, wire.FAMILIES[family].price_flags(flow.request.headers.get_all)


def request_line(flow: http.HTTPFlow) -> RequestLine:
    """The request's path and headers as the engine reads them (names lower-cased)."""
    return RequestLine(
        flow.request.path, tuple((k.lower(), v) for k, v in flow.request.headers.items(multi=True))
    )


def priced_fingerprint(flow: http.HTTPFlow) -> int:
    """What a metered request was priced from: its body, and the headers that change what the
    provider bills (Anthropic's betas, such as the 1M-token context)."""
    headers = flow.request.headers
    priced = tuple(v for name in families.PRICE_HEADERS for v in headers.get_all(name))
    return hash((flow.request.raw_content, priced))


def principal(engine: Engine | None, flow: http.HTTPFlow, state: State) -> str:
    """The principal a request is recorded under (`unidentified` when its claim failed)."""
    if engine is None:
        return "default"
    who = engine.identify(credentials(flow, state))
    return who.principal if isinstance(who, Identity) else "unidentified"


def request_id(flow: http.HTTPFlow, state: State) -> str:
    """The ledger's id for this request. A flow's id, except that a client replay re-sends a
    recorded flow under its old id, and each sending is a request of its own."""
    fs = state.flow(flow.id)
    if fs.request_id is None:
        fs.request_id = flow.id if flow.is_replay != "request" else f"{flow.id}~{uuid.uuid4().hex[:12]}"
    return fs.request_id


def reached_upstream(flow: http.HTTPFlow) -> bool:
    """Whether the request can have reached the upstream: a response came, or the connection to
    it came up (TLS included). When it cannot have, nothing was billed."""
    server = flow.server_conn
    return flow.response is not None or (
        server is not None
        and server.timestamp_tcp_setup is not None
        and (flow.request.scheme == "http" or server.timestamp_tls_setup is not None)
    )


def response_facts(flow: http.HTTPFlow, tap: StreamTap | None) -> ResponseFacts:
    """What the upstream answered: the tap's usage when it read the stream, else the body."""
    resp = flow.response
    assert resp is not None
    content_type = resp.headers.get("content-type", "")
    if flow.is_replay == "response":
        return ResponseFacts(resp.status_code, content_type, replayed=True)
    if tap is not None and tap.chunks > 0:
        return ResponseFacts(resp.status_code, content_type, streamed=True, tapped=tap.usage)
    body = (resp.get_content(strict=False) or b"") if resp.raw_content else b""
    return ResponseFacts(resp.status_code, content_type, body)
