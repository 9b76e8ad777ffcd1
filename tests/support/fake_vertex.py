"""A fake Claude on Vertex AI behind the fake upstream (`fake_upstream` dispatches
`.../publishers/anthropic/models/{model}:rawPredict|:streamRawPredict` here): the model from the
path, the answer in Anthropic's shape (the fake's `_messages`), billed by its own count at its
own prices (`PRICES`, Google's per-token rates; regional endpoints 10% above the global one)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import TYPE_CHECKING
from urllib.parse import unquote

if TYPE_CHECKING:
    from tests.support.fake_upstream import _Handler

# USD per million tokens: input, output, cache read, cache write (5 minutes), on the global endpoint.
PRICES = {"claude-sonnet-4-5@20250929": ("3", "15", "0.30", "3.75")}
# The dated id Vertex answers with.
ANSWERED = {"claude-sonnet-4-5@20250929": "claude-sonnet-4-5-20250929"}
REGIONAL = Decimal("1.1")


def is_vertex_claude(path: str) -> bool:
    return "/publishers/anthropic/models/" in path


def bill(model: str, host: str, uncached: int, output: int, read: int, write: int) -> Decimal:
    rates = [Decimal(p) for p in PRICES[model]]
    usd = (uncached * rates[0] + output * rates[1] + read * rates[2] + write * rates[3]) / 1_000_000
    return usd if host.split(":")[0] == "aiplatform.googleapis.com" else usd * REGIONAL


def serve(handler: _Handler) -> None:
    up = handler.upstream
    k = up.knobs
    path = handler.path.split("?", 1)[0]
    model, _, method = unquote(path.rsplit("/", 1)[1]).partition(":")
    body = json.loads(handler.rfile.read(int(handler.headers.get("content-length", "0"))) or b"{}")
    with up.lock:
        up.hits[f"vertex:{method}"] += 1
        up.bodies.append(body)
        up.headers.append({name.lower(): value for name, value in handler.headers.items()})
    if "model" in body or body.get("anthropic_version") != "vertex-2023-10-16" or model not in PRICES:
        handler._json(400, {"error": {"code": 400, "message": "bad request", "status": "INVALID_ARGUMENT"}})
        return
    cap = body.get("max_tokens")
    handler.output_tokens = min(k.completion_tokens, cap) if isinstance(cap, int) else k.completion_tokens
    handler.prompt_tokens = k.prompt_tokens
    handler.geo = None
    host = handler.headers.get("host", "")
    usd = bill(model, host, k.prompt_tokens, handler.output_tokens, k.cached_tokens, k.cache_write_tokens)
    with up.lock:
        up.bills.append({"model": model, "usd": usd})
    handler._messages(ANSWERED[model], method == "streamRawPredict" or bool(body.get("stream")), body)
