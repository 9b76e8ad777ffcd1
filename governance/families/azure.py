"""Azure OpenAI: OpenAI's APIs behind a deployment name.

Two URL forms, both under the resource's `/openai` (its host entry's base path):
- classic `/openai/deployments/{deployment}/chat/completions|completions|responses?api-version=`:
  the deployment is in the path, and the body may omit `model`;
- the v1 API `/openai/v1/chat/completions|completions|responses`: `model` in the body is the
  deployment name.
Either way the name is the customer's alias for a model: `parse_request` returns it as the
model, and the engine maps it to the models it may be (`governance.deployments`). Bodies, usage,
streams (with Azure's content-filter chunks, which carry no usage) and the error layout are
OpenAI's; the key goes in `api-key`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote

from governance.errors import RequestParseError
from governance.families import openai
from governance.families.common import Auth
from governance.types import NO_LINE, ParsedRequest, Refusal, RequestLine

NAME = ENVELOPE = PROVIDER = "azure"
APIS = openai.APIS
PRICE_HEADERS: tuple[str, ...] = ()
API_KEY_HEADERS = ("api-key", "authorization")
COUNTER_HEADERS = frozenset(API_KEY_HEADERS)
#: The model a request names is a deployment: an alias the rules map to models.
DEPLOYMENTS = True

# One path segment after `/deployments/`, whatever comes before it (the base path).
_DEPLOYMENT = re.compile(r"/deployments/([^/?#]+)/", re.IGNORECASE)
_API_KEY = Auth("api-key")


def deployment_of(path: str) -> str | None:
    """The deployment a classic Azure path names (percent-decoded), or None for the v1 API."""
    found = _DEPLOYMENT.search(path.split("?", 1)[0])
    if found is None:
        return None
    name = unquote(found.group(1)).strip()
    if not name or "/" in name:
        raise RequestParseError(f"the path names no usable deployment ({found.group(1)!r})")
    return name


def parse_request(api: str, body: Mapping[str, Any], line: RequestLine = NO_LINE) -> ParsedRequest:
    """OpenAI's facts of the request, its model being the deployment: the path's (classic; a
    `model` in the body is ignored, as Azure ignores it), else the body's (v1 API)."""
    deployment = deployment_of(line.path)
    if deployment is not None:
        body = {**body, "model": deployment}
    return openai.parse_request(api, body, line)


def price_flags(headers: Callable[[str], list[str]]) -> list[str]:
    """Azure prices no request header."""
    return []


def count_request(api: str, body: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """Azure has no free token counter that spendfuse uses."""
    return None


def counter_request(api: str, path: str, body: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    return None


def auth(provider: str) -> Auth:
    """Azure takes its key in `api-key`."""
    return _API_KEY


def render_error(refusal: Refusal, request_id: str) -> tuple[int, dict[str, str], bytes]:
    """The refusal in OpenAI's layout (Azure's own), with Azure's shapes."""
    return openai.render_error_as(ENVELOPE, refusal, request_id)


read_counter_response = openai.read_counter_response
prepare_request = openai.prepare_request
adds_stream_events = openai.adds_stream_events
added_event = openai.added_event
with_output_cap = openai.with_output_cap
usage_from_body = openai.usage_from_body
stream_reader = openai.stream_reader
StreamUsage = openai.StreamUsage
