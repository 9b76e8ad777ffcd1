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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from governance import tokens
from governance.families.common import json_object
from governance.families.sse import Event
from governance.types import Refusal, RequestInfo, Usage


def _sse(event: str | None, data: Mapping[str, Any]) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


# -- OpenAI ------------------------------------------------------------------------------------


def _openai_texts(api: str, event: Event) -> Iterable[str]:
    data = event.data
    if api == "responses":
        # Every `response.*.delta` event (output text, refusal, reasoning, tool arguments) is output.
        if '.delta"' not in data:
            return ()
        obj = json_object(data)
        delta = obj.get("delta") if obj is not None else None
        return (delta,) if isinstance(delta, str) else ()
    if '"choices"' not in data or data == "[DONE]":
        return ()
    obj = json_object(data)
    choices = obj.get("choices") if obj is not None else None
    out: list[str] = []
    for choice in choices if isinstance(choices, list) else ():
        if not isinstance(choice, Mapping):
            continue
        if isinstance(choice.get("text"), str):  # legacy completions
            out.append(choice["text"])
        delta = choice.get("delta")
        if not isinstance(delta, Mapping):
            continue
        for field in ("content", "refusal", "reasoning_content", "reasoning"):
            if isinstance(delta.get(field), str):
                out.append(delta[field])
        for call in delta.get("tool_calls") or ():
            fn = call.get("function") if isinstance(call, Mapping) else None
            if isinstance(fn, Mapping):
                out += [v for v in (fn.get("name"), fn.get("arguments")) if isinstance(v, str)]
    return out


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
    if event.event not in ("content_block_delta", "") or '"delta"' not in event.data:
        return ()
    obj = json_object(event.data)
    delta = obj.get("delta") if obj is not None and obj.get("type") == "content_block_delta" else None
    if not isinstance(delta, Mapping):
        return ()
    return [
        delta[f] for f in ("text", "thinking", "partial_json", "citation") if isinstance(delta.get(f), str)
    ]


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
    reservation covers. `on_event` takes each event as it completes."""

    def __init__(self, kit: StreamKit, info: RequestInfo, factor: Decimal) -> None:
        self.kit = kit
        self.api = info.api
        self.limit = info.max_output_tokens * max(1, info.tool_rounds)
        self.counted = 0
        self._encode = tokens.encoding(tokens.encoding_name_for(info.model)).encode_ordinary
        self._factor = factor

    def on_event(self, event: Event) -> None:
        for text in self.kit.output_texts(self.api, event):
            if text:
                n = len(self._encode(text))
                if self._factor != 1:
                    n = math.ceil(n * self._factor)
                self.counted += max(1, n)

    def running(self, reported: Usage | None) -> int:
        """Output so far: the larger of the count and what the stream reported."""
        return max(self.counted, reported.output_tokens if reported is not None else 0)

    def over(self, reported: Usage | None) -> bool:
        return self.running(reported) > self.limit


def count_factor(model: str, script_margins: Mapping[str, Decimal]) -> Decimal:
    """How much to multiply tiktoken's count of `model`'s output by so that it errs high: 1 where
    tiktoken is exact; else the widest script margin times the model's tokenizer factor."""
    if tokens.is_exact(model):
        return Decimal(1)
    widest = max(script_margins.values(), default=Decimal(1))
    return widest * tokens.tokenizer_factor(model)
