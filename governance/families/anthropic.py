"""Anthropic Messages: request facts, usage (body and stream), the error envelope."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

from governance import overheads
from governance.errors import RequestParseError
from governance.families import shapes, vertex
from governance.families.common import (
    Auth,
    adds_no_stream_events,
    any_mapping,
    counted_input_tokens,
    counter_request_of,
    header_list,
    json_object,
    no_added_event,
    optional_bool,
    optional_int,
    require_model,
    token_count,
)
from governance.families.envelope import refusal_details, refusal_headers
from governance.families.sse import Event
from governance.families.tap import sse_reader_of
from governance.types import NO_LINE, UNBOUNDED, ParsedRequest, Refusal, RequestLine, Usage

NAME = ENVELOPE = PROVIDER = "anthropic"
#: `raw_predict`: Claude on Vertex AI (`:rawPredict`, `:streamRawPredict`), the model in the path.
APIS = ("messages", "raw_predict")
#: Betas change the price: `context-1m-*` bills long-context rates.
PRICE_HEADERS = ("anthropic-beta",)
#: `x-api-key`, or a bearer token (Claude Code's OAuth).
API_KEY_HEADERS = ("x-api-key", "authorization")
COUNTER_HEADERS = frozenset({"x-api-key", "authorization", "anthropic-version", "anthropic-beta"})

# `output_config` carries the structured-output schema (`format`); `output_format` is its
# deprecated predecessor. Both are prompt the model reads.
_PROMPT_KEYS = ("system", "messages", "tools", "tool_choice", "output_format", "output_config")


def _cache_write_hint(body: Mapping[str, Any]) -> str | None:
    """ "1h" or "5m" when the prompt asks Anthropic to write cache entries (on a block, or at the
    top level for automatic caching), else None.

    Cache writes cost more than plain input (1.25x for five minutes, 2x for an hour), so the
    worst case must price the prompt as writes whenever it could be written."""
    top = body.get("cache_control")  # automatic caching: the whole prompt may be written
    parts = [
        body.get("system"),
        body.get("messages"),
        body.get("tools"),
        {"cache_control": top} if top else None,
    ]
    text = json.dumps(parts, separators=(",", ":"))
    if '"cache_control"' not in text:
        return None
    return "1h" if '"ttl":"1h"' in text else "5m"


def parse_request(api: str, body: Mapping[str, Any], line: RequestLine = NO_LINE) -> ParsedRequest:
    """Read model, max_tokens and the stream flag, all in the body but for Vertex's model, which
    is in the path (`line`). Raises `RequestParseError`."""
    if api not in APIS:
        raise ValueError(f"not an Anthropic API: {api}")
    model = vertex.model_of(body, line) if api == "raw_predict" else require_model(body)
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise RequestParseError("`messages` must be a list")
    speed = body.get("speed")
    if speed is not None and not isinstance(speed, str):
        raise RequestParseError(f"`speed` must be a string, not {speed!r}")
    searches, server_input = _server_tools(body)
    return ParsedRequest(
        model=model,
        max_output_tokens=optional_int(body, "max_tokens"),  # required by the API, but may be absent
        choices=1,
        stream=optional_bool(body, "stream"),
        prompt=tuple(body[k] for k in _PROMPT_KEYS if body.get(k) is not None),
        cache_write_hint=_cache_write_hint(body),
        speed=speed,
        web_searches=searches,
        server_input=server_input,
        unpriced_fees=tuple(_unpriced_tools(body)),
        provider_prompt_tokens=overheads.anthropic().tool_use_tokens(
            model, body.get("tools"), body.get("tool_choice")
        ),
    )


def _unpriced_tools(body: Mapping[str, Any]) -> list[str]:
    """Server tools billed per use at prices this version does not model (code execution)."""
    tools = body.get("tools")
    kinds = [t.get("type") for t in tools if isinstance(t, Mapping)] if isinstance(tools, list) else []
    return [k for k in kinds if isinstance(k, str) and k.startswith("code_execution")]


def _server_tools(body: Mapping[str, Any]) -> tuple[int, str | None]:
    """`(web searches it may make, why its input may live on the server)`. A web search tool's
    `max_uses` bounds its fees (none: the rules' bound); its results, and a web fetch's, an MCP
    server's or a file's by id, are input the provider adds on its side."""
    searches, reasons = 0, []
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else []:
        kind = tool.get("type") if isinstance(tool, Mapping) else None
        if not isinstance(kind, str):
            continue
        if kind.startswith("web_search"):
            uses = tool.get("max_uses")
            bounded = isinstance(uses, int) and not isinstance(uses, bool) and 0 <= uses <= 10_000
            searches = UNBOUNDED if searches == UNBOUNDED or not bounded else searches + uses
            reasons.append(kind)
        elif kind.startswith(("web_fetch", "code_execution", "mcp")):
            reasons.append(kind)
    if body.get("mcp_servers"):
        reasons.append("mcp_servers")
    why = [f"server tool results ({', '.join(reasons)})"] if reasons else []
    if _file_by_id(body.get("messages")) or _file_by_id(body.get("system")):
        why.append("a file by id or URL")
    return searches, "; ".join(why) or None


def _file_source(node: Mapping[str, Any]) -> bool:
    """A block whose content the provider fetches or stores: a file by id, or a document by URL."""
    source = node.get("source")
    if not isinstance(source, Mapping):
        return False
    return (
        source.get("type") == "file"
        or "file_id" in source
        or (node.get("type") == "document" and source.get("type") == "url")
    )


def _file_by_id(value: Any) -> bool:
    """Whether any content block's source is a file the provider stores (`{"type": "file"}`)."""
    return any_mapping(value, _file_source)


# What Anthropic's free counter (`POST /v1/messages/count_tokens`) takes of a Messages request.
_COUNTED_KEYS = (
    "model",
    "messages",
    "system",
    "tools",
    "tool_choice",
    "thinking",
    "mcp_servers",
    "output_config",
)


def count_request(api: str, body: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """`(path suffix, body)` of the provider's free input-token counter for this request; None
    on Vertex, whose counter takes the model the body does not carry."""
    if api == "raw_predict":
        return None
    return "/count_tokens", {k: body[k] for k in _COUNTED_KEYS if k in body}


def with_output_cap(api: str, body: Mapping[str, Any], cap: int) -> dict[str, Any]:
    """`body` with `max_tokens` set to `cap`."""
    return {**body, "max_tokens": cap}


# The betas the request asks for (`anthropic-beta`, comma-separated): `context-1m` bills
# long-context rates.
_AUTH = Auth("x-api-key")


def auth(provider: str) -> Auth | None:
    """How a key is sent: `x-api-key`, whatever the provider behind the envelope, but Google:
    Claude on Vertex takes OAuth tokens, not keys (the client's own are kept)."""
    return None if provider == "google" else _AUTH


price_flags = functools.partial(header_list, name="anthropic-beta")
counter_request = counter_request_of(count_request)
# Its preparation adds nothing to a stream.
adds_stream_events, added_event = adds_no_stream_events, no_added_event
# The counter answers `{"input_tokens": N}`.
read_counter_response = counted_input_tokens


def prepare_request(api: str, body: Mapping[str, Any], parsed: ParsedRequest) -> dict[str, Any] | None:
    """Anthropic streams always carry usage: nothing to change."""
    return None


def _merge_usage(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """message_delta counts are cumulative: they overwrite, never add."""
    merged = dict(base)
    for key, value in update.items():
        if value is not None:
            merged[key] = value
    return merged


def _to_usage(usage: Mapping[str, Any], model: str | None) -> Usage | None:
    if not isinstance(usage.get("input_tokens"), int) or not isinstance(usage.get("output_tokens"), int):
        return None
    read = token_count(usage, "cache_read_input_tokens")
    write = token_count(usage, "cache_creation_input_tokens")
    # Anthropic's input_tokens EXCLUDES cache reads and writes; the total billed input adds them.
    speed = usage.get("speed")
    return Usage(
        input_tokens=token_count(usage, "input_tokens") + read + write,
        output_tokens=token_count(usage, "output_tokens"),
        cache_read_tokens=read,
        cache_write_tokens=write,
        model=model,
        cache_write_1h_tokens=min(token_count(usage, "cache_creation", "ephemeral_1h_input_tokens"), write),
        web_searches=token_count(usage, "server_tool_use", "web_search_requests"),
        speed=speed if isinstance(speed, str) else None,
        inference_geo=geo if isinstance(geo := usage.get("inference_geo"), str) else None,
    )


def usage_from_body(api: str, body: Any) -> Usage | None:
    """Usage from a whole (non-streamed) Messages response, or None when it carries none."""
    if not isinstance(body, Mapping) or not isinstance(body.get("usage"), Mapping):
        return None
    model = body.get("model") if isinstance(body.get("model"), str) else None
    return _to_usage(body["usage"], model)


class StreamUsage:
    """`message_start` gives input and cache counts; each `message_delta` overwrites them with
    cumulative totals. Usage is known once a `message_delta` has been seen."""

    def __init__(self, api: str) -> None:
        self.api = api
        self._raw: dict[str, Any] = {}
        self._model: str | None = None
        self.usage: Usage | None = None

    def on_event(self, event: Event) -> None:
        if event.event not in ("message_start", "message_delta", "") or '"usage"' not in event.data:
            return
        obj = json_object(event.data)
        if obj is None:
            return
        if obj.get("type") == "message_start" and isinstance(obj.get("message"), Mapping):
            message = obj["message"]
            self._model = message.get("model") if isinstance(message.get("model"), str) else None
            if isinstance(message.get("usage"), Mapping):
                self._raw = _merge_usage(self._raw, message["usage"])
        elif obj.get("type") == "message_delta" and isinstance(obj.get("usage"), Mapping):
            self._raw = _merge_usage(self._raw, obj["usage"])
            self.usage = _to_usage(self._raw, self._model)


#: Streams are SSE.
stream_reader = sse_reader_of(StreamUsage)


def render_error(refusal: Refusal, request_id: str) -> tuple[int, dict[str, str], bytes]:
    """The refusal as Anthropic sends errors: `{"type": "error", "error": {type, message}}`.

    A budget refusal is a 429 `rate_limit_error` with `x-should-retry: false`, on which the SDK
    and Claude Code stop at once; `details.error_code` is Anthropic's own spend-limit code."""
    shape = shapes.of(ENVELOPE, refusal)
    body = {
        "type": "error",
        "error": {
            "type": shape.type,
            "message": refusal.message,
            "details": {"error_code": shape.code or refusal.code},
            "spendfuse": refusal_details(refusal),
        },
        "request_id": request_id,
    }
    headers = refusal_headers(refusal)
    headers["request-id"] = request_id
    return shape.status, headers, json.dumps(body).encode()
