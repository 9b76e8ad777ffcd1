"""What a request asks for beyond its own method and host: LLM-shaped traffic to hosts the table
does not know, and method overrides.

A host list is never complete, so a request to an unknown host is still looked at: one that
asks to write (see `asks_to_write`) and whose path ends in a well-known inference route, or
whose JSON body names a model and carries a prompt, is LLM-shaped, and the rules decide what
happens to it (`unknown_llm_hosts`). The routes and keys are data, in `rules/hosts.yaml`
(`unknown_hosts:`).

Servers that honour a method override header (`X-HTTP-Method-Override: POST` on a GET) run the
method it names, so `method_claims` reads every such claim a request carries.

Everything here runs for every request through the proxy: it reads headers it is handed, and a
body only when asked, with a byte-level prefilter before any JSON parsing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from pydantic import BaseModel, ConfigDict, Field

# Methods that never run inference. WebSocket upgrades are GETs too: the gate refuses those first.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

#: Headers whose only job is to override the method (Google, Microsoft, Rack, Laravel, Symfony,
#: Express's method-override, proxies that pass the original method on). Any value counts.
OVERRIDE_HEADERS = frozenset(
    {
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "x-method",
        "x-original-method",
        "x-forwarded-method",
        "x-override-method",
        "x-real-method",
        "x-requested-method",
    }
)
#: Query parameters frameworks read an override from.
OVERRIDE_PARAMS = frozenset({"_method", "_httpmethod", "httpmethod", "$method", "x-http-method-override"})
#: Methods a header or parameter whose name merely mentions "method" is read as an override for
#: (`X-Stainless-Helper-Method: stream` names a helper, not a method).
HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT", "QUERY"}
)


def method_claims(method: str, headers: Iterable[tuple[str, str]], path: str) -> tuple[str, ...]:
    """The methods, other than `method` itself, that the request asks a server to treat it as:
    from override headers (any header whose name mentions "method", when it is a known override
    header or its value is an HTTP method) and from the query string. Upper case, each once."""
    own = method.strip().upper()
    claims: list[str] = []
    for name, value in headers:
        lname = name.strip().lower()
        if "method" not in lname:
            continue
        known = lname in OVERRIDE_HEADERS
        for token in value.split(","):
            t = token.strip().upper()
            if t and t != own and (known or t in HTTP_METHODS):
                claims.append(t)
    _, _, query = path.partition("?")
    # Every parameter, its name and value percent-decoded as a server would (`_%6Dethod`, `;` as
    # a separator, as older Rack reads it, and decoded twice, as a proxy in front may have).
    for part in _QUERY_SEPARATORS.split(query.split("#", 1)[0]) if query else ():
        name, _, value = part.partition("=")
        lname, value = _decoded(name).strip().lower(), _decoded(value)
        if "method" not in lname:
            continue
        t = value.strip().upper()
        if t and t != own and (lname in OVERRIDE_PARAMS or t in HTTP_METHODS):
            claims.append(t)
    return tuple(dict.fromkeys(claims))


_QUERY_SEPARATORS = re.compile(r"[&;]")


def _decoded(text: str) -> str:
    """`text` percent-decoded (with `+` as a space) until it stops changing, at most 3 times."""
    for _ in range(3):
        plain = unquote_plus(text)
        if plain == text:
            break
        text = plain
    return text


def asks_to_write(method: str, claims: Iterable[str], has_body: bool) -> bool:
    """Whether a request may run anything billable: a method other than GET/HEAD/OPTIONS, an
    override naming another method, or a body (a GET with a body is not a plain read)."""
    return method.strip().upper() not in SAFE_METHODS or any(True for _ in claims) or has_body


class UnknownHostsRules(BaseModel):
    """`unknown_hosts:` in `rules/hosts.yaml`: what makes a request to an unknown host LLM-shaped."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    routes: dict[str, str] = Field(min_length=1)
    """Path suffix -> error envelope: a request asking to write whose path ends in one is LLM-shaped."""
    model_routes: dict[str, str] = {}
    """Path suffix -> error envelope: words other APIs use too; a body naming a model is enough there."""
    model_keys: list[str] = Field(min_length=1)
    """Top-level JSON keys that name a model."""
    prompt_keys: list[str] = Field(min_length=1)
    """Top-level JSON keys that carry a prompt."""


# A JSON key can be written with escapes (`"mod\u0065l"`); encoders never escape ASCII letters,
# so a body with none of these and no model key as written (any case) cannot name a model.
_ESCAPED_ASCII = rb"\\u00[4-7]"
_JSON_SPACE = re.compile(rb"[ \t\r\n]*")
#: Bodies up to this size that may name a model are parsed; bigger ones are judged by the keys
#: as written anywhere in them (a linear scan: parsing megabytes would stall the event loop).
PARSE_LIMIT = 1 << 20


@dataclass(frozen=True)
class LlmShape:
    """The compiled `unknown_hosts:` rules."""

    routes: Mapping[str, str]
    model_routes: Mapping[str, str]
    model_keys: frozenset[str]
    prompt_keys: frozenset[str]
    _prefilter: tuple[bytes, ...]
    _escaped: re.Pattern[bytes]
    _fallback_model: re.Pattern[bytes]
    _fallback_prompt: re.Pattern[bytes]

    @classmethod
    def build(cls, spec: Mapping[str, Any]) -> LlmShape:
        rules = UnknownHostsRules.model_validate(spec)
        model_keys = frozenset(k.casefold() for k in rules.model_keys)
        prompt_keys = frozenset(k.casefold() for k in rules.prompt_keys)

        def alternatives(keys: frozenset[str]) -> bytes:
            return b"|".join(re.escape(k.encode()) for k in sorted(keys))

        def keys_re(keys: frozenset[str]) -> re.Pattern[bytes]:
            return re.compile(b'"(?:' + alternatives(keys) + rb')"\s*:', re.IGNORECASE)

        return cls(
            routes={k.lower(): v for k, v in rules.routes.items()},
            model_routes={k.lower(): v for k, v in rules.model_routes.items()},
            model_keys=model_keys,
            prompt_keys=prompt_keys,
            # Searched in the lower-cased bytes (`bytes.find` is far faster than a regex): the
            # start of each model key, so that keys sharing a start cost one pass.
            _prefilter=tuple(sorted({b'"' + k.encode()[:4] for k in model_keys})),
            _escaped=re.compile(_ESCAPED_ASCII, re.IGNORECASE),
            _fallback_model=keys_re(model_keys),
            _fallback_prompt=keys_re(prompt_keys),
        )

    @staticmethod
    def _route(path: str, routes: Mapping[str, str]) -> str | None:
        return next((env for suffix, env in routes.items() if path.endswith(suffix)), None)

    def match(self, path: str, body: Callable[[], bytes | None]) -> str | None:
        """The error envelope of an LLM-shaped request to an unknown host, or None when it is not
        LLM-shaped. `path` is normalised (lower case, no query); `body()` gives the request body
        as its server would read it (`bodies.as_read`; None: it cannot be inspected, and counts as
        LLM-shaped). Call only for requests that ask to write."""
        envelope = self._route(path, self.routes)
        if envelope is not None:
            return envelope
        soft = self._route(path, self.model_routes)
        data = body()
        if data is None:
            return soft or "openai"  # too large to inspect once inflated: it may be anything
        model, prompt = self._keys(data)
        if model and (prompt or soft is not None):
            return soft or "openai"
        return None

    def _keys(self, data: bytes) -> tuple[bool, bool]:
        """Whether the body's top-level JSON object (or any object of a top-level array) has a
        model key, and a prompt key. Keys compare case-folded, as Go and .NET servers match them."""
        if data[:3] == b"\xef\xbb\xbf" or b"\x00" in data[:4]:
            # A BOM, or UTF-16/32: JSON parsers that detect the encoding (Python's) accept it.
            try:
                data = data.decode(json.detect_encoding(data)).lstrip("\ufeff").encode()
            except (UnicodeDecodeError, LookupError):
                return False, False
        start = _JSON_SPACE.match(data)
        if data[start.end() : start.end() + 1] not in (b"{", b"["):
            return False, False
        lowered = data.lower()
        if not any(k in lowered for k in self._prefilter) and not (
            b"\\u00" in data and self._escaped.search(data)
        ):
            return False, False
        if len(data) > PARSE_LIMIT:
            return self._keys_as_written(data)
        try:
            parsed = json.loads(data)
        except (ValueError, RecursionError):
            # Unparseable here (nesting too deep, odd encoding) may still parse upstream.
            return self._keys_as_written(data)
        if not isinstance(parsed, (dict, list)):
            return False, False
        objects = [parsed] if isinstance(parsed, dict) else [o for o in parsed if isinstance(o, dict)]
        model = prompt = False
        for obj in objects:
            keys = {str(k).casefold() for k in obj}
            if keys & self.model_keys:
                model = True
                prompt = prompt or bool(keys & self.prompt_keys)
                if prompt:
                    break
        return model, prompt

    def _keys_as_written(self, data: bytes) -> tuple[bool, bool]:
        """Model and prompt keys anywhere in the bytes, as written; escaped ASCII letters (which
        no encoder writes) could spell either, so they count as both."""
        escaped = self._escaped.search(data) is not None
        return (
            escaped or self._fallback_model.search(data) is not None,
            escaped or self._fallback_prompt.search(data) is not None,
        )
