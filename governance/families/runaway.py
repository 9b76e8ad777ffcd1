"""Runaway streams: a running count of what a stream has generated, and the final error event a
stream that passed its reservation ends with, in its API's own stream format.

A provider that streams more output than the request's cap allowed (a bug, or a lying provider)
would bill more than was reserved. The tap counts each output delta's text as it passes (the
provider reports usage only at the end, if at all), takes the larger of that count and the
usage the stream has reported so far, and cuts the stream once it passes the output the
reservation covers (`RequestInfo.max_output_tokens` over every sampling round). The count errs
high: each delta is counted on its own (never fewer than one token), and a model that tiktoken
only approximates is counted with the rules' widest script margin and its tokenizer factor.

Each family plugs in with two functions, looked up by family name in `STREAMS` (or, for a family
module that defines them, as its `output_texts` and `stream_error`): the output text in one event,
and the bytes of the final error event.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from governance import tokens
from governance.families.sse import Event
from governance.types import Refusal, RequestInfo, Usage


def _sse(event: str | None, data: Mapping[str, Any]) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


# A JSON string field's raw literal. Inside a JSON string every quote is escaped, so a key
# pattern never matches text the model wrote.
_LITERAL = r'": ?"((?:[^"\\]|\\.)*)"'
_CHAT_TEXT = re.compile(r'"(?:content|refusal|reasoning_content|reasoning|text|arguments|name)' + _LITERAL)
_DELTA_TEXT = re.compile(r'"delta' + _LITERAL)
_CLAUDE_TEXT = re.compile(r'"(?:text|thinking|partial_json)' + _LITERAL)


def _strings(pattern: re.Pattern[str], data: str) -> list[str]:
    """The string values of the fields `pattern` names in one event's JSON, decoded (cheaper
    than parsing the whole event: this runs on every content event of every guarded stream)."""
    return [json.loads(f'"{lit}"') if "\\" in lit else lit for lit in pattern.findall(data)]


# -- OpenAI ------------------------------------------------------------------------------------


def _openai_texts(api: str, event: Event) -> Iterable[str]:
    """Chat and completions: each choice's content, refusal, reasoning and tool call text.
    Responses: every `response.*.delta` event's delta (text, refusal, reasoning, arguments)."""
    if api == "responses":
        return _strings(_DELTA_TEXT, event.data) if '.delta"' in event.data else ()
    return _strings(_CHAT_TEXT, event.data) if '"choices"' in event.data else ()


def _openai_error(api: str, refusal: Refusal, body: bytes) -> bytes:
    """Chat and completions: a `data: {"error": {...}}` event (the SDK raises it). Responses:
    `response.failed`, then an `error` event (Codex reads the first, the SDK raises on the second)."""
    error = json.loads(body)["error"]
    if api != "responses":
        return _sse(None, {"error": error})
    failed = {
        "type": "response.failed",
        "response": {"object": "response", "status": "failed", "error": error, "usage": None},
    }
    err = {"type": "error", "code": error.get("code"), "message": error["message"], "param": None}
    return _sse("response.failed", failed) + _sse("error", {**err, "error": error})


# -- Anthropic ---------------------------------------------------------------------------------


def _anthropic_texts(api: str, event: Event) -> Iterable[str]:
    """A `content_block_delta`'s text, thinking or tool input JSON."""
    if event.event != "content_block_delta" and '"content_block_delta"' not in event.data:
        return ()
    return _strings(_CLAUDE_TEXT, event.data)


def _anthropic_error(api: str, refusal: Refusal, body: bytes) -> bytes:
    """`event: error` with the envelope's error body, as Anthropic ends a failed stream."""
    obj = json.loads(body)
    return _sse("error", {"type": "error", "error": obj["error"]})


@dataclass(frozen=True)
class StreamKit:
    """What the runaway guard needs of a family's streams."""

    output_texts: Callable[[str, Event], Iterable[str]]
    """The output text one event of an API carries (none: no output in it)."""
    error_event: Callable[[str, Refusal, bytes], bytes]
    """The SSE bytes that end a stream of an API with `refusal` (its envelope body given)."""


#: The families whose streams are guarded, by name.
STREAMS: dict[str, StreamKit] = {
    "openai": StreamKit(_openai_texts, _openai_error),
    "anthropic": StreamKit(_anthropic_texts, _anthropic_error),
}


def kit(family: str, module: object) -> StreamKit | None:
    """The family's stream kit: registered here, or defined by its module (`output_texts`,
    `stream_error`); None: its streams are not guarded (their usage still settles them)."""
    found = STREAMS.get(family)
    if found is not None:
        return found
    texts, error = getattr(module, "output_texts", None), getattr(module, "stream_error", None)
    return StreamKit(texts, error) if callable(texts) and callable(error) else None


class OutputMeter:
    """A running count of a stream's output tokens, erring high, against the output its
    reservation covers. `on_event` takes each event as it completes.

    Counting is put off while it cannot matter: an event's text has no more tokens than its
    data has bytes, so events are only counted once the count so far plus the bytes of the
    events not yet counted could pass the limit (a stream far below its cap is never counted)."""

    def __init__(self, kit: StreamKit, info: RequestInfo, factor: Decimal) -> None:
        self.kit = kit
        self.api = info.api
        self.limit = info.max_output_tokens * max(1, info.tool_rounds)
        self.counted = 0
        self._encode = tokens.encoding(tokens.encoding_name_for(info.model)).encode_ordinary
        self._factor = factor
        self._waiting: list[Event] = []
        self._waiting_bytes = 0

    def on_event(self, event: Event) -> None:
        self._waiting.append(event)
        self._waiting_bytes += len(event.data)
        if self.counted + self._waiting_bytes > self.limit:
            waiting, self._waiting, self._waiting_bytes = self._waiting, [], 0
            for ev in waiting:
                for text in self.kit.output_texts(self.api, ev):
                    self.counted += self._tokens(text)

    def _tokens(self, text: str) -> int:
        if not text:
            return 0
        # Long text in pieces: never fewer tokens than whole, and linear (one huge run of a
        # repeated character is slow for BPE).
        n = sum(len(self._encode(text[i : i + _PIECE])) for i in range(0, len(text), _PIECE))
        return max(1, math.ceil(n * self._factor) if self._factor != 1 else n)

    def over(self, reported: Usage | None) -> bool:
        """Whether the output so far (the larger of the count and what the stream reported)
        passed the limit."""
        return self.counted > self.limit or (reported is not None and reported.output_tokens > self.limit)


_PIECE = 4096


def count_factor(model: str, script_margins: Mapping[str, Decimal]) -> Decimal:
    """How much to multiply tiktoken's count of `model`'s output by so that it errs high: 1 where
    tiktoken is exact; else the widest script margin times the model's tokenizer factor."""
    if tokens.is_exact(model):
        return Decimal(1)
    widest = max(script_margins.values(), default=Decimal(1))
    return widest * tokens.tokenizer_factor(model)
