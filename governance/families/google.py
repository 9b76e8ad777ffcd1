"""Google: the Gemini API, Vertex AI's Gemini models and Gemini CLI's Code Assist, one wire format
(`GenerateContentRequest` / `GenerateContentResponse`), and Google's error envelope.

APIs: `generate` / `stream` are `models/{model}:generateContent` / `:streamGenerateContent` on
the Gemini API and Vertex (the model in the path); `assist_generate` / `assist_stream` are Code
Assist's `/v1internal:generateContent` / `:streamGenerateContent`, whose request wraps the
Gemini one (`{"model", "project", "user_prompt_id", "request": {...}}`) and whose answers wrap
theirs (`{"response": {...}}`). Usage reading is in `google_usage`.

Output bound, per candidate: the model's output limit bounds every token it generates, thoughts
included. A request's own `maxOutputTokens` is the bound only when its thinking is bounded too:
thinking off or an explicit `thinkingBudget`, which is added to it (Google documents thoughts
as outside `maxOutputTokens`; observed, they count inside it: the sum covers both readings).
Dynamic thinking (`-1`, no budget, or a Gemini 3 `thinkingLevel`) leaves the model's limit as
the bound. `candidateCount` multiplies it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from governance.errors import RequestParseError
from governance.families import shapes
from governance.families.common import Auth, any_mapping, optional_int
from governance.families.envelope import refusal_details, refusal_headers
from governance.families.google_usage import (
    StreamUsage,
    read_counter_response,
    stream_reader,
    usage_from_body,
)
from governance.types import NO_LINE, UNBOUNDED, ParsedRequest, Refusal, RefusalKind, RequestLine

NAME = ENVELOPE = PROVIDER = "google"
APIS = ("generate", "stream", "assist_generate", "assist_stream")
STREAMED_APIS = frozenset({"stream", "assist_stream"})
CODE_ASSIST_APIS = frozenset({"assist_generate", "assist_stream"})
#: A streamed answer without `alt=sse` is a JSON array, read as it passes (`google_usage`).
STREAM_CONTENT_TYPES = ("application/json",)
PRICE_HEADERS: tuple[str, ...] = ()
#: An API key header, or an OAuth bearer token (Vertex, Code Assist).
API_KEY_HEADERS = ("x-goog-api-key", "authorization")
COUNTER_HEADERS = frozenset({"x-goog-api-key", "authorization", "x-goog-user-project"})
#: The Gemini API also takes a key in the `key` query parameter (never used by custody: a URL is logged).
API_KEY_QUERY = "key"
_AUTH = Auth("x-goog-api-key")
#: Gemini accepts up to 8 candidates per request.
MAX_CANDIDATES = 8

# `.../models/{model}:method` or `.../tunedModels/{model}:method` at the end of the path.
_MODEL_IN_PATH = re.compile(r"/(?:models|tunedmodels)/([^/]+):[a-z]+$", re.IGNORECASE)
_PROMPT_KEYS = ("contents", "systemInstruction", "tools", "toolConfig")

__all__ = ["StreamUsage", "read_counter_response", "stream_reader", "usage_from_body"]


def auth(provider: str) -> Auth:
    """How a key is sent: `x-goog-api-key`."""
    return _AUTH


def _model_name(value: str) -> str:
    name = value.strip()
    for prefix in ("models/", "tunedModels/"):
        name = name.removeprefix(prefix)
    return name


def model_from_path(path: str) -> str | None:
    """The model a Gemini API or Vertex path names (`/v1beta/models/gemini-2.5-pro:generateContent`
    -> `gemini-2.5-pro`), case kept, read from the path as it was routed (percent-decoded, dot and
    empty segments resolved: `/models/cheap:x/../../models/dear:generateContent` names `dear`);
    None when it names none."""
    m = _MODEL_IN_PATH.search(_resolved(path))
    return _model_name(m.group(1)) if m else None


def _resolved(path: str) -> str:
    """`path` as `governance.wire.normalise_path` resolves it, but with its case kept."""
    segments: list[str] = []
    for seg in unquote(path.split("?", 1)[0].split("#", 1)[0]).split("/"):
        if seg == "..":
            if segments:
                segments.pop()
        elif seg not in ("", "."):
            segments.append(seg)
    return "/" + "/".join(segments)


def _inner(api: str, body: Mapping[str, Any]) -> Mapping[str, Any]:
    """The Gemini request: Code Assist wraps it in `request`."""
    if api not in CODE_ASSIST_APIS:
        return body
    inner = body.get("request")
    if not isinstance(inner, Mapping):
        raise RequestParseError("a Code Assist request carries its Gemini request in `request`")
    return inner


def _model(api: str, body: Mapping[str, Any], line: RequestLine) -> str:
    """The model billed: the path's (Gemini API, Vertex), else the body's `model` (Code Assist,
    or a request known by its body alone)."""
    found = None if api in CODE_ASSIST_APIS else model_from_path(line.path)
    if found is None:
        value = body.get("model")
        found = _model_name(value) if isinstance(value, str) else None
    if not found:
        raise RequestParseError("the request names no model (in its path or its `model`)")
    return found


def _config(inner: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = inner.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise RequestParseError(f"`{key}` must be an object")
    return value


def output_bound(inner: Mapping[str, Any]) -> int | None:
    """A candidate's output bound from the request (thoughts included), or None: the model's
    limit (no `maxOutputTokens`, or thinking it does not bound)."""
    config = _config(inner, "generationConfig")
    cap = optional_int(config, "maxOutputTokens")
    thinking = _config(config, "thinkingConfig")
    budget = optional_int(thinking, "thinkingBudget", minimum=-1)
    if cap is None or budget is None or budget < 0 or "thinkingLevel" in thinking:
        return None
    return cap + budget


def _server_input(inner: Mapping[str, Any]) -> str | None:
    """Why part of the input lives on Google's side, beyond what spendfuse can count."""
    reasons = []
    if inner.get("cachedContent") is not None:
        reasons.append("cached content")
    if any_mapping(inner.get("contents"), lambda node: isinstance(node.get("fileData"), Mapping)):
        reasons.append("a file by URI")
    tools = inner.get("tools")
    if isinstance(tools, list) and any(
        isinstance(t, Mapping) and set(t) - {"functionDeclarations"} for t in tools
    ):
        reasons.append("server tool results")
    return "; ".join(reasons) or None


def _prompt(inner: Mapping[str, Any]) -> tuple[object, ...]:
    """The billed input, with inline media parts in the shape the estimator prices as media."""
    prompt = tuple(inner[k] for k in _PROMPT_KEYS if inner.get(k) is not None)
    return tuple(_media_parts(p) for p in prompt)


def _media_parts(value: Any) -> Any:
    """`contents` with each `inlineData` image or PDF part as a base64 source part."""
    if not isinstance(value, list):
        return value
    out = []
    for item in value:
        parts = item.get("parts") if isinstance(item, Mapping) else None
        if isinstance(parts, list):
            item = {**item, "parts": [_media_part(p) for p in parts]}
        out.append(item)
    return out


def _media_part(part: Any) -> Any:
    data = part.get("inlineData") if isinstance(part, Mapping) else None
    if not isinstance(data, Mapping) or not isinstance(data.get("data"), str):
        return part
    mime = data.get("mimeType")
    source = {"type": "base64", "media_type": mime, "data": data["data"]}
    if isinstance(mime, str) and mime.startswith("image/"):
        return {"type": "image", "source": source}
    if mime == "application/pdf":
        return {"type": "document", "source": source}
    return part  # other media: its base64 counts as text, far above its token rate


def parse_request(api: str, body: Mapping[str, Any], line: RequestLine = NO_LINE) -> ParsedRequest:
    """Model (from the path, Code Assist: the body), output bound, candidates, stream flag (the
    API: a separate method). Raises `RequestParseError`."""
    if api not in APIS:
        raise ValueError(f"not a Google API: {api}")
    model = _model(api, body, line)
    inner = _inner(api, body)
    config = _config(inner, "generationConfig")
    candidates = optional_int(config, "candidateCount", minimum=1, maximum=MAX_CANDIDATES) or 1
    if not inner.get("contents"):
        raise RequestParseError("the request has no `contents`")
    return ParsedRequest(
        model=model,
        max_output_tokens=output_bound(inner),
        choices=candidates,
        stream=api in STREAMED_APIS,
        prompt=_prompt(inner),
        server_input=_server_input(inner),
        # Grounding with Google Search is billed per search, in numbers the request cannot bound.
        web_searches=UNBOUNDED if _searches(inner) else 0,
    )


def _searches(inner: Mapping[str, Any]) -> bool:
    tools = inner.get("tools")
    return isinstance(tools, list) and any(
        isinstance(t, Mapping) and ("googleSearch" in t or "googleSearchRetrieval" in t) for t in tools
    )


def with_output_cap(api: str, body: Mapping[str, Any], cap: int) -> dict[str, Any]:
    """`body` with `generationConfig.maxOutputTokens` (per candidate) set to `cap`. A request
    whose own cap was not its bound (its thinking unbounded) keeps a smaller cap of its own: the
    cap written only ever lowers what the client asked for."""
    new = dict(body)
    inner = dict(_inner(api, body))
    config = _config(inner, "generationConfig")
    own = config.get("maxOutputTokens")
    if output_bound(inner) is None and isinstance(own, int) and not isinstance(own, bool):
        cap = min(cap, own)
    inner["generationConfig"] = {**config, "maxOutputTokens": cap}
    if api in CODE_ASSIST_APIS:
        new["request"] = inner
        return new
    return inner


def price_flags(headers: Any) -> list[str]:
    """Nothing in Google's headers changes the price."""
    return []


def prepare_request(api: str, body: Mapping[str, Any], parsed: ParsedRequest) -> dict[str, Any] | None:
    """Nothing to change: Gemini reports usage in every answer."""
    return None


def adds_stream_events(api: str, sent: Mapping[str, Any], forwarded: Mapping[str, Any] | None) -> bool:
    return False


def added_event(api: str, event: object) -> bool:
    return False


# What the free counter (`:countTokens`) takes of a request.
_COUNTED_KEYS = ("contents", "systemInstruction", "tools", "toolConfig", "cachedContent")


def count_request(api: str, body: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """`(method, body)` of the free counter: `:countTokens` with the request's input. The Gemini
    API counts a whole `generateContentRequest`; Code Assist takes `{"request": {model, contents}}`."""
    inner = _inner(api, body)
    if api in CODE_ASSIST_APIS:
        model = body.get("model")
        if not isinstance(model, str):
            return None
        counted = {"model": "models/" + _model_name(model), "contents": inner.get("contents")}
        return ":countTokens", {"request": counted}
    request = {k: inner[k] for k in _COUNTED_KEYS if k in inner}
    return ":countTokens", {"generateContentRequest": request}


def counter_request(api: str, path: str, body: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """`(path, body)` of the counter for a request to `path`: its method becomes `:countTokens`
    (`/v1beta/models/m:streamGenerateContent?alt=sse` -> `/v1beta/models/m:countTokens`)."""
    found = count_request(api, body)
    if found is None:
        return None
    route = path.split("?", 1)[0].rstrip("/")
    head, sep, _method = route.rpartition(":")
    if not sep:
        return None
    suffix, counted = found
    if api in CODE_ASSIST_APIS:
        return head + suffix, counted
    request = counted["generateContentRequest"]
    if "/publishers/" in route:
        # Vertex counts the request's own fields (it has no cached content to count).
        return head + suffix, {k: v for k, v in request.items() if k != "cachedContent"}
    model = model_from_path(route) or _model_name(str(body.get("model", "")))
    return head + suffix, {"generateContentRequest": {"model": "models/" + model, **request}}


def render_error(refusal: Refusal, request_id: str) -> tuple[int, dict[str, str], bytes]:
    """The refusal as a `google.rpc.Status`: `{"error": {code, message, status, details}}`."""
    shape = shapes.of(ENVELOPE, refusal)
    body = {
        "error": {
            "code": shape.status,
            "message": refusal.message,
            "status": shape.type,
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": refusal.code.upper(),
                    "domain": "spendfuse",
                    "metadata": {k: str(v) for k, v in refusal_details(refusal).items()},
                }
            ],
        }
    }
    if refusal.kind is RefusalKind.RATE:
        # Gemini CLI retries a 429 after RetryInfo's delay (terminal only past 300 s).
        body["error"]["details"].append(  # type: ignore[index]
            {
                "@type": "type.googleapis.com/google.rpc.RetryInfo",
                "retryDelay": f"{refusal.retry_after or 1}s",
            }
        )
    return shape.status, refusal_headers(refusal), json.dumps(body).encode()
