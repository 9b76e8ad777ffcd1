"""What OpenAI-compatible hosts add to OpenAI's usage object, read wherever it appears.

Each reader takes a field only its provider sends, so reading it on every host is harmless:
whether a host's reported cost or separate reasoning count is *believed* is the host entry's
`usage:` rule (`governance.usage_rules`), never decided here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from governance.errors import RequestParseError
from governance.families.common import token_count


def cache_hits(usage: Mapping[str, Any], details: str) -> int:
    """Cached input tokens: OpenAI's `cached_tokens` in `details`, else DeepSeek's
    `prompt_cache_hit_tokens` (DeepSeek reports hits and misses instead; its hits are the
    tokens billed at the cache-read price)."""
    cached = token_count(usage, details, "cached_tokens")
    return cached or token_count(usage, "prompt_cache_hit_tokens")


def reasoning_tokens(usage: Mapping[str, Any]) -> int:
    """The reasoning tokens a Chat Completions usage reports beside `completion_tokens`
    (`completion_tokens_details.reasoning_tokens`): part of them on OpenAI, on top of them on xAI.
    (The Responses API's `output_tokens` include reasoning everywhere, xAI's too, so its count is
    not read.)"""
    return token_count(usage, "completion_tokens_details", "reasoning_tokens")


def reported_cost(usage: Mapping[str, Any]) -> Decimal | None:
    """The USD cost a usage reports (OpenRouter's `usage.cost`, in credits of one USD each),
    as an exact Decimal of the JSON number's text; None when absent or not a finite,
    non-negative number."""
    cost = usage.get("cost")
    if isinstance(cost, bool) or not isinstance(cost, (int, float, Decimal)):
        return None
    if isinstance(cost, float) and not math.isfinite(cost):
        return None
    try:
        # repr of a float is the shortest text that reads back as it: the JSON number as sent.
        value = Decimal(repr(cost)) if isinstance(cost, float) else Decimal(cost)
    except InvalidOperation:
        return None
    return value if value.is_finite() and value >= 0 else None


def fallback_models(body: Mapping[str, Any]) -> tuple[str, ...]:
    """The other models a request lets the host route it to (OpenRouter's `models` list): it may
    be billed as any of them. Raises `RequestParseError` for a list that is not model names."""
    models = body.get("models")
    if models is None:
        return ()
    if not isinstance(models, list) or not all(isinstance(m, str) and m.strip() for m in models):
        raise RequestParseError("`models` must be a list of model names")
    if len(models) > MAX_FALLBACKS:
        raise RequestParseError(f"`models` lists {len(models)} models; at most {MAX_FALLBACKS} are metered")
    return tuple(m.strip() for m in models)


#: OpenRouter takes a few fallbacks; a longer list is refused rather than priced model by model.
MAX_FALLBACKS = 16


def plugins(body: Mapping[str, Any]) -> tuple[str, ...]:
    """Plugins a request turns on (OpenRouter's `plugins`: web search, file parsing), each billed
    per use at prices spendfuse does not model."""
    found = body.get("plugins")
    if not isinstance(found, list):
        return ()
    ids = [p.get("id") for p in found if isinstance(p, Mapping)]
    return tuple(f"plugin {i if isinstance(i, str) else '?'}" for i in ids) or (("plugins",) if found else ())


def chunk_usage(chunk: Mapping[str, Any]) -> Any:
    """A streamed chat chunk's usage: `usage`, else Groq's `x_groq.usage` (where Groq has put the
    final chunk's usage)."""
    usage = chunk.get("usage")
    if isinstance(usage, Mapping):
        return usage
    extra = chunk.get("x_groq")
    return extra.get("usage") if isinstance(extra, Mapping) else None
