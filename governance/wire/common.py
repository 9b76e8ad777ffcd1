"""Small readers shared by the request parsers of every API family."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from governance.errors import RequestParseError


def require_model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise RequestParseError("the request names no model (`model` must be a non-empty string)")
    return model.strip()


def optional_int(body: Mapping[str, Any], key: str, *, minimum: int = 0) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    # bool is an int in Python, but `"max_tokens": true` is not a number of tokens.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RequestParseError(f"`{key}` must be an integer >= {minimum}, not {value!r}")
    return value


def optional_bool(body: Mapping[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequestParseError(f"`{key}` must be true or false, not {value!r}")
    return value


def largest(*values: int | None) -> int | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def token_count(usage: Mapping[str, Any], *path: str) -> int:
    """A non-negative int at `path` inside a usage object; 0 when absent or null."""
    node: Any = usage
    for key in path:
        if not isinstance(node, Mapping):
            return 0
        node = node.get(key)
    if isinstance(node, bool) or not isinstance(node, int) or node < 0:
        return 0
    return node
