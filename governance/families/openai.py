"""OpenAI: Chat Completions, Responses and legacy Completions; usage; the error envelope."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from governance import overheads
from governance.errors import RequestParseError
from governance.families import compat, shapes
from governance.families.common import (
    BEARER,
    Auth,
    any_mapping,
    counted_input_tokens,
    counter_request_of,
    header_list,
    json_object,
    largest,
    optional_bool,
    optional_int,
    require_model,
    token_count,
)
from governance.families.envelope import refusal_details, refusal_headers
from governance.families.sse import Event
from governance.families.tap import sse_reader_of
from governance.types import NO_LINE, UNBOUNDED, ParsedRequest, Refusal, RequestLine, Usage

NAME = ENVELOPE = PROVIDER = "openai"
APIS = ("chat", "responses", "completions")
#: A Claude model behind an OpenAI-compatible gateway is billed long-context rates when the
#: client passes Anthropic's `context-1m` beta on.
PRICE_HEADERS = ("anthropic-beta",)
#: A bearer token; `api-key` is how Azure-style gateways take it.
API_KEY_HEADERS = ("authorization", "api-key")
#: Azure OpenAI takes its key in `api-key`; every other OpenAI-compatible API a bearer token.
_AZURE_AUTH = Auth("api-key")
COUNTER_HEADERS = frozenset(
    {"authorization", "api-key", "openai-organization", "openai-project", "openai-beta", "anthropic-beta"}
)

# OpenAI accepts n (and best_of) up to 128.
MAX_CHOICES = 128
# Legacy Completions takes a batch of prompts in one request (OpenAI documents up to 2048 items).
MAX_BATCH_PROMPTS = 2048
# Legacy Completions defaults max_tokens to 16 (OpenAI API reference).
COMPLETIONS_DEFAULT_MAX_TOKENS = 16

_PROMPT_KEYS = {
    "chat": ("messages", "tools", "functions", "response_format", "prediction"),
    "responses": ("instructions", "input", "tools", "text", "prompt"),
    "completions": ("prompt", "suffix"),
}

_TERMINAL_RESPONSE_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


def completions_prompt_count(prompt: Any) -> int:
    """How many prompts a legacy Completions request carries: a string or a list of token ids
    is one; a list of strings, or of token-id lists, is a batch with one completion each."""
    if isinstance(prompt, list) and prompt and not all(isinstance(t, int) for t in prompt):
        if len(prompt) > MAX_BATCH_PROMPTS:
            raise RequestParseError(
                f"`prompt` has {len(prompt)} prompts; at most {MAX_BATCH_PROMPTS} are metered"
            )
        return len(prompt)
    return 1


def parse_request(api: str, body: Mapping[str, Any], line: RequestLine = NO_LINE) -> ParsedRequest:
    """Read model, output cap, choices and stream flag. Everything it reads is in the body
    (`line` is unused). Raises `RequestParseError`."""
    model = require_model(body)
    stream = optional_bool(body, "stream")
    if api == "chat":
        cap = largest(optional_int(body, "max_completion_tokens"), optional_int(body, "max_tokens"))
        choices = optional_int(body, "n", minimum=1, maximum=MAX_CHOICES) or 1
    elif api == "responses":
        cap = optional_int(body, "max_output_tokens")
        choices = 1
    elif api == "completions":
        cap = optional_int(body, "max_tokens")
        if cap is None:
            cap = COMPLETIONS_DEFAULT_MAX_TOKENS
        n = optional_int(body, "n", minimum=1, maximum=MAX_CHOICES) or 1
        best_of = optional_int(body, "best_of", minimum=1, maximum=MAX_CHOICES) or 1
        # best_of candidates are all generated and billed, for each prompt of a batch.
        choices = max(n, best_of) * completions_prompt_count(body.get("prompt"))
    else:
        raise ValueError(f"not an OpenAI API: {api}")
    prompt = tuple(body[k] for k in _PROMPT_KEYS[api] if body.get(k) is not None)
    if api != "responses" and not prompt:
        raise RequestParseError(f"the request has no {' or '.join(_PROMPT_KEYS[api][:1])}")
    tier = body.get("service_tier")
    if tier is not None and not isinstance(tier, str):
        raise RequestParseError(f"`service_tier` must be a string, not {tier!r}")
    modalities = body.get("modalities")
    context, server_input = _server_side_input(body)
    return ParsedRequest(
        model=model,
        max_output_tokens=cap,
        choices=choices,
        stream=stream,
        prompt=prompt,
        # OpenAI caches prompts on its own: any request may be billed cache writes where the
        # model's price card has a cache-write price; the worst case considers them.
        cache_write_hint="5m",
        service_tier=tier,
        web_searches=UNBOUNDED if _tools_of(body, _SEARCH_TOOLS) or "web_search_options" in body else 0,
        audio_output=isinstance(modalities, list) and "audio" in modalities,
        audio_input=_has_part(prompt, "input_audio"),
        server_context=context,
        server_input=server_input,
        unpriced_fees=(*_tools_of(body, _UNPRICED_FEE_TOOLS), *compat.plugins(body)),
        fallbacks=compat.fallback_models(body),
        provider_prompt_tokens=_claude_tool_prompt(model, body),
    )


def _claude_tool_prompt(model: str, body: Mapping[str, Any]) -> int:
    """A Claude model behind an OpenAI-compatible API (a gateway) is still billed the tool-use
    system prompt Anthropic adds to every request with tools. A gateway's model names rarely
    match Anthropic's table, so they mostly count its largest value."""
    if "claude" not in model.lower():
        return 0
    return overheads.anthropic().tool_use_tokens(model, body.get("tools"), body.get("tool_choice"))


def _has_part(value: object, part_type: str) -> bool:
    """Whether any object in `value` (the prompt's JSON) is a content part of `part_type`."""
    if isinstance(value, dict):
        return value.get("type") == part_type or any(_has_part(v, part_type) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_part(v, part_type) for v in value)
    return False


_SEARCH_TOOLS = frozenset({"web_search", "web_search_preview", "web_search_2025_08_26"})
# Tools whose results the provider adds to the input on its side, in amounts nobody can bound.
_SERVER_INPUT_TOOLS = frozenset(
    {"file_search", "mcp", "code_interpreter", "computer_use_preview", "image_generation"}
)
# Hosted tools billed per use (a container session, a search call, an image) at prices this
# version does not model: refused unless the rules accept the fees unmetered.
_UNPRICED_FEE_TOOLS = frozenset({"file_search", "code_interpreter", "image_generation"})


def _tools_of(body: Mapping[str, Any], kinds: frozenset[str]) -> list[str]:
    tools = body.get("tools")
    if not isinstance(tools, list):
        return []
    found = [t.get("type") for t in tools if isinstance(t, Mapping) and isinstance(t.get("type"), str)]
    return [t for t in found if t in kinds or t.split("_20", 1)[0] in kinds]


def _server_side_input(body: Mapping[str, Any]) -> tuple[tuple[str, ...], str | None]:
    """Input the provider keeps on its side: `(context ids, reason it cannot be counted)`.

    A previous response or a conversation is context spendfuse may have seen (the ledger keeps
    the size of every answer it settled); a stored prompt, a file by id and the results of a
    server tool are input it cannot count at all."""
    context: list[str] = []
    previous = body.get("previous_response_id")
    if isinstance(previous, str) and previous:
        context.append(f"response:{previous}")
    conversation = body.get("conversation")
    if isinstance(conversation, Mapping):
        conversation = conversation.get("id")
    if isinstance(conversation, str) and conversation:
        context.append(f"conversation:{conversation}")
    reasons = []
    if isinstance(body.get("prompt"), Mapping):
        reasons.append("a stored prompt")
    if _file_by_id(body.get("input")) or _file_by_id(body.get("messages")):
        reasons.append("a file by id or URL, or a stored item")
    search = _tools_of(body, _SEARCH_TOOLS)
    server_tools = _tools_of(body, _SERVER_INPUT_TOOLS) + search
    if server_tools or "web_search_options" in body:
        reasons.append(f"server tool results ({', '.join(server_tools) or 'web search'})")
    return tuple(context), "; ".join(reasons) or None


def _file_by_id(value: Any) -> bool:
    """Whether any content part names a file the provider stores or fetches (`file_id`,
    `file_url`), or an item it keeps (`item_reference`)."""
    return any_mapping(
        value,
        lambda node: (
            isinstance(node.get("file_id"), str)
            or isinstance(node.get("file_url"), str)
            or node.get("type") == "item_reference"
        ),
    )


# What OpenAI's free counter (`POST /v1/responses/input_tokens`) takes of a Responses request.
_COUNTED_KEYS = (
    "model",
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "text",
    "reasoning",
    "previous_response_id",
    "conversation",
    "parallel_tool_calls",
    "truncation",
)


def count_request(api: str, body: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """`(path suffix, body)` of the provider's free input-token counter for this request; None
    for Chat and legacy Completions, which have none."""
    if api != "responses":
        return None
    return "/input_tokens", {k: body[k] for k in _COUNTED_KEYS if k in body}


def with_output_cap(api: str, body: Mapping[str, Any], cap: int) -> dict[str, Any]:
    """`body` with its output cap (per choice) set to `cap`, in the field the request uses:
    Chat keeps a legacy `max_tokens` it already sends, and otherwise gets `max_completion_tokens`
    (which every current model accepts)."""
    new = dict(body)
    if api == "responses":
        new["max_output_tokens"] = cap
    elif api == "completions":
        new["max_tokens"] = cap
    elif "max_tokens" in body and "max_completion_tokens" not in body:
        new["max_tokens"] = cap
    else:
        new["max_completion_tokens"] = cap
        new.pop("max_tokens", None)
    return new


def auth(provider: str) -> Auth:
    """How a key is sent to `provider` (a genai-prices id) through this envelope."""
    return _AZURE_AUTH if provider == "azure" else BEARER


# The Anthropic betas the request passes on (see `PRICE_HEADERS`).
price_flags = functools.partial(header_list, name="anthropic-beta")
counter_request = counter_request_of(count_request)
# The counter answers `{"input_tokens": N}`.
read_counter_response = counted_input_tokens


def prepare_request(api: str, body: Mapping[str, Any], parsed: ParsedRequest) -> dict[str, Any] | None:
    """The body to forward instead, or None to forward it untouched.

    A streamed chat/completions request reports usage only with `stream_options.include_usage`,
    so it is switched on; the SDKs skip the extra usage-only chunk it adds.
    """
    if api not in ("chat", "completions") or not parsed.stream:
        return None
    options = body.get("stream_options")
    if isinstance(options, Mapping) and options.get("include_usage") is True:
        return None
    new = dict(body)
    new["stream_options"] = {**(options if isinstance(options, Mapping) else {}), "include_usage": True}
    return new


def adds_stream_events(api: str, sent: Mapping[str, Any], forwarded: Mapping[str, Any] | None) -> bool:
    """Whether forwarding `forwarded` instead of `sent` makes the stream carry events the client
    did not ask for: the usage-only chunk that `include_usage` adds."""
    if api not in ("chat", "completions") or forwarded is None:
        return False
    return _include_usage(forwarded) and not _include_usage(sent)


def _include_usage(body: Mapping[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, Mapping) and options.get("include_usage") is True


def added_event(api: str, event: Event) -> bool:
    """Whether `event` is the usage-only chunk (`choices: []` and a `usage`) that `include_usage`
    adds before `[DONE]`. Some clients index `choices[0]` on every chunk, so a client that did not
    ask for it must not see it. (Azure's content-filter chunks also have no choices, but no usage.)"""
    if api not in ("chat", "completions") or '"usage"' not in event.data:
        return False
    try:
        chunk = json.loads(event.data)
    except ValueError:
        return False
    return (
        isinstance(chunk, dict)
        and chunk.get("choices") == []
        and isinstance(chunk.get("usage"), Mapping)
        and set(chunk) <= _USAGE_CHUNK_KEYS
    )


# The fields a usage-only chunk carries; a chunk with any other is the provider's own, and passes.
_USAGE_CHUNK_KEYS = frozenset(
    {
        "id",
        "object",
        "created",
        "model",
        "system_fingerprint",
        "service_tier",
        "choices",
        "usage",
        "obfuscation",
        "x_groq",  # Groq's request id, on its chunks
        "provider",  # OpenRouter: the provider it routed to, on its chunks
    }
)


def _read_usage(usage: Any, model: str | None, *, total_in: str, details: str, out: str) -> Usage | None:
    """OpenAI usage, whichever API's field names: total input (cached tokens included), its
    cache details, and output (reasoning included). None unless both counts are present."""
    if not isinstance(usage, Mapping):
        return None
    if not isinstance(usage.get(total_in), int) or not isinstance(usage.get(out), int):
        return None
    read = compat.cache_hits(usage, details)
    write = token_count(usage, details, "cache_write_tokens")
    total_input = max(token_count(usage, total_in), read + write)
    output = token_count(usage, out)
    out_details = "completion_tokens_details" if out == "completion_tokens" else "output_tokens_details"
    return Usage(
        input_tokens=total_input,
        output_tokens=output,
        cache_read_tokens=read,
        cache_write_tokens=write,
        model=model,
        input_audio_tokens=min(token_count(usage, details, "audio_tokens"), total_input),
        output_audio_tokens=min(token_count(usage, out_details, "audio_tokens"), output),
        reasoning_tokens=compat.reasoning_tokens(usage),
        reported_cost=compat.reported_cost(usage),
    )


def _with_response_facts(usage: Usage | None, response: Mapping[str, Any]) -> Usage | None:
    """The facts a whole response adds to its usage: the tier that served it, its id and
    conversation (so a follow-up's server-side input can be counted), its web searches."""
    if usage is None:
        return None
    tier = response.get("service_tier")
    conversation = response.get("conversation")
    if isinstance(conversation, Mapping):
        conversation = conversation.get("id")
    output = response.get("output")
    searches = (
        sum(1 for item in output if isinstance(item, Mapping) and item.get("type") == "web_search_call")
        if isinstance(output, list)
        else 0
    )
    rid = response.get("id")
    return replace(
        usage,
        service_tier=tier if isinstance(tier, str) else None,
        response_id=rid if isinstance(rid, str) and rid.startswith("resp") else None,
        conversation_id=conversation if isinstance(conversation, str) else None,
        web_searches=searches,
    )


def _chat_usage(usage: Any, model: str | None) -> Usage | None:
    return _read_usage(
        usage, model, total_in="prompt_tokens", details="prompt_tokens_details", out="completion_tokens"
    )


def _responses_usage(usage: Any, model: str | None) -> Usage | None:
    return _read_usage(
        usage, model, total_in="input_tokens", details="input_tokens_details", out="output_tokens"
    )


def usage_from_body(api: str, body: Any) -> Usage | None:
    """Usage from a whole (non-streamed) JSON response, or None when it carries none."""
    if not isinstance(body, Mapping):
        return None
    model = body.get("model") if isinstance(body.get("model"), str) else None
    if api == "responses":
        return _with_response_facts(_responses_usage(body.get("usage"), model), body)
    return _with_response_facts(_chat_usage(body.get("usage"), model), body)


class StreamUsage:
    """Reads usage off a response's SSE events as they pass.

    Chat/completions: the chunk whose `usage` is not null. Responses: the terminal event
    (`response.completed`, `.incomplete` or `.failed`), whose `response.usage` is the total.
    """

    def __init__(self, api: str) -> None:
        self.api = api
        self.usage: Usage | None = None

    def on_event(self, event: Event) -> None:
        # Cheap filter first: content deltas are the bulk of a stream and never carry usage.
        if '"usage"' not in event.data or event.data == "[DONE]":
            return
        obj = json_object(event.data)
        if obj is None:
            return
        if self.api == "responses":
            if obj.get("type") in _TERMINAL_RESPONSE_EVENTS and isinstance(obj.get("response"), Mapping):
                resp = obj["response"]
                found = _with_response_facts(_responses_usage(resp.get("usage"), resp.get("model")), resp)
                if found is not None:
                    self.usage = found
        else:
            found = _with_response_facts(_chat_usage(compat.chunk_usage(obj), obj.get("model")), obj)
            if found is not None:
                self.usage = found


#: Streams are SSE.
stream_reader = sse_reader_of(StreamUsage)


def render_error(refusal: Refusal, request_id: str) -> tuple[int, dict[str, str], bytes]:
    """The refusal as OpenAI sends errors: `{"error": {message, type, param, code}}`."""
    return render_error_as(ENVELOPE, refusal, request_id)


def render_error_as(envelope: str, refusal: Refusal, request_id: str) -> tuple[int, dict[str, str], bytes]:
    """The refusal in OpenAI's layout, with `envelope`'s shapes (Azure's errors are OpenAI's)."""
    shape = shapes.of(envelope, refusal)
    body = {
        "error": {
            "message": refusal.message,
            "type": shape.type,
            "param": None,
            "code": shape.code or refusal.code,
            "spendfuse": refusal_details(refusal),
        }
    }
    headers = refusal_headers(refusal)
    headers["x-request-id"] = request_id
    return shape.status, headers, json.dumps(body).encode()
