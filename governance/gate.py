"""The gate: what happens to a request before any pricing. Pure: (request facts, policy) -> verdict.

It decides which host a request really targets from every name it carries, whether the egress
rules let it out, whether a request to a host the table does not know is LLM-shaped
(`governance.shape`, refused unless the rules say otherwise), and whether an LLM request is
metered, free, or refused (an upgrade, a method override, a read with a body, an endpoint this
version does not meter, names that disagree). `Engine.admit` prices and reserves
only what the gate sends to metering.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from governance import hosts, refusals, shape, websocket, wire
from governance.hosts import UNKNOWN_ENTRY, HostTable, canonical_host
from governance.matching import glob_match
from governance.policy import Egress, Policy
from governance.types import Endpoint, Metering, Refusal

#: The health probe's host: answered by the proxy itself, never forwarded.
HEALTH_HOST = "spendfuse.invalid"


@dataclass(frozen=True)
class Incoming:
    """The facts of one HTTP request that the gate needs, as the addon read them."""

    method: str
    path: str
    port: int | None
    names: tuple[tuple[str, str], ...]  # ("url" | "connect" | "sni" | "host" | "authority", name)
    upgrade: tuple[str, ...] = ()  # every Upgrade header value, as sent
    destination_is_resolved: bool = False  # transparent-style modes: the destination is an IP
    claims: tuple[str, ...] = ()  # other methods it asks to be run as (`shape.method_claims`)
    has_body: bool = False  # it carries a non-empty body
    # The body, read only when needed (an unknown host's request that asks to write); None: it
    # cannot be read as sent (compressed).
    body: Callable[[], bytes | None] = field(default=lambda: b"", compare=False)


class Action(enum.Enum):
    PASS = "pass"  # not LLM traffic, and egress lets it out: forward untouched
    HEALTH = "health"  # the health probe: answered by the proxy
    FREE = "free"  # an LLM endpoint the provider does not bill (or one the rules let through)
    METER = "meter"  # price, reserve, forward, settle
    WEBSOCKET = "websocket"  # a metered WebSocket: upgrade; each request frame is metered
    REFUSE = "refuse"  # answer `refusal`, and record it


@dataclass(frozen=True)
class Verdict:
    action: Action
    endpoint: Endpoint | None = None  # set for LLM traffic (its envelope answers refusals)
    refusal: Refusal | None = None
    notes: tuple[str, ...] = field(default=())


def upgrade_tokens(values: Sequence[str]) -> list[str]:
    """The protocols an `Upgrade` header asks for: a comma-separated token list, possibly over
    several header lines, each token `name[/version]` (RFC 9110 §7.8), lower-cased."""
    return [t.strip().lower() for v in values for t in v.split(",") if t.strip()]


def _egress_matches(pattern: str, host: str) -> bool:
    pattern = pattern.strip().lower().rstrip(".")
    if "*" not in pattern:
        return canonical_host(pattern) == host
    return glob_match(pattern, host)


def _egress_refusal(
    names: Iterable[str], port: int | None, policy: Policy, table: HostTable
) -> Refusal | None:
    """The refusal of the first name the egress rules do not let out, or None."""
    for name in names:
        if name and not egress_allows(policy.egress, table, name, port):
            return refusals.egress(canonical_host(name), port)
    return None


def egress_allows(egress: Egress, table: HostTable, host: str, port: int | None) -> bool:
    """Whether the egress rules let a connection to `host:port` out. LLM hosts are always
    reachable (they are metered instead); so is the health probe."""
    if egress.mode == "open":
        return True
    canonical = canonical_host(host)
    if canonical == HEALTH_HOST or table.lookup(canonical) is not None:
        return True
    return any(
        _egress_matches(rule.host, canonical) and (not rule.ports or port in rule.ports)
        for rule in egress.allow
    )


def screen(incoming: Incoming, policy: Policy, table: HostTable) -> Verdict:
    """The verdict on one request (see the module doc). First match wins: health probe, names
    that disagree, egress and LLM shape (unknown hosts), upgrades, method overrides and reads
    with a body, then the endpoint's kind."""
    url_host = next((name for kind, name in incoming.names if kind == "url"), "")
    if canonical_host(url_host) == HEALTH_HOST:
        return Verdict(Action.HEALTH)
    target = hosts.resolve(table, incoming.names, destination_is_resolved=incoming.destination_is_resolved)
    endpoint, socket = _endpoint(incoming, target, policy, table)
    if target.mismatch is not None:
        assert target.entry is not None
        envelope = endpoint or Endpoint(
            target.entry.family or target.entry.name,
            "",
            Metering.UNMETERED,
            target.host,
            wire.normalise_path(incoming.path),
            target.entry.envelope,
            target.entry.name,
        )
        return Verdict(Action.REFUSE, envelope, refusals.host_mismatch(target.mismatch))
    method = incoming.method.strip().upper()
    if endpoint is None:
        # Not a known LLM host: every name it carries must be allowed out (a Host that differs
        # from the destination is how domain fronting reaches a host the allowlist does not name).
        refusal = _egress_refusal((name for _, name in incoming.names), incoming.port, policy, table)
        if refusal is not None:
            return Verdict(Action.REFUSE, None, refusal)
        endpoint = _unknown_llm(incoming, url_host, policy, table)
        if endpoint is None:
            return Verdict(Action.PASS)
        if endpoint.entry != UNKNOWN_ENTRY:
            metering = policy.unknown_llm_hosts == "meter"
            refusal = refusals.unknown_llm_host(method, endpoint.host, endpoint.path, metering=metering)
            return Verdict(Action.REFUSE, endpoint, refusal)
    tokens = upgrade_tokens(incoming.upgrade)
    if tokens:
        if socket:
            return Verdict(Action.WEBSOCKET, endpoint)
        return Verdict(Action.REFUSE, endpoint, refusals.upgrade(tokens))
    # A request is judged by the method it asks for: one asking for another is refused, and so
    # is a read with a body (what runs it depends on the server, not on its method).
    if incoming.claims:
        return Verdict(Action.REFUSE, endpoint, refusals.method_override(method, incoming.claims))
    if method in shape.SAFE_METHODS and incoming.has_body:
        return Verdict(Action.REFUSE, endpoint, refusals.read_with_body(method))
    if endpoint.metering is Metering.FREE:
        return Verdict(Action.FREE, endpoint)
    if endpoint.metering is Metering.UNMETERED:
        if any(a.matches(incoming.method, endpoint.host, endpoint.path) for a in policy.allow_unmetered):
            return Verdict(Action.FREE, endpoint, notes=("allow_unmetered",))
        return Verdict(
            Action.REFUSE, endpoint, refusals.unmetered_endpoint(incoming.method.upper(), endpoint)
        )
    return Verdict(Action.METER, endpoint)


def _endpoint(
    incoming: Incoming, target: hosts.Target, policy: Policy, table: HostTable
) -> tuple[Endpoint | None, bool]:
    """The LLM endpoint a request is for (None: not a known LLM host's), and whether it is a
    WebSocket upgrade the rules meter (`governance.websocket.metered_upgrade`): then the endpoint
    is the route it opens as if posted, as its frames are requests to it."""
    if target.entry is None:
        return None, False
    method = incoming.method.strip().upper()
    if incoming.upgrade and method == "GET" and not (incoming.has_body or incoming.claims):
        posted = wire.detect_on(target.entry, "POST", target.host, incoming.path, table)
        if websocket.metered_upgrade(posted, upgrade_tokens(incoming.upgrade), policy.websockets):
            return posted, True
    return wire.detect_on(target.entry, incoming.method, target.host, incoming.path, table), False


def _unknown_llm(incoming: Incoming, url_host: str, policy: Policy, table: HostTable) -> Endpoint | None:
    """The endpoint of an LLM-shaped request to a host missing from the table (see
    `governance.shape`), or None when it is not LLM-shaped or the rules pass such requests.
    Under `unknown_llm_hosts: meter`, an OpenAI route is metered or free under `UNKNOWN_ENTRY`;
    anything else is UNMETERED, for the caller to refuse."""
    if policy.unknown_llm_hosts == "pass" or not shape.asks_to_write(
        incoming.method, incoming.claims, incoming.has_body
    ):
        return None
    path = wire.normalise_path(incoming.path)
    envelope = table.shape.match(path, incoming.body)
    if envelope is None:
        return None
    host = canonical_host(url_host or next((n for _, n in incoming.names if n), ""))
    if policy.unknown_llm_hosts == "meter":
        post = incoming.method.strip().upper() == "POST"
        routes = table.families["openai"]
        for free, route, api in routes.literal():
            if path.endswith(route):
                metering = Metering.FREE if free else Metering.METERED
                # As on a known host: only a POST runs a route; the gate refuses the rest.
                if not post:
                    metering, api = Metering.UNMETERED, path
                return Endpoint("openai", api, metering, host, path, "openai", UNKNOWN_ENTRY)
    return Endpoint("unknown", path, Metering.UNMETERED, host, path, envelope, "")


# -- connections that are not HTTP ---------------------------------------------------------------


def raw_transport_refusal(
    names: Sequence[str], port: int | None, policy: Policy, table: HostTable, protocol: str
) -> Refusal | None:
    """Whether a connection that mitmproxy would relay as raw bytes (TCP, UDP, QUIC that is not
    HTTP/3) may go on. Never toward an LLM host, by any of its names: such bytes would reach the
    provider without a decision. In allowlist mode, only to allowed destinations."""
    for name in names:
        if name and table.lookup(name) is not None:
            return refusals.raw_transport(protocol, canonical_host(name))
    return _egress_refusal(names, port, policy, table)


def exempted_llm_hosts(
    table: HostTable,
    *,
    ignore_hosts: Sequence[str] = (),
    allow_hosts: Sequence[str] = (),
    tcp_hosts: Sequence[str] = (),
    udp_hosts: Sequence[str] = (),
) -> list[str]:
    """Problems with mitmproxy options that would exempt an LLM host from interception (its bytes
    would then be tunnelled unmetered). Each option is a list of regexes as mitmproxy reads them:
    searched in `host:port` (ignore/allow) or in the host (tcp/udp)."""
    problems = []
    for name in table.llm_names():
        address = f"{name}:443"
        for option, patterns, subject in (
            ("ignore_hosts", ignore_hosts, address),
            ("tcp_hosts", tcp_hosts, name),
            ("udp_hosts", udp_hosts, name),
        ):
            hit = next((p for p in patterns if re.search(p, subject, re.IGNORECASE)), None)
            if hit is not None:
                problems.append(f"{option} pattern {hit!r} exempts the LLM host {name}")
        if allow_hosts and not any(re.search(p, address, re.IGNORECASE) for p in allow_hosts):
            problems.append(f"allow_hosts does not cover the LLM host {name}, so it would pass unintercepted")
    return problems


def connect_refusal(
    names: Sequence[str], port: int | None, policy: Policy, table: HostTable
) -> Refusal | None:
    """The verdict on a CONNECT (its target, and the Host header it may carry): a tunnel to an
    LLM host is allowed (what passes inside is screened request by request); names that
    disagree about an LLM host are refused; anything else must pass the egress rules."""
    target = hosts.resolve(table, [("connect", n) for n in names])
    if target.entry is not None:
        return refusals.host_mismatch(target.mismatch) if target.mismatch is not None else None
    return _egress_refusal(names, port, policy, table)
