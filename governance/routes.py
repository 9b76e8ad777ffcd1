"""Paths of the API families on a host: literal routes and `{name}` patterns, base paths and mounts.

A route (`rules/hosts.yaml`, `families:`) or a base path may contain placeholders:

- `{name}` stands for one non-empty part of a path segment (no `/`): `/models/{model}:generatecontent`,
  `/deployments/{deployment}/chat/completions`;
- `{name*}` stands for one or more whole or partial segments (`/` included), for an id that may
  carry a percent-encoded `/` (a Bedrock inference-profile ARN in `/model/{model*}/invoke`).

Everything is matched on the normalised path (`governance.wire.normalise_path`: percent-decoded,
lower case, no dot segments), so a placeholder is never a way around a route: the family reads
the model itself from the raw path. A literal route wins over a pattern, and a longer pattern over
a shorter one, so the most specific route decides.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)(\*?)\}")


def has_placeholder(path: str) -> bool:
    """Whether `path` is a pattern rather than a literal path."""
    return _PLACEHOLDER.search(path) is not None


def compile_pattern(path: str) -> str:
    """The regular expression (unanchored) of a route or base path with placeholders."""
    out, at = [], 0
    for m in _PLACEHOLDER.finditer(path):
        out.append(re.escape(path[at : m.start()]))
        out.append(".+?" if m.group(2) else "[^/]+")
        at = m.end()
    out.append(re.escape(path[at:]))
    return "".join(out)


def check_path(path: str) -> str:
    """`path` if it is absolute and its braces are all well-formed placeholders; else ValueError."""
    if not path.startswith("/"):
        raise ValueError(f"path {path!r} must start with /")
    if "{" in _PLACEHOLDER.sub("", path) or "}" in _PLACEHOLDER.sub("", path):
        raise ValueError(f"path {path!r}: a placeholder is `{{name}}` or `{{name*}}` (lower case)")
    return path


@dataclass(frozen=True)
class Routes:
    """One API family's routes, after a host's base path: route -> API name (POST only)."""

    metered: Mapping[str, str]
    free: Mapping[str, str]
    # (pattern, free, api), most specific first.
    _patterns: tuple[tuple[re.Pattern[str], bool, str], ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def build(cls, metered: Mapping[str, str], free: Mapping[str, str]) -> Routes:
        patterns = [
            (route, is_free, api)
            for is_free, table in ((True, free), (False, metered))
            for route, api in table.items()
            if has_placeholder(route)
        ]
        patterns.sort(key=lambda p: -len(_PLACEHOLDER.sub("", p[0])))
        compiled = tuple((re.compile(compile_pattern(r.lower())), f, a) for r, f, a in patterns)
        # Paths are matched normalised (lower case).
        lower = {r.lower(): a for r, a in metered.items()}
        return cls(lower, {r.lower(): a for r, a in free.items()}, compiled)

    def find(self, route: str) -> tuple[bool, str] | None:
        """`(free, api)` of the route `route` (normalised, relative to the base path), or None."""
        api = self.metered.get(route)
        if api is not None:
            return False, api
        api = self.free.get(route)
        if api is not None:
            return True, api
        for pattern, is_free, api in self._patterns:
            if pattern.fullmatch(route):
                return is_free, api
        return None

    def literal(self) -> list[tuple[bool, str, str]]:
        """`(free, route, api)` of the literal routes, longest first (suffix matching of unknown hosts)."""
        out = [
            (is_free, route, api)
            for is_free, table in ((True, self.free), (False, self.metered))
            for route, api in table.items()
            if not has_placeholder(route)
        ]
        return sorted(out, key=lambda r: -len(r[1]))


@dataclass(frozen=True)
class BasePath:
    """Where an API lives on a host: one or more path prefixes, each maybe with placeholders."""

    paths: tuple[str, ...]
    _compiled: tuple[re.Pattern[str], ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def build(cls, paths: str | tuple[str, ...] | list[str]) -> BasePath:
        listed = (paths,) if isinstance(paths, str) else tuple(paths)
        # Longest first: `/v1beta/openai` is tried before `/v1beta`.
        ordered = tuple(sorted(listed, key=lambda p: -len(_PLACEHOLDER.sub("", p))))
        compiled = tuple(re.compile(_prefix_pattern(p)) for p in ordered)
        return cls(ordered, compiled)

    def under(self, path: str) -> str | None:
        """`path` (normalised) relative to the first prefix it is under, or None."""
        for pattern in self._compiled:
            m = pattern.fullmatch(path)
            if m is not None:
                return m.group("rest") or "/"
        return None


def _prefix_pattern(prefix: str) -> str:
    norm = "/" + "/".join(s for s in prefix.lower().split("/") if s)
    if norm == "/":
        return "(?P<rest>/.*)?"
    return compile_pattern(norm) + "(?P<rest>/.*)?"


@dataclass(frozen=True)
class Mount:
    """An API family served on a host under a base path, with its clients' error envelope."""

    family: str
    base: BasePath
    envelope: str

    @classmethod
    def build(
        cls, family: str, base_path: str | list[str] | tuple[str, ...], envelope: str | None = None
    ) -> Mount:
        return cls(family, BasePath.build(base_path), envelope or family)
