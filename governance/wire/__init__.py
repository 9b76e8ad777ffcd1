"""Wire formats. `detect` classifies a request by its real target host and path; each family
module parses requests, reads usage (JSON body and SSE stream) and renders error envelopes.

Classification fails closed: on a known LLM host, a billable endpoint that this version does
not meter is UNMETERED (refused unless the rules allow it), never silently passed.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from types import ModuleType
from urllib.parse import unquote

from governance.types import Endpoint, Metering, Refusal
from governance.wire import anthropic, bedrock, google, openai

#: Metered API families, by name: each has parse_request, prepare_request, usage_from_body,
#: StreamUsage and render_error.
FAMILIES: dict[str, ModuleType] = {"openai": openai, "anthropic": anthropic}

_ENVELOPES: dict[str, ModuleType] = {
    "openai": openai,
    "anthropic": anthropic,
    "google": google,
    "bedrock": bedrock,
}

# Methods that never run inference. WebSocket upgrades are GETs too: the addon refuses those first.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class KnownHost:
    name: str
    pattern: re.Pattern[str]
    envelope: str  # whose error format its clients understand
    metered: bool  # whether this version meters its inference endpoints
    path_prefix: str = "/"  # only paths under this are LLM traffic (chatgpt.com)


def _host(name: str, regex: str, envelope: str, metered: bool = False, path_prefix: str = "/") -> KnownHost:
    return KnownHost(name, re.compile(regex), envelope, metered, path_prefix)


#: Every LLM API host spendfuse knows (providers.md §0). Order matters only for overlaps.
KNOWN_HOSTS: tuple[KnownHost, ...] = (
    _host("openai", r"^api\.openai\.com$", "openai", metered=True),
    _host("anthropic", r"^api\.anthropic\.com$", "anthropic", metered=True),
    _host("google", r"^generativelanguage\.googleapis\.com$", "google"),
    _host("google-code-assist", r"^cloudcode-pa\.googleapis\.com$", "google"),
    _host("vertex", r"(^|\.)aiplatform\.googleapis\.com$", "google"),
    _host(
        "azure", r"\.(openai\.azure\.com|cognitiveservices\.azure\.com|services\.ai\.azure\.com)$", "openai"
    ),
    _host("bedrock", r"^bedrock-runtime(-fips)?\.[a-z0-9-]+\.amazonaws\.com$", "bedrock"),
    _host("bedrock-mantle", r"^bedrock-mantle\.[a-z0-9-]+\.api\.aws$", "openai"),
    _host("openrouter", r"^openrouter\.ai$", "openai"),
    _host("groq", r"^api\.groq\.com$", "openai"),
    _host("mistral", r"^(api|codestral)\.mistral\.ai$", "openai"),
    _host("deepseek", r"^api\.deepseek\.com$", "openai"),
    _host("xai", r"^api\.x\.ai$", "openai"),
    _host("github-copilot", r"(^|\.)githubcopilot\.com$", "openai"),
    _host("together", r"^api\.together\.(xyz|ai)$", "openai"),
    _host("fireworks", r"^api\.fireworks\.ai$", "openai"),
    _host("cohere", r"^api\.cohere\.(com|ai)$", "openai"),
    _host("perplexity", r"^api\.perplexity\.ai$", "openai"),
    _host("cerebras", r"^api\.cerebras\.ai$", "openai"),
    _host("moonshot", r"^api\.moonshot\.(ai|cn)$", "openai"),
    _host("chatgpt-codex", r"^chatgpt\.com$", "openai", path_prefix="/backend-api/codex"),
)

_METERED_ROUTES: dict[str, dict[str, str]] = {
    "openai": {
        "/v1/chat/completions": "chat",
        "/v1/responses": "responses",
        "/v1/completions": "completions",
    },
    "anthropic": {"/v1/messages": "messages"},
}

# POST endpoints that are free by the provider's own terms (token counting).
_FREE_POSTS: dict[str, dict[str, str]] = {
    "openai": {"/v1/responses/input_tokens": "input_tokens"},
    "anthropic": {"/v1/messages/count_tokens": "count_tokens"},
}


def normalise_host(host: str) -> str:
    """Lower case, no port, no trailing dot, no IPv6 brackets."""
    h = host.strip().lower()
    if h.startswith("["):
        h = h[1 : h.find("]")] if "]" in h else h[1:]
    elif h.count(":") == 1:
        h = h.split(":", 1)[0]
    return h.rstrip(".")


_IP_CHARS = frozenset("0123456789abcdef.:")


def is_ip_address(host: str) -> bool:
    h = normalise_host(host)
    if not _IP_CHARS.issuperset(h):
        return False  # a host name: skips ipaddress's exception path on every request
    try:
        ipaddress.ip_address(h)
    except ValueError:
        return False
    return True


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


def known_host(host: str) -> KnownHost | None:
    h = normalise_host(host)
    for known in KNOWN_HOSTS:
        if known.pattern.search(h):
            return known
    return None


def detect(method: str, host: str, path: str) -> Endpoint | None:
    """Classify a request by its real target. None: not LLM traffic, pass it untouched."""
    known = known_host(host)
    if known is None:
        return None
    norm = normalise_path(path)
    if not (norm + "/").startswith(known.path_prefix.rstrip("/") + "/"):
        return None
    method = method.upper()
    h = normalise_host(host)
    if known.metered:
        api = _METERED_ROUTES[known.name].get(norm)
        if api is not None and method == "POST":
            return Endpoint(known.name, api, Metering.METERED, h, norm, known.envelope)
        free = _FREE_POSTS[known.name].get(norm)
        if free is not None and method == "POST":
            return Endpoint(known.name, free, Metering.FREE, h, norm, known.envelope)
    if method in SAFE_METHODS:
        return Endpoint(known.name, "read", Metering.FREE, h, norm, known.envelope)
    return Endpoint(known.name, norm, Metering.UNMETERED, h, norm, known.envelope)


def render_error(endpoint: Endpoint, refusal: Refusal, request_id: str) -> tuple[int, dict[str, str], bytes]:
    """`(status, headers, body)` of a refusal in the envelope the endpoint's clients understand."""
    return _ENVELOPES[endpoint.envelope].render_error(refusal, request_id)
