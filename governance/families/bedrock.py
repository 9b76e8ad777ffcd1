"""AWS Bedrock: InvokeModel and Converse, streamed and not, metered without ever changing a
request. Requests are SigV4-signed over their method, path, signed headers and body bytes, so
spendfuse forwards them byte for byte (no usage injection, no output-cap clamp, no custody key:
`BODY_FIXED`); it may only refuse them, with Bedrock's error body and `x-amzn-ErrorType`.

The model is read from the URL-encoded path (`governance.bedrock_ids`), the rest from the body
(`bedrock_request`); usage from the body, the event stream and the token-count headers
(`bedrock_usage`, which says how they combine)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from governance.families import bedrock_request, bedrock_usage, shapes
from governance.families.anthropic import usage_from_body as anthropic_usage
from governance.families.common import adds_no_stream_events, no_added_event
from governance.families.envelope import refusal_details, refusal_headers
from governance.families.sse import Event
from governance.types import NO_LINE, ParsedRequest, Refusal, RequestLine, Usage

NAME = ENVELOPE = "bedrock"
PROVIDER = "aws"
APIS = ("invoke", "invoke_stream", "converse", "converse_stream")
#: The request is signed over its bytes: spendfuse must forward it exactly as sent.
BODY_FIXED = True
#: Streams are AWS event streams, not SSE.
STREAM_CONTENT_TYPE = "application/vnd.amazon.eventstream"
#: Bedrock's price variants are refused when asked for (`bedrock_request.UNPRICED_HEADERS`).
PRICE_HEADERS: tuple[str, ...] = ()
#: A Bedrock API key is a bearer token; a SigV4 signature is in the same header.
API_KEY_HEADERS = ("authorization",)
#: Bedrock's token counter is never asked: no request of spendfuse's own is signed.
COUNTER_HEADERS = frozenset({"authorization"})


def auth(provider: str) -> None:
    """None: requests are SigV4-signed over their bytes, so a key cannot simply be put in."""
    return None


def render_error(refusal: Refusal, request_id: str) -> tuple[int, dict[str, str], bytes]:
    """The refusal as Bedrock sends errors: `{"message": ...}` plus `x-amzn-ErrorType`."""
    shape = shapes.of(ENVELOPE, refusal)
    headers = refusal_headers(refusal)
    headers["x-amzn-errortype"] = shape.type
    headers["x-amzn-requestid"] = request_id
    body = {"message": refusal.message, "__type": shape.type, "spendfuse": refusal_details(refusal)}
    return shape.status, headers, json.dumps(body).encode()


def parse_request(api: str, body: Mapping[str, Any], line: RequestLine = NO_LINE) -> ParsedRequest:
    """The model from the path in `line` (a body's `model` only without a path), the rest from
    the body. Raises `RequestParseError`."""
    if api in ("invoke", "invoke_stream"):
        return bedrock_request.parse_invoke(api, body, line)
    if api in ("converse", "converse_stream"):
        return bedrock_request.parse_converse(api, body, line)
    raise ValueError(f"not a Bedrock API: {api}")


def price_flags(headers: Callable[[str], list[str]]) -> list[str]:
    return []


def prepare_request(api: str, body: Mapping[str, Any], parsed: ParsedRequest) -> None:
    """None, always: a signed request is forwarded as it is."""
    return None


adds_stream_events, added_event = adds_no_stream_events, no_added_event


def with_output_cap(api: str, body: Mapping[str, Any], cap: int) -> dict[str, Any]:
    """`body` with its output cap set to `cap`. The engine never forwards it (`BODY_FIXED`):
    the signature would break; it is the field the cap lives in, for the rules' checks."""
    if api in ("converse", "converse_stream"):
        return bedrock_request.with_converse_cap(body, cap)
    return {**body, "max_tokens": cap}


def count_request(api: str, body: Mapping[str, Any]) -> None:
    """None: Bedrock's counter would need a request signed by the client."""
    return None


def counter_request(api: str, path: str, body: Mapping[str, Any]) -> None:
    return None


def read_counter_response(status: int, body: Any) -> int | None:
    """`inputTokens` of a CountTokens 200 answer, else None (spendfuse never asks it itself)."""
    if status != 200 or not isinstance(body, Mapping):
        return None
    counted = body.get("inputTokens")
    return counted if isinstance(counted, int) and not isinstance(counted, bool) and counted >= 0 else None


def usage_from_body(api: str, body: Any) -> Usage | None:
    """Usage from a whole answer: Anthropic's native body (InvokeModel) or Converse's."""
    if not isinstance(body, Mapping):
        return None
    if api in ("converse", "converse_stream"):
        return bedrock_usage.from_converse(body.get("usage"))
    return bedrock_usage.from_anthropic(anthropic_usage("messages", body))


def usage_with_headers(api: str, usage: Usage | None, headers: Callable[[str], list[str]]) -> Usage | None:
    """An answer's usage (from its body or stream) with the token-count headers' (see
    `bedrock_usage`: each count at the largest reported, never summed)."""
    return bedrock_usage.combine(usage, bedrock_usage.from_headers(headers))


def stream_reader(api: str) -> bedrock_usage.BedrockStream:
    """A reader of an event-stream answer's usage (it frames the bytes itself)."""
    return bedrock_usage.BedrockStream(api)


class StreamUsage:
    """Bedrock never streams SSE: an SSE body it cannot have sent carries no usage here."""

    def __init__(self, api: str) -> None:
        self.api = api
        self.usage: Usage | None = None

    def on_event(self, event: Event) -> None:
        return None
