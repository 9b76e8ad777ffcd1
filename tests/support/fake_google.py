"""The fake upstream's Google side: the Gemini API and Vertex (`models/{model}:generateContent`,
`:streamGenerateContent` as SSE with `alt=sse` and as a streamed JSON array without it,
`:countTokens`) and Code Assist (`/v1internal:*`, request and answers wrapped).

It bills with its own count, as Google documents it: `promptTokenCount` is the knob's input (the
cached part included), the answer's text is the knob's output within the request's
`maxOutputTokens` per candidate, thoughts (`thoughtsTokenCount`) are billed as output and count
against the same cap, and the USD bill uses Google's published prices.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

from tests.support.fake_upstream import send_chunked

# Published Gemini API prices, USD per 1M tokens (thinking billed at the output rate).
PRICES = {
    "gemini-2.5-flash": {"in": Decimal("0.30"), "out": Decimal("2.50"), "cache": Decimal("0.03")},
    "gemini-2.0-flash": {"in": Decimal("0.10"), "out": Decimal("0.40"), "cache": Decimal("0.025")},
}

_METHOD = re.compile(r"(?:/models/([^/:]+))?:(generateContent|streamGenerateContent|countTokens)$")


def handles(path: str) -> bool:
    """Whether `path` (no query) is a Google inference or counter method."""
    return _METHOD.search(path) is not None


def serve(handler: Any, path: str, query: str, body: dict[str, Any]) -> None:
    """Answer a Google request on `handler` (the fake upstream's request handler)."""
    m = _METHOD.search(path)
    assert m is not None
    assist = path.startswith("/v1internal")
    model = (body.get("model") or "?") if assist else m.group(1)
    model = model.removeprefix("models/")
    inner = body.get("request", {}) if assist else body
    k = handler.upstream.knobs
    if k.status != 200:
        status = {429: "RESOURCE_EXHAUSTED", 400: "INVALID_ARGUMENT"}.get(k.status, "INTERNAL")
        _json(
            handler, k.status, {"error": {"code": k.status, "message": "upstream failed", "status": status}}
        )
        return
    if m.group(2) == "countTokens":
        _json(handler, k.count_status, {"totalTokens": k.prompt_tokens} if k.count_status == 200 else {})
        return
    config = inner.get("generationConfig") or {}
    cap = config.get("maxOutputTokens")
    candidates = config.get("candidateCount") or 1
    limit = cap if isinstance(cap, int) else 1 << 30
    thoughts = min(k.thought_tokens, limit)
    visible = min(k.completion_tokens, limit - thoughts)
    if k.output_at_cap and isinstance(cap, int):
        thoughts, visible = 0, cap
    usage = {
        "promptTokenCount": k.prompt_tokens,
        "candidatesTokenCount": visible * candidates,
        "totalTokenCount": k.prompt_tokens + (visible + thoughts) * candidates,
    }
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts * candidates
    if k.cached_tokens:
        usage["cachedContentTokenCount"] = k.cached_tokens
    _bill(handler, model, usage)
    chunks = _chunks(model, usage, candidates, k.chunks, omit=k.omit_usage)
    if assist:
        chunks = [{"response": c, "traceId": "trace-1"} for c in chunks]
    if m.group(2) == "generateContent":
        _json(handler, 200, chunks[-1])
    elif "alt=sse" in query:
        send_chunked(
            handler, "text/event-stream", [b"data: " + json.dumps(c).encode() + b"\r\n\r\n" for c in chunks]
        )
    else:
        parts = [json.dumps(c, indent=2).encode() for c in chunks]
        pieces = [b"[" + parts[0]] + [b"\n,\r\n" + p for p in parts[1:]] + [b"\n]"]
        send_chunked(handler, "application/json; charset=UTF-8", pieces)


def _chunks(
    model: str, usage: dict[str, int], candidates: int, n: int, *, omit: bool
) -> list[dict[str, Any]]:
    """The answer in `n` chunks, each with the usage so far (cumulative, as Gemini streams it),
    the last with `finishReason` and the whole usage."""
    n = max(n, 1)
    out = []
    for i in range(n):
        last = i == n - 1
        so_far = (
            dict(usage) if last else {**usage, "candidatesTokenCount": usage["candidatesTokenCount"] * i // n}
        )
        cands = [
            {"content": {"role": "model", "parts": [{"text": f'part {i} [of] {{answer}} "{c}"'}]}, "index": c}
            | ({"finishReason": "STOP"} if last else {})
            for c in range(candidates)
        ]
        chunk: dict[str, Any] = {"candidates": cands, "modelVersion": model, "responseId": "resp-g1"}
        if not omit:
            chunk["usageMetadata"] = so_far
        out.append(chunk)
    return out


def _bill(handler: Any, model: str, usage: dict[str, int]) -> None:
    up = handler.upstream
    output = usage["candidatesTokenCount"] + usage.get("thoughtsTokenCount", 0)
    cached = usage.get("cachedContentTokenCount", 0)
    with up.lock:
        up.billed.append({"model": model, "input_tokens": usage["promptTokenCount"], "output_tokens": output})
        price = PRICES.get(model)
        if price is not None:
            usd = (
                (usage["promptTokenCount"] - cached) * price["in"]
                + cached * price["cache"]
                + output * price["out"]
            ) / 1_000_000
            up.bills.append({"model": model, "usd": usd})


def _json(handler: Any, status: int, obj: Any) -> None:
    data = json.dumps(obj).encode()
    handler.send_response(status)
    handler.send_header("content-type", "application/json; charset=UTF-8")
    handler.send_header("content-length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
