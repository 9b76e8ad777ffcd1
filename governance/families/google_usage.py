"""Google's usage, as `GenerateContentResponse.usageMetadata` reports it, whole or streamed.

Billed (as genai-prices' google extractor reads it): input = `promptTokenCount` (cached content
included) + `toolUsePromptTokenCount`; cache reads = `cachedContentTokenCount`; output =
`candidatesTokenCount` + `thoughtsTokenCount` (thoughts are outside the candidates' count).
Streamed counts are cumulative and every chunk may carry them: the last chunk's stand, once a
chunk has ended the answer (a candidate's `finishReason`, or a blocked prompt); a stream cut
before that has no usage (its reservation is charged). Code Assist wraps each answer in
`{"response": {...}}`. A stream is SSE with `alt=sse`, else a JSON array; the reader tells
which from the body's first byte, whatever the request asked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from governance.families.common import counter_answer, json_object, token_count
from governance.families.jsonarray import JsonArrayReader
from governance.families.sse import Event, SSEParser
from governance.types import Usage


def _modality(details: Any, modality: str) -> int:
    """The tokens of `modality` in a `*TokensDetails` list."""
    if not isinstance(details, list):
        return 0
    return sum(
        token_count(d, "tokenCount")
        for d in details
        if isinstance(d, Mapping) and d.get("modality") == modality
    )


def read_usage(meta: Any, model: str | None) -> Usage | None:
    """Usage from a `usageMetadata`, or None unless it has a prompt count."""
    if not isinstance(meta, Mapping) or not isinstance(meta.get("promptTokenCount"), int):
        return None
    total_input = token_count(meta, "promptTokenCount") + token_count(meta, "toolUsePromptTokenCount")
    output = token_count(meta, "candidatesTokenCount") + token_count(meta, "thoughtsTokenCount")
    audio_in = _modality(meta.get("promptTokensDetails"), "AUDIO") + _modality(
        meta.get("toolUsePromptTokensDetails"), "AUDIO"
    )
    return Usage(
        input_tokens=total_input,
        output_tokens=output,
        cache_read_tokens=min(token_count(meta, "cachedContentTokenCount"), total_input),
        model=model,
        input_audio_tokens=min(audio_in, total_input),
        output_audio_tokens=min(_modality(meta.get("candidatesTokensDetails"), "AUDIO"), output),
    )


def _unwrapped(obj: Any) -> Mapping[str, Any] | None:
    """A response, unwrapped from Code Assist's `response` where it is wrapped."""
    if not isinstance(obj, Mapping):
        return None
    if "usageMetadata" not in obj and isinstance(obj.get("response"), Mapping):
        return obj["response"]  # type: ignore[no-any-return]
    return obj


def _answer_usage(obj: Mapping[str, Any] | None) -> Usage | None:
    """Usage of one (unwrapped) answer: a whole response or a stream chunk."""
    if obj is None:
        return None
    version = obj.get("modelVersion")
    usage = read_usage(obj.get("usageMetadata"), version if isinstance(version, str) else None)
    searches = _searches(obj.get("candidates"))
    return replace(usage, web_searches=searches) if usage is not None and searches else usage


def _searches(candidates: Any) -> int:
    """Google Search queries a grounded answer ran (at least one per grounded candidate)."""
    if not isinstance(candidates, list):
        return 0
    total = 0
    for c in candidates:
        grounding = c.get("groundingMetadata") if isinstance(c, Mapping) else None
        if isinstance(grounding, Mapping):
            queries = grounding.get("webSearchQueries")
            total += max(len(queries) if isinstance(queries, list) else 0, 1)
    return total


def ends_answer(obj: Mapping[str, Any] | None) -> bool:
    """Whether a chunk ends the answer: a candidate with a `finishReason`, or a blocked prompt."""
    if obj is None:
        return False
    feedback = obj.get("promptFeedback")
    if isinstance(feedback, Mapping) and feedback.get("blockReason"):
        return True
    candidates = obj.get("candidates")
    return isinstance(candidates, list) and any(
        isinstance(c, Mapping) and c.get("finishReason") for c in candidates
    )


def usage_from_body(api: str, body: Any) -> Usage | None:
    """Usage from a whole answer: one response, or a buffered stream's JSON array (as a stream
    is read), or None when it carries none."""
    if isinstance(body, list):
        reader = StreamUsage(api)
        for item in body:
            reader.on_chunk(item)
        return reader.usage
    return _answer_usage(_unwrapped(body))


class StreamUsage:
    """Reads usage off a streamed answer's bytes, SSE or a JSON array, at any split: the last
    chunk's usage (cumulative counts) stands. A `StreamReader` (it frames the bytes itself)."""

    def __init__(self, api: str) -> None:
        self.api = api
        self._last: Usage | None = None
        self._ended = False
        self._sse: SSEParser | None = None
        self._array: JsonArrayReader | None = None

    def feed(self, chunk: bytes) -> None:
        if self._sse is None and self._array is None:
            head = chunk.lstrip()
            if not head:
                return  # whitespace before the first byte tells nothing yet
            chunk = head
            if head.startswith(b"["):
                self._array = JsonArrayReader()
            else:
                self._sse = SSEParser()
        if self._array is not None:
            for item in self._array.feed(chunk):
                self.on_chunk(item)
        else:
            assert self._sse is not None
            for event in self._sse.feed(chunk):
                self.on_event(event)

    def close(self) -> None:
        if self._sse is not None:
            for event in self._sse.close():
                self.on_event(event)

    @property
    def usage(self) -> Usage | None:
        """The answer's usage once it has ended, else None."""
        return self._last if self._ended else None

    def on_event(self, event: Event) -> None:
        # Cheap filter first: most chunks are text; only those with usage or an end are decoded.
        if '"usageMetadata"' in event.data or "finishReason" in event.data or "blockReason" in event.data:
            self.on_chunk(json_object(event.data))

    def on_chunk(self, chunk: Any) -> None:
        """One decoded chunk of the answer."""
        obj = _unwrapped(chunk)
        found = _answer_usage(obj)
        if found is not None:
            self._last = found
        self._ended = self._ended or ends_answer(obj)


def stream_reader(api: str) -> StreamUsage:
    """A reader of a streamed answer's usage, framing the bytes itself."""
    return StreamUsage(api)


#: `:countTokens` answers `{"totalTokens": N, ...}` (Code Assist's too).
read_counter_response = counter_answer("totalTokens")
