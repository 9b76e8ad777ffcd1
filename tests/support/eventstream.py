"""A test-side AWS event-stream encoder, written from the format's description and independent
of spendfuse's decoder: prelude (total length, headers length, CRC32 of the two), headers (each
a 1-byte name length, the name, a type byte, then the value), payload, CRC32 of all before."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

STRING, BOOL_TRUE, INT32 = 7, 0, 4


def header(name: str, value: str | bool | int) -> bytes:
    raw = name.encode()
    out = bytes([len(raw)]) + raw
    if value is True:
        return out + bytes([BOOL_TRUE])
    if isinstance(value, int):
        return out + bytes([INT32]) + value.to_bytes(4, "big", signed=True)
    data = value.encode()
    return out + bytes([STRING]) + len(data).to_bytes(2, "big") + data


def message(headers: dict[str, str | bool | int], payload: bytes) -> bytes:
    block = b"".join(header(k, v) for k, v in headers.items())
    total = 12 + len(block) + len(payload) + 4
    prelude = total.to_bytes(4, "big") + len(block).to_bytes(4, "big")
    prelude += (binascii.crc32(prelude) & 0xFFFFFFFF).to_bytes(4, "big")
    body = prelude + block + payload
    return body + (binascii.crc32(body) & 0xFFFFFFFF).to_bytes(4, "big")


def event(event_type: str, payload: Any) -> bytes:
    headers: dict[str, str | bool | int] = {
        ":event-type": event_type,
        ":content-type": "application/json",
        ":message-type": "event",
    }
    return message(headers, json.dumps(payload).encode())


def exception(kind: str, text: str) -> bytes:
    headers: dict[str, str | bool | int] = {
        ":exception-type": kind,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return message(headers, json.dumps({"message": text}).encode())


def chunk(native: dict[str, Any]) -> bytes:
    """An InvokeModel stream's `chunk` event carrying one model-native event."""
    data = base64.b64encode(json.dumps(native).encode()).decode()
    return event("chunk", {"bytes": data, "p": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ"})


def anthropic_stream(
    model: str, input_tokens: int, output_tokens: int, read: int = 0, write: int = 0, text: str = "Hello"
) -> bytes:
    """InvokeModel-with-response-stream for an Anthropic model, as Bedrock sends it: the native
    events, the last one with `amazon-bedrock-invocationMetrics`."""
    usage = {
        "input_tokens": input_tokens,
        "cache_read_input_tokens": read,
        "cache_creation_input_tokens": write,
        "output_tokens": 1,
    }
    events = [
        {
            "type": "message_start",
            "message": {
                "id": "msg_bdrk_1",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "usage": usage,
            },
        },
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": output_tokens},
        },
        {
            "type": "message_stop",
            "amazon-bedrock-invocationMetrics": {
                "inputTokenCount": input_tokens,
                "outputTokenCount": output_tokens,
                "invocationLatency": 321,
                "firstByteLatency": 123,
                "cacheReadInputTokenCount": read,
                "cacheWriteInputTokenCount": write,
            },
        },
    ]
    return b"".join(chunk(e) for e in events)


def converse_stream(
    input_tokens: int, output_tokens: int, read: int = 0, write: int = 0, text: str = "Hello"
) -> bytes:
    """ConverseStream as Bedrock sends it: the final `metadata` event carries the usage."""
    usage = {
        "inputTokens": input_tokens,
        "outputTokens": output_tokens,
        "totalTokens": input_tokens + output_tokens + read + write,
        "cacheReadInputTokens": read,
        "cacheWriteInputTokens": write,
    }
    return b"".join(
        [
            event("messageStart", {"role": "assistant", "p": "abcd"}),
            event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": text}, "p": "abcdef"}),
            event("contentBlockStop", {"contentBlockIndex": 0, "p": "ab"}),
            event("messageStop", {"stopReason": "end_turn", "p": "abcdefg"}),
            event("metadata", {"usage": usage, "metrics": {"latencyMs": 420}, "p": "abc"}),
        ]
    )
