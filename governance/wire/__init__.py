"""Routing on the wire: `detect` classifies a request on a known LLM host (the table is data,
see `governance.hosts`) by its path, and `render_error` writes a refusal in the envelope of the
host's clients. What each API family knows of its provider (parsing, usage, counters, error
bodies) is in `governance.families`; `governance.wire.<family>` names stay importable as the
same modules.

Classification fails closed: on a known LLM host, a billable endpoint that this version does
not meter is UNMETERED (refused unless the rules allow it), never silently passed.
"""

from __future__ import annotations

from urllib.parse import unquote

from governance import shape
from governance.families import ENVELOPES, FAMILIES
from governance.families.common import decode_json_body, encode_json_body
from governance.hostrules import shipped_table
from governance.hosts import HostEntry, HostTable, canonical_host
from governance.types import Endpoint, Metering, Refusal

__all__ = [
    "FAMILIES",
    "decode_json_body",
    "detect",
    "detect_on",
    "encode_json_body",
    "normalise_path",
    "render_error",
]

SAFE_METHODS = shape.SAFE_METHODS


def normalise_path(path: str) -> str:
    """The path as an upstream may resolve it: no query or fragment, percent-decoded, lower
    case, dot segments resolved, duplicate and trailing slashes dropped."""
    p = path.split("?", 1)[0].split("#", 1)[0]
    p = unquote(p).lower()
    segments: list[str] = []
    for seg in p.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            if segments:
                segments.pop()
            continue
        segments.append(seg)
    return "/" + "/".join(segments)


def detect(method: str, host: str, path: str, table: HostTable | None = None) -> Endpoint | None:
    """Classify a request to `host` (already chosen by `hosts.resolve`) by its path. None: not
    LLM traffic, pass it untouched."""
    table = table or shipped_table()
    entry = table.lookup(host)
    if entry is None:
        return None
    return detect_on(entry, method, canonical_host(host), path, table)


def detect_on(entry: HostEntry, method: str, host: str, path: str, table: HostTable) -> Endpoint:
    """Classify a request on a known LLM host entry by method and path. The entry covers the
    whole host: a path it has no route for is a free read (GET, HEAD, OPTIONS) or UNMETERED."""
    norm = normalise_path(path)
    method = method.upper()
    envelope: str | None = None  # the first API the path is under answers its errors
    for mount in entry.mounts:
        route = mount.base.under(norm)
        if route is None:
            continue
        envelope = envelope or mount.envelope
        if method != "POST":
            continue
        found = table.families[mount.family].find(route)
        if found is not None:
            free, api = found
            metering = Metering.FREE if free else Metering.METERED
            return Endpoint(mount.family, api, metering, host, norm, mount.envelope, entry.name)
    envelope = envelope or entry.envelope
    if method in SAFE_METHODS:
        return Endpoint(entry.family or entry.name, "read", Metering.FREE, host, norm, envelope, entry.name)
    return Endpoint(entry.family or entry.name, norm, Metering.UNMETERED, host, norm, envelope, entry.name)


def render_error(endpoint: Endpoint, refusal: Refusal, request_id: str) -> tuple[int, dict[str, str], bytes]:
    """`(status, headers, body)` of a refusal in the envelope the endpoint's clients understand."""
    return ENVELOPES[endpoint.envelope].render_error(refusal, request_id)
