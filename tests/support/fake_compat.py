"""The fake upstream's OpenAI-compatible hosts and Azure OpenAI, each as its provider documents it
(`../shared/reference/providers.md` §1.5, §1.10): where usage goes, what each bills, and what
each rejects. `fake_upstream` hands a request to `answer` when its Host is one of these.

- OpenRouter (`/api/v1`): usage carries `cost`, what it charged (its own book: the price of the
  provider it routed to), in every answer and at the end of every stream (include_usage or not).
- Groq (`/openai/v1`): a stream's usage in the final chunk's `x_groq.usage`; with include_usage,
  also the usage-only chunk.
- Mistral (`/v1`): rejects `stream_options` and `max_completion_tokens` (422 extra_forbidden, in
  its own error format); the last chunk always carries usage.
- DeepSeek (`/` and `/v1`): cache hits and misses (`prompt_cache_hit_tokens`), no
  `prompt_tokens_details`; keep-alive comments before a stream.
- xAI (`/v1`): reasoning tokens billed on top of `completion_tokens`.
- Azure (`/openai/deployments/{d}/...?api-version=`, `/openai/v1/...`): each deployment runs the
  model of this fake's own table, reported in `model`; content-filter chunks in every stream.

The counts billed are the knobs' (input `prompt_tokens`, cache hits `cached_tokens`, output the
knob within the request's cap) plus `COMPAT.reasoning_tokens` on xAI; each answer's counts are
recorded in `upstream.billed`, and OpenRouter's cost in `upstream.bills`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

HOSTS = ("openrouter.ai", "api.groq.com", "api.mistral.ai", "api.deepseek.com", "api.x.ai")
AZURE = re.compile(r"^[a-z0-9-]+\.openai\.azure\.com$")
#: Azure deployments of the fake resource -> the model each runs.
DEPLOYMENTS = {"prod-4o": "gpt-4o-2024-11-20", "cheap": "gpt-4o-mini-2024-07-18"}
#: OpenRouter's book (USD per 1M tokens: input, cache read, output): the routed provider's price.
OPENROUTER_BOOK = {"anthropic/claude-sonnet-4.5": (Decimal("3.3"), Decimal("0.33"), Decimal("16.5"))}
_BASES = {
    "openrouter.ai": ("/api/v1",),
    "api.groq.com": ("/openai/v1",),
    "api.mistral.ai": ("/v1",),
    "api.deepseek.com": ("", "/v1"),
    "api.x.ai": ("/v1",),
}


@dataclass
class CompatKnobs:
    reasoning_tokens: int = 0  # xAI: reasoning billed beside completion_tokens


COMPAT = CompatKnobs()


def serves(host: str) -> bool:
    host = host.split(":")[0].lower()
    return host in HOSTS or AZURE.match(host) is not None


def answer(h: Any, host: str, path: str, query: str, body: dict[str, Any]) -> None:
    """Answer `body` as the provider behind `host` would (`h`: the fake's request handler)."""
    host = host.split(":")[0].lower()
    if AZURE.match(host):
        _azure(h, path, query, body)
        return
    route = next((path[len(b) :] for b in _BASES[host] if path.startswith(b + "/")), None)
    if route != "/chat/completions":
        h._json(404, {"error": {"message": f"no route {path}", "type": "invalid_request_error"}})
        return
    if host == "api.mistral.ai":
        extra = [k for k in ("stream_options", "max_completion_tokens") if k in body]
        if extra:
            detail = [
                {
                    "type": "extra_forbidden",
                    "loc": ["body", extra[0]],
                    "msg": "Extra inputs are not permitted",
                }
            ]
            h._json(
                422,
                {
                    "object": "error",
                    "message": {"detail": detail},
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                },
            )
            return
    _chat(h, host, body, body.get("model", "?"))


def _counts(h: Any, body: dict[str, Any]) -> tuple[int, int, int]:
    """(input, cache hits, output) this provider bills: the knobs, output within the cap."""
    k = h.upstream.knobs
    caps = [body.get(f) for f in ("max_tokens", "max_completion_tokens")]
    caps = [c for c in caps if isinstance(c, int) and not isinstance(c, bool)]
    return k.prompt_tokens, k.cached_tokens, min([k.completion_tokens, *caps])


def _usage(h: Any, host: str, model: str, body: dict[str, Any]) -> dict[str, Any]:
    """The answer's usage in `host`'s own fields, recorded as billed."""
    prompt, hits, out = _counts(h, body)
    reasoning = COMPAT.reasoning_tokens if host == "api.x.ai" else 0
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": out,
        "total_tokens": prompt + out + reasoning,
    }
    billed = {
        "model": model,
        "input_tokens": prompt,
        "cache_read_tokens": hits,
        "output_tokens": out + reasoning,
    }
    if host == "api.deepseek.com":
        usage.update(prompt_cache_hit_tokens=hits, prompt_cache_miss_tokens=prompt - hits)
    elif host == "api.groq.com":
        usage.update(queue_time=0.01, prompt_time=0.002, completion_time=0.03, total_time=0.032)
    elif host != "api.mistral.ai":
        usage["prompt_tokens_details"] = {"cached_tokens": hits, "audio_tokens": 0}
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    if host == "openrouter.ai":
        book_in, book_read, book_out = OPENROUTER_BOOK[model]
        cost = ((prompt - hits) * book_in + hits * book_read + out * book_out) / 1_000_000
        usage["cost"] = float(cost)
        usage["cost_details"] = {"upstream_inference_cost": None}
        with h.upstream.lock:
            h.upstream.bills.append({"model": model, "usd": Decimal(repr(float(cost)))})
    with h.upstream.lock:
        h.upstream.billed.append(billed)
    return usage


def _chunk(model: str, choices: list[Any], **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": model,
        "choices": choices,
        **extra,
    }


def _chat(h: Any, host: str, body: dict[str, Any], model: str) -> None:
    if not body.get("stream"):
        message = {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}
        resp = {
            "id": "chatcmpl-c0",
            "object": "chat.completion",
            "created": 1,
            "model": model,
            "choices": [message],
        }
        if host == "openrouter.ai":
            resp["provider"] = "Anthropic"
        h._json(200, {**resp, "usage": _usage(h, host, model, body)})
        return
    include = bool((body.get("stream_options") or {}).get("include_usage"))
    events = (
        [": OPENROUTER PROCESSING"]
        if host == "openrouter.ai"
        else [": keep-alive"]
        if host == "api.deepseek.com"
        else []
    )
    for i in range(h.upstream.knobs.chunks):
        events.append(_chunk(model, [{"index": 0, "delta": {"content": f"w{i} "}, "finish_reason": None}]))
    usage = _usage(h, host, model, body)
    final = [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    if host == "api.mistral.ai":
        events.append(_chunk(model, final, usage=usage))
    elif host == "api.groq.com":
        events.append(_chunk(model, final, x_groq={"id": "req_1", "usage": usage}))
        if include:
            events.append(_chunk(model, [], usage=usage, x_groq={"id": "req_1"}))
    else:
        events.append(_chunk(model, final))
        if include or host == "openrouter.ai":
            events.append(_chunk(model, [], usage=usage))
    _stream(h, [*events, "[DONE]"])


_CLASSIC = re.compile(r"^/openai/deployments/([^/]+)/chat/completions$")
_SAFE = {"filtered": False, "severity": "safe"}
_FILTERS = {"hate": _SAFE, "self_harm": _SAFE, "sexual": _SAFE, "violence": _SAFE}


def _azure(h: Any, path: str, query: str, body: dict[str, Any]) -> None:
    found = _CLASSIC.match(path)
    if found is not None:
        if "api-version=" not in query:
            h._json(404, {"error": {"code": "404", "message": "Resource not found"}})
            return
        deployment = found.group(1)
    elif path == "/openai/v1/chat/completions":
        deployment = body.get("model", "")
    else:
        h._json(404, {"error": {"code": "404", "message": "Resource not found"}})
        return
    model = DEPLOYMENTS.get(deployment)
    if model is None:
        message = "The API deployment for this resource does not exist."
        h._json(404, {"error": {"code": "DeploymentNotFound", "message": message}})
        return
    usage = _usage(h, "azure", model, body)
    prompt_filter = [{"prompt_index": 0, "content_filter_results": _FILTERS}]
    if not body.get("stream"):
        choice = {
            "index": 0,
            "finish_reason": "stop",
            "message": {"role": "assistant", "content": "hello"},
            "content_filter_results": _FILTERS,
        }
        h._json(
            200,
            {
                "id": "chatcmpl-a0",
                "object": "chat.completion",
                "created": 1,
                "model": model,
                "choices": [choice],
                "prompt_filter_results": prompt_filter,
                "usage": usage,
            },
        )
        return
    events: list[Any] = [
        {
            "choices": [],
            "created": 0,
            "id": "",
            "model": "",
            "object": "",
            "prompt_filter_results": prompt_filter,
        }
    ]
    for i in range(h.upstream.knobs.chunks):
        delta = {
            "index": 0,
            "delta": {"content": f"w{i} "},
            "finish_reason": None,
            "content_filter_results": _FILTERS,
        }
        events.append(_chunk(model, [delta], usage=None))
    events.append(
        _chunk(
            model,
            [{"index": 0, "delta": {}, "finish_reason": "stop", "content_filter_results": {}}],
            usage=None,
        )
    )
    offsets = {"check_offset": 0, "start_offset": 0, "end_offset": 9}
    events.append(
        {
            "choices": [
                {
                    "index": 0,
                    "finish_reason": None,
                    "content_filter_offsets": offsets,
                    "content_filter_results": _FILTERS,
                }
            ],
            "created": 0,
            "id": "",
            "model": "",
            "object": "",
        }
    )
    if (body.get("stream_options") or {}).get("include_usage"):
        events.append(_chunk(model, [], usage=usage))
    _stream(h, [*events, "[DONE]"])


def _stream(h: Any, events: list[Any]) -> None:
    """SSE, one chunk per event; a string starting with ':' is a comment line."""
    h.send_response(200)
    h.send_header("content-type", "text/event-stream")
    h.send_header("transfer-encoding", "chunked")
    h.end_headers()
    for event in events:
        if isinstance(event, str) and event.startswith(":"):
            data = f"{event}\n\n".encode()
        else:
            data = f"data: {event if isinstance(event, str) else json.dumps(event)}\n\n".encode()
        h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        h.wfile.flush()
    h.wfile.write(b"0\r\n\r\n")
    h.wfile.flush()
