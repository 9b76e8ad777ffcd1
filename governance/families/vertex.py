"""Claude on Vertex AI: the Anthropic Messages body (`anthropic_version: vertex-2023-10-16`, no
`model`) sent to `.../publishers/anthropic/models/{model}:rawPredict` (or `:streamRawPredict`),
so the model is read from the path. Authenticated with the client's own OAuth bearer token."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from governance.errors import RequestParseError
from governance.families.common import require_model
from governance.types import RequestLine

_PATH = re.compile(r"/publishers/anthropic/models/(?P<model>[^/:?#]+):(?:stream)?rawpredict(?:[?#]|$)", re.I)


def model_of(body: Mapping[str, Any], line: RequestLine) -> str:
    """The model the path names (`claude-sonnet-4-5@20250929`); a body's `model` only where
    there is no path (a request known by its body alone). A body naming another model than its
    path is refused: spendfuse would price one and Vertex might run the other."""
    if not line.path:
        return require_model(body)
    found = _PATH.search(line.path)
    if found is None:
        raise RequestParseError(f"the path {line.path[:200]!r} names no Claude model on Vertex")
    try:
        model = unquote(found.group("model"), errors="strict").strip()
    except UnicodeDecodeError:
        raise RequestParseError("the model in the path is not UTF-8") from None
    named = body.get("model")
    if not model or (named is not None and named != model):
        raise RequestParseError(
            f"the body names model {named!r}, the path {model!r}: name it in the path only"
        )
    return model
