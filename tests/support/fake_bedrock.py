"""A fake AWS Bedrock runtime behind the fake upstream (`fake_upstream` dispatches `/model/...`
here): it verifies each request's SigV4 signature over the request exactly as it arrived
(`tests/support/sigv4`), records the raw bytes, and answers InvokeModel (Anthropic), Converse
and their event streams (built by `tests/support/eventstream`) with the usage it bills by its
own count and prices (`PRICES`, AWS's published per-token rates), in the body, the event
stream's metrics and the token-count headers alike."""

from __future__ import annotations

import json
import socket
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from tests.support import eventstream as es
from tests.support import sigv4

if TYPE_CHECKING:
    from tests.support.fake_upstream import _Handler

# USD per million tokens: input, output, cache read, cache write. A cross-region (geographic)
# profile costs 10% more than a global one.
PRICES = {
    "us.anthropic.claude-sonnet-4-5-20250929-v1:0": ("3.30", "16.50", "0.33", "4.125"),
    "global.anthropic.claude-sonnet-4-5-20250929-v1:0": ("3", "15", "0.30", "3.75"),
    "amazon.nova-pro-v1:0": ("0.80", "3.20", "0.20", "0.80"),
}
EVENTSTREAM = "application/vnd.amazon.eventstream"


def bill(model: str, uncached: int, output: int, read: int, write: int) -> Decimal:
    rates = [Decimal(p) for p in PRICES[model]]
    return (uncached * rates[0] + output * rates[1] + read * rates[2] + write * rates[3]) / 1_000_000


def _error(handler: _Handler, status: int, kind: str, message: str) -> None:
    handler._json(
        status,
        {"message": message},
        extra={"x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/"},
    )


def serve(handler: _Handler) -> None:
    """Answer one POST to `/model/{modelId}/{action}`."""
    up = handler.upstream
    k = up.knobs
    raw_path = handler.path
    raw = handler.rfile.read(int(handler.headers.get("content-length", "0")))
    headers = {name.lower(): value for name, value in handler.headers.items()}
    path = raw_path.split("?", 1)[0]
    _, _, model_id, action = path.split("/", 3)
    model = unquote(model_id)
    with up.lock:
        up.hits[f"/model/{{model}}/{action}"] += 1
        up.raw.append((raw_path, list(handler.headers.items()), raw))
        up.headers.append(headers)
    problem = sigv4.verify("POST", raw_path, headers, raw)
    if problem is not None:
        _error(
            handler,
            403,
            "InvalidSignatureException",
            f"The request signature we calculated does not match: {problem}",
        )
        return
    body = json.loads(raw)
    with up.lock:
        up.bodies.append(body)
    if action == "count-tokens":
        handler._json(200, {"inputTokens": k.prompt_tokens})
        return
    if model not in PRICES:
        _error(handler, 400, "ValidationException", f"The provided model identifier is invalid: {model}")
        return
    converse = action.startswith("converse")
    cap = (body.get("inferenceConfig") or {}).get("maxTokens") if converse else body.get("max_tokens")
    output = min(k.completion_tokens, cap) if isinstance(cap, int) else k.completion_tokens
    counts = (k.prompt_tokens, output, k.cached_tokens, k.cache_write_tokens)
    with up.lock:
        up.bills.append({"model": model, "usd": bill(model, *counts)})
    if action == "invoke":
        _invoke(handler, model, *counts)
    elif action == "converse":
        handler._json(200, _converse(*counts))
    else:
        stream = es.anthropic_stream(model, *counts) if action == "invoke-with-response-stream" else None
        data = bytearray(stream if stream is not None else es.converse_stream(*counts))
        # A test asks for a damaged frame with this (signed) header: the byte at that offset flips.
        if (at := headers.get("x-test-corrupt-byte")) is not None:
            data[int(at)] ^= 0x40
        _stream(handler, bytes(data))


def _invoke(handler: _Handler, model: str, uncached: int, output: int, read: int, write: int) -> None:
    usage = {
        "input_tokens": uncached,
        "cache_read_input_tokens": read,
        "cache_creation_input_tokens": write,
        "output_tokens": output,
    }
    answer = {
        "id": "msg_bdrk_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [{"type": "text", "text": "hello"}],
        "stop_reason": "end_turn",
        "usage": usage,
    }
    counts = {
        "x-amzn-bedrock-input-token-count": str(uncached),
        "x-amzn-bedrock-output-token-count": str(output),
        "x-amzn-bedrock-cache-read-input-token-count": str(read),
        "x-amzn-bedrock-cache-write-input-token-count": str(write),
        "x-amzn-bedrock-invocation-latency": "321",
    }
    handler._json(200, answer, extra=counts)


def _converse(uncached: int, output: int, read: int, write: int) -> dict[str, Any]:
    return {
        "output": {"message": {"role": "assistant", "content": [{"text": "hello"}]}},
        "stopReason": "end_turn",
        "usage": {
            "inputTokens": uncached,
            "outputTokens": output,
            "totalTokens": uncached + output + read + write,
            "cacheReadInputTokens": read,
            "cacheWriteInputTokens": write,
        },
        "metrics": {"latencyMs": 420},
    }


def _stream(handler: _Handler, data: bytes) -> None:
    """The event stream in chunks of awkward sizes (frames split across them), as TCP may."""
    k = handler.upstream.knobs
    handler.send_response(200)
    handler.send_header("content-type", EVENTSTREAM)
    handler.send_header("transfer-encoding", "chunked")
    handler.end_headers()
    pieces = [data[i : i + 37] for i in range(0, len(data), 37)]
    for i, piece in enumerate(pieces):
        if k.break_stream_after is not None and i >= k.break_stream_after:
            handler.wfile.flush()
            handler.connection.shutdown(socket.SHUT_RDWR)
            handler.close_connection = True
            return
        handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        handler.wfile.flush()
    handler.wfile.write(b"0\r\n\r\n")
    handler.wfile.flush()
