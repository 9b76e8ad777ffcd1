"""Which hosts are LLM APIs, and which one a request really targets.

The table is data: `rules/hosts.yaml` (always loaded) plus the operator's own `hosts:` entries,
which are checked first (`governance.hostrules` validates them and builds the table). A request
carries several names for its target: the CONNECT target, the TLS SNI, the Host header (or
HTTP/2 `:authority`) and the absolute-form URL. The client controls all but the socket it
opened, so a request is LLM traffic when ANY of them names an LLM host, and names that disagree
are refused rather than trusted (`resolve`).

Names are compared in canonical form (`canonical_host`): lower case, no port, brackets or
trailing dots, and IP literals in the one spelling the resolver would turn any of their
spellings into (`127.1`, `0x7f.0.0.1`, `2130706433` and `::ffff:127.0.0.1` are all `127.0.0.1`).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from governance.routes import Mount, Routes
from governance.shape import LlmShape

#: Names that reach this machine whatever their spelling: connecting to them reaches the same
#: listeners as 127.0.0.1 (0.0.0.0 and :: do on Linux).
_LOOPBACK = "127.0.0.1"
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
_IPV4_SPELLING = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}$")


def _canonical_ip(name: str) -> str | None:
    """The canonical text of an IP literal in any spelling the C resolver accepts, else None."""
    if _IPV4_SPELLING.match(name):
        try:
            # inet_aton is what getaddrinfo uses for numeric names: 1 to 4 parts, each decimal,
            # octal (leading 0) or hex (0x), the last part filling the remaining bytes.
            return socket.inet_ntoa(socket.inet_aton(name))
        except OSError:
            return None
    if ":" in name:
        try:
            ip = ipaddress.IPv6Address(name.split("%", 1)[0])  # a zone id names an interface
        except ValueError:
            return None
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        if ip.is_loopback or ip.is_unspecified:
            return _LOOPBACK
        return ip.compressed
    return None


def _bare(host: str) -> str:
    """Lower case, without brackets, port or trailing dots."""
    h = host.strip().lower()
    if h.startswith("["):  # [v6] or [v6]:port
        h = h[1 : h.find("]")] if "]" in h else h[1:]
    elif h.count(":") == 1:  # name:port or v4:port; more colons is a bare IPv6 literal
        h = h.split(":", 1)[0]
    return h.rstrip(".")


def canonical_host(host: str) -> str:
    """A host name or IP literal in the form names are compared in (see the module doc)."""
    h = _bare(host)
    ip = _canonical_ip(h)
    if ip is not None:
        return _LOOPBACK if ip == "0.0.0.0" else ip
    if h in _LOOPBACK_NAMES or h.endswith(".localhost"):
        return _LOOPBACK
    return h


def is_ip_literal(host: str) -> bool:
    """Whether `host` (any spelling) is an IP address rather than a name."""
    return _canonical_ip(_bare(host)) is not None


def _glob(pattern: str) -> re.Pattern[str]:
    """`*` stands for any characters, dots included; everything else is literal."""
    return re.compile("^" + ".*".join(re.escape(part) for part in pattern.split("*")) + "$")


@dataclass(frozen=True)
class HostEntry:
    """A known LLM host (or set of hosts, by glob)."""

    name: str
    match: tuple[str, ...]
    family: str | None = None  # the metering family; None: known but not metered (refused)
    envelope: str = "openai"
    provider: str | None = None  # genai-prices provider id
    base_path: str | tuple[str, ...] = "/v1"
    mounts: tuple[Mount, ...] = ()  # more API families on the same host, tried before `family`
    operator: bool = False  # from the operator's rules rather than the shipped table
    settings: Mapping[str, Any] = field(default_factory=dict)  # operator extras (prices)
    _exact: frozenset[str] = field(default=frozenset(), repr=False, compare=False)
    _globs: tuple[re.Pattern[str], ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def build(cls, **kwargs: Any) -> HostEntry:
        match = tuple(kwargs.pop("match"))
        exact = frozenset(canonical_host(m) for m in match if "*" not in m)
        globs = tuple(_glob(m.strip().lower().rstrip(".")) for m in match if "*" in m)
        family = kwargs.get("family")
        kwargs.setdefault("envelope", family or "openai")
        kwargs.setdefault("provider", family)
        if isinstance(kwargs.get("base_path"), list):
            kwargs["base_path"] = tuple(kwargs["base_path"])
        mounts = tuple(
            m if isinstance(m, Mount) else Mount.build(m["family"], m["base_path"], m.get("envelope"))
            for m in kwargs.pop("mounts", ())
        )
        if family is not None:
            mounts += (Mount.build(family, kwargs.get("base_path", "/v1"), kwargs["envelope"]),)
        return cls(match=match, mounts=mounts, _exact=exact, _globs=globs, **kwargs)

    @property
    def metered(self) -> bool:
        return bool(self.mounts)

    def matches(self, canonical: str) -> bool:
        return canonical in self._exact or any(g.match(canonical) for g in self._globs)

    def examples(self) -> list[str]:
        """Concrete names this entry covers (globs with `*` filled in), for start-up checks."""
        return [m.replace("*", "x") for m in self.match]


#: The entry name (and provider id) of LLM-shaped requests to unknown hosts metered as
#: OpenAI-compatible (`unknown_llm_hosts: meter`): no genai-prices provider, so they are priced by
#: the rules' `prices`, else `default_price`.
UNKNOWN_ENTRY = "unknown-llm-host"


@dataclass(frozen=True)
class HostTable:
    """The known LLM hosts: operator entries first, then the shipped table."""

    entries: tuple[HostEntry, ...]
    families: Mapping[str, Routes]
    shape: LlmShape  # what makes a request to a host missing here LLM-shaped
    # canonical name -> entry: a request asks for the same few names again and again.
    _found: dict[str, HostEntry | None] = field(default_factory=dict, repr=False, compare=False)

    def lookup(self, host: str) -> HostEntry | None:
        """The entry covering `host` (any spelling), or None for a host that is not an LLM API."""
        canonical = canonical_host(host)
        try:
            return self._found[canonical]
        except KeyError:
            pass
        found = next((entry for entry in self.entries if entry.matches(canonical)), None)
        if len(self._found) >= 4096:
            self._found.clear()
        self._found[canonical] = found
        return found

    def llm_names(self) -> list[str]:
        """A concrete name for every pattern of every entry (start-up checks of options)."""
        return [name for entry in self.entries for name in entry.examples()]


def build_table(shipped: Mapping[str, Any], operator: Iterable[Mapping[str, Any]] = ()) -> HostTable:
    """A table from the shipped `hosts.yaml` data and the operator's `hosts:` entries (already
    validated by `governance.hostrules`)."""
    families = {
        name: Routes.build(dict(spec.get("metered", {})), dict(spec.get("free", {})))
        for name, spec in shipped["families"].items()
    }
    entries = [HostEntry.build(operator=True, **dict(e)) for e in operator]
    entries += [HostEntry.build(**dict(e)) for e in shipped["hosts"]]
    for entry in entries:
        for mount in entry.mounts:
            if mount.family not in families:
                raise ValueError(f"host {entry.name!r}: unknown API family {mount.family!r}")
    return HostTable(tuple(entries), families, LlmShape.build(shipped["unknown_hosts"]))


# -- which host a request targets ----------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What `resolve` found: the LLM host entry the request is for (None: not LLM traffic), the
    canonical name it is metered under, or why its names cannot be trusted."""

    entry: HostEntry | None
    host: str = ""
    mismatch: str | None = None  # set: the names disagree about an LLM host; refuse


def resolve(
    table: HostTable, names: Sequence[tuple[str, str]], *, destination_is_resolved: bool = False
) -> Target:
    """Decide which host a request targets from every name it carries: `(kind, name)` pairs such
    as `("connect", ...)`, `("sni", ...)`, `("host", ...)`, `("url", ...)`; empty names are skipped.

    - No name is an LLM host: not LLM traffic.
    - Every name agrees (canonically): that host.
    - They disagree and one names an LLM host: refused, with a reason naming the names. The one
      exception is `destination_is_resolved` (transparent-style modes): the destination is an IP
      the client's own resolver chose, and a name (SNI, Host) says which LLM host it is for; the
      request is then metered as that host.
    """
    present = [(kind, name, canonical_host(name)) for kind, name in names if name and name.strip()]
    entries = [(kind, name, canon, table.lookup(canon)) for kind, name, canon in present]
    llm = [e for e in entries if e[3] is not None]
    if not llm:
        return Target(None)
    distinct = {canon for _, _, canon, _ in entries}
    if len(distinct) == 1:
        _, _, canon, entry = llm[0]
        return Target(entry, canon)
    llm_hosts = {canon for _, _, canon, _ in llm}
    others = distinct - llm_hosts
    if destination_is_resolved and len(llm_hosts) == 1 and all(is_ip_literal(h) for h in others):
        _, _, canon, entry = llm[0]
        return Target(entry, canon)
    said = ", ".join(f"{kind} {name!r}" for kind, name, _, _ in entries)
    return Target(
        llm[0][3],
        llm[0][2],
        mismatch=f"the names this request carries disagree about its target ({said}); a request to "
        f"an LLM API must name the same host everywhere",
    )
