"""The priced facts of a Bedrock request: the model from its path, the rest from its body.

InvokeModel bodies are model-native. Anthropic's (`anthropic_version: bedrock-2023-05-31`) are
read by the Anthropic family's own parser; other vendors' native bodies are refused, since each
names its output cap in a field of its own (Converse meters every vendor in one shape).
Converse bodies: `messages`, `system`, `toolConfig` are prompt, `inferenceConfig.maxTokens` the
output cap (absent: the model's maximum, from the rules' table).

Nothing here may ever ask to change the request: it is SigV4-signed over its bytes. What cannot
be bounded without changing it (a server tool with no `max_uses`) is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from governance import bedrock_ids
from governance.errors import RequestParseError
from governance.families import anthropic
from governance.families.common import any_mapping, optional_int, require_model
from governance.types import NO_LINE, UNBOUNDED, ParsedRequest, RequestLine

#: Request headers that change the price in ways the price data does not model: refused.
UNPRICED_HEADERS = {
    "x-amzn-bedrock-performanceconfig-latency": "standard",
    "x-amzn-bedrock-service-tier": "default",
}
_CONVERSE_PROMPT_KEYS = ("system", "messages", "toolConfig", "additionalModelRequestFields")


#: The API each runtime action of a path is.
_API_OF = {
    "invoke": "invoke",
    "invoke-with-response-stream": "invoke_stream",
    "converse": "converse",
    "converse-stream": "converse_stream",
}


def model_of(api: str, body: Mapping[str, Any], line: RequestLine) -> str:
    """The model a request names: in its path, whose action must be the API it was routed to; a
    body's `model` only where there is no path (a request known by its body alone, in tests)."""
    if not line.path:
        return require_model(body)
    model, action = bedrock_ids.model_in_path(line.path)
    if _API_OF.get(action) != api:
        raise RequestParseError(f"the path {line.path[:200]!r} is not a Bedrock {api} request")
    return model


def _refuse_unpriced_variants(line: RequestLine, body: Mapping[str, Any]) -> None:
    for header, plain in UNPRICED_HEADERS.items():
        for value in line.get_all(header):
            if value.strip().lower() != plain:
                raise RequestParseError(
                    f"spendfuse cannot price Bedrock's `{header}: {value}` (its price is not in the "
                    "price data); send the request without it"
                )
    latency = body.get("performanceConfig")
    if latency is not None and latency != {"latency": "standard"}:
        raise RequestParseError(
            "spendfuse cannot price Bedrock's latency-optimized inference (`performanceConfig`)"
        )
    tier = body.get("serviceTier")
    if tier is not None and tier != {"type": "default"}:
        raise RequestParseError(
            "spendfuse cannot price a Bedrock service tier other than the default (`serviceTier`)"
        )


def _refuse_long_context(body: Any) -> None:
    """Bedrock bills Claude's 1M-token context (`anthropic_beta: ["context-1m-..."]`, in the body)
    at long-context rates the price data does not carry for Bedrock: refused, not under-priced."""
    betas = body.get("anthropic_beta") if isinstance(body, Mapping) else None
    if isinstance(betas, list) and any(
        isinstance(b, str) and b.strip().lower().startswith("context-1m") for b in betas
    ):
        raise RequestParseError(
            "spendfuse cannot price Bedrock's 1M-token context (`anthropic_beta: context-1m`): its "
            "long-context rates are not in the price data"
        )


def parse_invoke(api: str, body: Mapping[str, Any], line: RequestLine = NO_LINE) -> ParsedRequest:
    """An InvokeModel request: Anthropic's native body on the model the path names."""
    model = model_of(api, body, line)
    _refuse_unpriced_variants(line, body)
    _refuse_long_context(body)
    vendor = bedrock_ids.parts(model)
    anthropic_body = isinstance(body.get("anthropic_version"), str)
    if (vendor is None and not anthropic_body) or (vendor is not None and vendor[0] != "anthropic"):
        raise RequestParseError(
            f"spendfuse meters Bedrock's InvokeModel for Anthropic models only, not {model!r}: its "
            "native body names its output cap in a field of its own. Use the Converse API "
            "(/converse, /converse-stream), which spendfuse meters for every model."
        )
    parsed = anthropic.parse_request("messages", {**body, "model": model})
    if parsed.web_searches == UNBOUNDED:
        raise RequestParseError(
            "a Bedrock request is signed, so spendfuse cannot write a bound into it: give its web "
            "search tool a `max_uses`"
        )
    return replace(parsed, model=model, stream=api == "invoke_stream", speed=None)


def _cache_hint(body: Mapping[str, Any]) -> str | None:
    """ "5m" (or "1h") when a `cachePoint` asks Bedrock to write the prompt to its cache."""
    points: list[Mapping[str, Any]] = []

    def is_point(node: Mapping[str, Any]) -> bool:
        if isinstance(node.get("cachePoint"), Mapping):
            points.append(node["cachePoint"])
        return False  # walk everything

    any_mapping([body.get(k) for k in _CONVERSE_PROMPT_KEYS], is_point)
    if not points:
        return None
    return "1h" if any(p.get("ttl") == "1h" for p in points) else "5m"


def _stored_input(body: Mapping[str, Any]) -> str | None:
    """Why part of the input lives on AWS's side (an S3 object), beyond what is counted here."""
    found = any_mapping([body.get(k) for k in _CONVERSE_PROMPT_KEYS], lambda n: "s3Location" in n)
    return "a document or image in S3 (s3Location)" if found else None


def parse_converse(api: str, body: Mapping[str, Any], line: RequestLine = NO_LINE) -> ParsedRequest:
    """A Converse request: any vendor's model, in Bedrock's own shape."""
    model = model_of(api, body, line)
    _refuse_unpriced_variants(line, body)
    _refuse_long_context(body.get("additionalModelRequestFields"))
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise RequestParseError("`messages` must be a list")
    config = body.get("inferenceConfig", {})
    if not isinstance(config, Mapping):
        raise RequestParseError("`inferenceConfig` must be an object")
    fees = ("bedrock guardrail",) if body.get("guardrailConfig") is not None else ()
    return ParsedRequest(
        model=model,
        max_output_tokens=optional_int(config, "maxTokens", minimum=1),
        choices=1,
        stream=api == "converse_stream",
        prompt=tuple(body[k] for k in _CONVERSE_PROMPT_KEYS if body.get(k) is not None),
        cache_write_hint=_cache_hint(body),
        server_input=_stored_input(body),
        unpriced_fees=fees,
    )


def with_converse_cap(body: Mapping[str, Any], cap: int) -> dict[str, Any]:
    config = body.get("inferenceConfig")
    return {**body, "inferenceConfig": {**(config if isinstance(config, Mapping) else {}), "maxTokens": cap}}
