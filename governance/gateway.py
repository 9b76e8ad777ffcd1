"""Gateway (base-URL) mode, engine side: which upstream a request sent to the gateway listener
is for, read from the path prefix it carries (`rules/gateway.yaml`).

A client that cannot use a proxy points its base URL at the gateway instead
(`OPENAI_BASE_URL=http://host:port/openai/v1`, `ANTHROPIC_BASE_URL=http://host:port/anthropic`).
`route` maps `/openai/v1/chat/completions` to `https://api.openai.com/v1/chat/completions`;
the proxy side rewrites the flow to it before the fuse decides, so every decision, the ledger
and the refusals are those of proxy mode.

The client is the adversary: `route` only ever answers with a host the table names, and it
refuses (never guesses) a path that matches no prefix or that an upstream could read as
another path than the one matched: dot segments, empty segments, percent-encoded slashes, dots,
backslashes or percent signs, and characters a path does not carry. Pure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from governance import RULES_DIR, refusals
from governance.families import EnvelopeName
from governance.tables import load_table
from governance.types import Endpoint, Metering, Refusal

#: The shipped routing table.
DEFAULT_ROUTES = RULES_DIR / "gateway.yaml"
#: The reverse-mode target that marks a mitmproxy listener as spendfuse's gateway. `.invalid`
#: never resolves (RFC 2606): a request the gateway did not route has nowhere to go.
GATEWAY_TARGET = "gateway.spendfuse.invalid"
GATEWAY_SCHEME = "http"

# What a path may carry (RFC 3986 pchar and "/"); a `%` must start a valid escape.
_PATH = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*\Z")
_QUERY = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*\Z")
_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Escapes an upstream may decode into a path separator, a dot segment or a second escape.
_SEPARATOR_ESCAPE = re.compile(r"%(2[EeFf]|5[Cc]|25)")
_PREFIX = re.compile(r"(/[A-Za-z0-9\-_~]+(\.[A-Za-z0-9\-_~]+)*)+\Z")


class GatewayRoute(BaseModel):
    """One line of the table: requests under `prefix` go to `upstream`, the prefix replaced by
    the upstream's own path."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    prefix: Annotated[str, Field(min_length=2)]
    """A path prefix such as `/openai/v1`; it matches whole segments only."""
    upstream: str
    """An `https://` (or `http://`) URL with no query, user or fragment; its path replaces the
    prefix (`/openai/v1` to `https://api.openai.com/v1`)."""
    envelope: EnvelopeName = "openai"
    """Whose error envelope a refusal of a request under this prefix is rendered in."""

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not _PREFIX.match(v):
            raise ValueError("a prefix is one or more /segments of letters, digits, '-', '_', '~', '.'")
        if any(seg in (".", "..") for seg in v.split("/")):
            raise ValueError("a prefix has no dot segments")
        return v

    @field_validator("upstream")
    @classmethod
    def _upstream(cls, v: str) -> str:
        u = urlsplit(v)
        if u.scheme not in ("https", "http") or not u.hostname:
            raise ValueError("the upstream is an https:// or http:// URL with a host")
        if u.query or u.fragment or u.username or u.password or "?" in v or "#" in v:
            raise ValueError("the upstream has no query, fragment or user")
        path = u.path.rstrip("/")
        if path and (not _PREFIX.match(path) or any(s in (".", "..") for s in path.split("/"))):
            raise ValueError("the upstream's path is plain /segments")
        _ = u.port  # raises ValueError for a malformed port
        return v


class GatewayTable(BaseModel):
    """`rules/gateway.yaml`: the path prefixes the gateway listener serves."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    routes: Annotated[list[GatewayRoute], Field(min_length=1)]
    """Path prefix -> upstream; the longest matching prefix wins."""
    default_envelope: EnvelopeName = "openai"
    """The envelope of the 404 for a path that matches no prefix."""

    @model_validator(mode="after")
    def _unique(self) -> GatewayTable:
        prefixes = [r.prefix for r in self.routes]
        dup = sorted({p for p in prefixes if prefixes.count(p) > 1})
        if dup:
            raise ValueError(f"prefixes listed twice: {', '.join(dup)}")
        return self


@dataclass(frozen=True)
class Route:
    """Where a gateway request goes: the flow's new scheme, host, port, Host header and path."""

    prefix: str
    scheme: str
    host: str
    port: int
    host_header: str
    path: str  # the upstream path, with the client's query


@dataclass(frozen=True)
class Unrouted:
    """A gateway request that goes nowhere: answered with `refusal` in `endpoint`'s envelope."""

    endpoint: Endpoint
    refusal: Refusal


class Router:
    """A loaded table; it tries the prefixes longest first."""

    def __init__(self, table: GatewayTable) -> None:
        self.routes = tuple(sorted(table.routes, key=lambda r: len(r.prefix), reverse=True))
        self.default_envelope = table.default_envelope

    def route(self, method: str, target: str) -> Route | Unrouted:
        """Where the request `method target` (an origin-form request target: path and query)
        sent to the gateway goes, or why it goes nowhere."""
        path, _, query = target.partition("?")
        matched = self._match(path)
        why = _unsafe(path, query)
        if matched is None or why is not None:
            envelope = matched.envelope if matched is not None else self.default_envelope
            shown = target if len(target) <= 200 else target[:200] + "..."
            refusal = refusals.gateway_unrouted(method, shown, why or "no gateway route starts it")
            endpoint = Endpoint("gateway", "gateway", Metering.UNMETERED, "", path, envelope=envelope)
            return Unrouted(endpoint, refusal)
        u = urlsplit(matched.upstream)
        assert u.hostname is not None  # the table's validator saw to it
        default_port = 443 if u.scheme == "https" else 80
        port = u.port or default_port
        host_header = u.hostname if port == default_port else f"{u.hostname}:{port}"
        rest = path[len(matched.prefix) :]
        new_path = (u.path.rstrip("/") + rest) or "/"
        return Route(
            matched.prefix,
            u.scheme,
            u.hostname,
            port,
            host_header,
            new_path + (f"?{query}" if query else ""),
        )

    def _match(self, path: str) -> GatewayRoute | None:
        for r in self.routes:
            if path == r.prefix or path.startswith(r.prefix + "/"):
                return r
        return None


def _unsafe(path: str, query: str) -> str | None:
    """Why an upstream could read `path` otherwise than the gateway matched it, or None."""
    if not path.startswith("/"):
        return "the gateway takes origin-form request targets (a path) only"
    if not _PATH.match(path) or not _QUERY.match(query):
        return "the request target carries characters a URL does not"
    if _ESCAPE.search(path) or _ESCAPE.search(query):
        return "the request target carries a malformed percent escape"
    if _SEPARATOR_ESCAPE.search(path):
        return "the path carries a percent-encoded slash, backslash, dot or percent sign"
    segments = path.split("/")[1:]
    if any(s in (".", "..") for s in segments):
        return "the path carries a dot segment"
    if "" in segments[:-1]:
        return "the path carries an empty segment (//)"
    return None


def load(path: Path = DEFAULT_ROUTES) -> Router:
    """The routing table at `path`. Raises `PolicyError` naming the file and what is wrong, so a
    gateway without a valid table does not start."""
    return Router(load_table(path, GatewayTable, "gateway routes"))


def listener_spec(value: str) -> str:
    """The mitmproxy mode spec of the gateway listener `value` names (`PORT` or `HOST:PORT`).
    Raises ValueError for anything else."""
    host, sep, port_text = value.strip().rpartition(":")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535 or (sep and not host):
        raise ValueError(f"the gateway listener is PORT or HOST:PORT, not {value!r}")
    return f"reverse:{GATEWAY_SCHEME}://{GATEWAY_TARGET}@{value.strip()}"


def is_gateway_target(scheme: str, host: str) -> bool:
    """Whether a reverse-mode target `scheme://host` marks spendfuse's gateway listener."""
    return host == GATEWAY_TARGET and scheme == GATEWAY_SCHEME
