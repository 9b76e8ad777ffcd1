"""Usage of a Bedrock answer, from each place Bedrock reports it, and how they combine.

Bedrock reports the same counts in up to three places: the model-native body (an Anthropic
`usage`; Converse's `usage`), the `amazon-bedrock-invocationMetrics` of a stream's last event
(InvokeModel) or its `metadata` event (ConverseStream), and the `x-amzn-bedrock-*-token-count`
response headers. They are one bill seen several times, never parts of one: they combine by
taking, for each count (uncached input, cache reads, cache writes, output), the largest any
source reports. So nothing is counted twice, and a source that reports less never lowers the
charge. Every count excludes the cache tokens, as Anthropic's and Converse's do; a source read
in the other sense could only be charged more, never less.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from governance.families import anthropic
from governance.families.common import token_count
from governance.families.eventstream import CorruptStream, EventStreamDecoder, Message
from governance.families.sse import Event
from governance.types import Usage

logger = logging.getLogger(__name__)

#: The response headers Bedrock puts its counts in (the non-streamed InvokeModel answer).
HEADER_COUNTS = {
    "input": "x-amzn-bedrock-input-token-count",
    "output": "x-amzn-bedrock-output-token-count",
    "read": "x-amzn-bedrock-cache-read-input-token-count",
    "write": "x-amzn-bedrock-cache-write-input-token-count",
}
_METRICS = "amazon-bedrock-invocationMetrics"


def _usage(uncached: int, output: int, read: int, write: int, web_searches: int = 0) -> Usage:
    # The model is the one the path names (its inference profile included), never the
    # response's: `Usage.model` stays None so that settling prices the path's id.
    return Usage(
        input_tokens=uncached + read + write,
        output_tokens=output,
        cache_read_tokens=read,
        cache_write_tokens=write,
        web_searches=web_searches,
    )


def _counts(usage: Usage) -> tuple[int, int, int, int]:
    uncached = usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens
    return uncached, usage.output_tokens, usage.cache_read_tokens, usage.cache_write_tokens


def combine(*found: Usage | None) -> Usage | None:
    """The usage several sources report of one answer: each count at the largest reported."""
    present = [u for u in found if u is not None]
    if not present:
        return None
    if len(present) == 1:
        return present[0]
    counts = [max(c) for c in zip(*(_counts(u) for u in present), strict=True)]
    one_hour = max(u.cache_write_1h_tokens for u in present)
    merged = _usage(*counts, web_searches=max(u.web_searches for u in present))
    return replace(merged, cache_write_1h_tokens=min(one_hour, merged.cache_write_tokens))


def from_anthropic(usage: Usage | None) -> Usage | None:
    """An Anthropic usage as Bedrock bills it: priced by the path's model, not the body's."""
    if usage is None:
        return None
    return replace(usage, model=None, inference_geo=None, speed=None)


def _counted(found: Any, uncached: str, output: str, read: str, write: str) -> Usage | None:
    """The usage in an object whose counts are under these keys, or None when the input and
    output counts are not both there."""
    if not isinstance(found, Mapping) or not isinstance(found.get(uncached), int):
        return None
    if not isinstance(found.get(output), int):
        return None
    return _usage(*(token_count(found, key) for key in (uncached, output, read, write)))


def from_converse(usage: Any) -> Usage | None:
    """Converse's `usage` object (`inputTokens` excludes the cache counts), or None."""
    return _counted(usage, "inputTokens", "outputTokens", "cacheReadInputTokens", "cacheWriteInputTokens")


def from_metrics(metrics: Any) -> Usage | None:
    """An InvokeModel stream's `amazon-bedrock-invocationMetrics`, or None."""
    return _counted(
        metrics,
        "inputTokenCount",
        "outputTokenCount",
        "cacheReadInputTokenCount",
        "cacheWriteInputTokenCount",
    )


def _header_int(headers: Callable[[str], list[str]], name: str) -> int | None:
    values = headers(name)
    if not values:
        return None
    text = values[0].strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) < 12 else None


def from_headers(headers: Callable[[str], list[str]]) -> Usage | None:
    """The `x-amzn-bedrock-*-token-count` response headers (`headers` is a `get_all`), or None
    when the input and output counts are not both there."""
    found = {k: _header_int(headers, name) for k, name in HEADER_COUNTS.items()}
    if found["input"] is None or found["output"] is None:
        return None
    return _usage(found["input"], found["output"], found["read"] or 0, found["write"] or 0)


class BedrockStream:
    """The `StreamReader` of Bedrock's streams: AWS event-stream messages, decoded as they pass.

    InvokeModel (`invoke_stream`): each `chunk` event's payload is `{"bytes": base64}` of one
    model-native event, read by the Anthropic stream reader; the last one also carries the
    invocation metrics. ConverseStream (`converse_stream`): the `metadata` event's `usage`.

    A stream whose framing breaks (a checksum, a length, a chunk that is not base64 JSON) has no
    usage, whatever was read before: its reservation is charged, never a part of it."""

    def __init__(self, api: str) -> None:
        self.api = api
        self._decoder = EventStreamDecoder()
        self._anthropic = anthropic.StreamUsage("messages")
        self._reported: Usage | None = None  # the metrics or metadata event's count
        self.corrupt: str | None = None

    @property
    def usage(self) -> Usage | None:
        if self.corrupt is not None:
            return None
        return combine(from_anthropic(self._anthropic.usage), self._reported)

    def feed(self, chunk: bytes) -> None:
        if self.corrupt is not None:
            return
        try:
            for message in self._decoder.feed(chunk):
                self._on_message(message)
        except CorruptStream as e:
            self._broken(str(e))

    def close(self) -> None:
        if self.corrupt is None:
            try:
                self._decoder.close()
            except CorruptStream as e:
                self._broken(str(e))

    def _broken(self, why: str) -> None:
        self.corrupt = why
        # Not an error of spendfuse's: the stream is settled at its reservation, as designed.
        logger.warning("a Bedrock event stream is corrupt (%s): its reservation is charged", why)

    def _on_message(self, message: Message) -> None:
        if message.kind != "event":
            return  # an exception ends the stream: without usage so far, the hold is charged
        if self.api.startswith("converse"):
            if message.event_type == "metadata":
                self._reported = combine(self._reported, from_converse(_payload(message).get("usage")))
            return
        if message.event_type != "chunk":
            return
        encoded = _payload(message).get("bytes")
        if not isinstance(encoded, str):
            raise CorruptStream("a chunk event without its bytes")
        try:
            text = base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as e:
            raise CorruptStream(f"a chunk whose bytes are not base64 UTF-8: {e}") from None
        if _METRICS in text:
            event = _json(text)
            self._reported = combine(self._reported, from_metrics(event.get(_METRICS)))
        self._anthropic.on_event(Event("", text))


def _json(text: str | bytes) -> Mapping[str, Any]:
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise CorruptStream(f"an event that is not JSON: {e}") from None
    if not isinstance(obj, Mapping):
        raise CorruptStream("an event that is not a JSON object")
    return obj


def _payload(message: Message) -> Mapping[str, Any]:
    return _json(message.payload)
