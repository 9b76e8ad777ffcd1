"""Reading a metered request: what it asks for, as the engine decides on it (pure).

`read_request` turns a decoded body into a `RequestInfo` (model, input estimate with its margins,
output cap, tiers, server tools) and the body to forward when the family's preparation or a tool
bound changes it. Nothing here writes the ledger or knows mitmproxy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from governance import deployments, regional, server_tools, tokens, wire
from governance.errors import RequestParseError
from governance.matching import lookup_model
from governance.pricing import context_window
from governance.types import NO_LINE, UNBOUNDED, Decision, Endpoint, ParsedRequest, RequestInfo, RequestLine
from governance.usage_rules import injects_stream_usage, legacy_cap

if TYPE_CHECKING:
    from governance.engine import Engine


@dataclass(frozen=True)
class ReadRequest:
    """A metered request, understood: what to decide on, and the body to forward if changed."""

    info: RequestInfo
    forward_body: dict[str, Any] | None  # None: forward the original bytes untouched
    body: Mapping[str, Any] | None = None  # the request as the client sent it
    legacy_cap: bool = False  # an output cap written into it goes in `max_tokens` (the host's rule)


def output_cap(
    engine: Engine, model: str, requested: int | None, *, input_tokens: int = 0, provider: str = ""
) -> tuple[int, str]:
    """The output cap to reserve for, per choice, and where it came from: the request's own;
    else the model's maximum output from the rules' table; else what its context window
    (genai-prices) leaves after the input; else `estimate.default_max_output_tokens`."""
    if requested is not None:
        return requested, "request"
    policy = engine.policy
    found = lookup_model(policy.output_cap_table(), model)
    if found is not None:
        return found[1], "model_table"
    window = context_window(provider, model) if provider else None
    if window is not None and window > input_tokens:
        return window - input_tokens, "context_window"
    if policy.estimate.default_max_output_tokens is not None:
        return policy.estimate.default_max_output_tokens, "default"
    raise RequestParseError(
        f"the request sets no output cap, model '{model}' is not in the output-cap table and its "
        f"context window is unknown; set max_tokens, or add the model to the rules' model_limits"
    )


def read_request(
    engine: Engine,
    endpoint: Endpoint,
    body: Mapping[str, Any],
    *,
    principal: str,
    request_id: str,
    betas: Sequence[str] = (),
    key_id: str | None = None,
    line: RequestLine = NO_LINE,
    now: datetime | None = None,
) -> ReadRequest:
    """Understand a metered request from its body and its path and headers (`line`). Raises
    `RequestParseError` when it cannot be metered."""
    family = wire.FAMILIES[endpoint.family]
    parsed = family.parse_request(endpoint.api, body, line)
    provider = engine.providers.get(endpoint.entry) or family.PROVIDER
    parsed = _deployed(engine, endpoint, parsed, key_id, provider, now)
    input_tokens, server_input = _input_tokens(engine, parsed)
    cap, source = output_cap(
        engine, parsed.model, parsed.max_output_tokens, input_tokens=input_tokens, provider=provider
    )
    forward = _prepared(engine, endpoint, body, parsed)
    loop, refuse_loop, searches, forward = _tool_loop(engine, endpoint, body, parsed, forward)
    _refuse_signed_rewrite(family, forward)
    info = RequestInfo(
        request_id=request_id,
        provider=provider,
        api=endpoint.api,
        model=parsed.model,
        principal=principal,
        key_id=key_id,
        stream=parsed.stream,
        input_tokens=input_tokens,
        max_output_tokens=cap * parsed.choices,
        output_cap_source=source,
        cache_write_hint=parsed.cache_write_hint,
        host_entry=endpoint.entry,
        choices=parsed.choices,
        requested_output_tokens=parsed.max_output_tokens,
        service_tier=_service_tier(engine, parsed.service_tier),
        speed=parsed.speed,
        web_searches=searches,
        audio_output=parsed.audio_output,
        audio_input=parsed.audio_input,
        server_context=parsed.server_context,
        server_input=server_input,
        unpriced_fees=parsed.unpriced_fees,
        tool_calls=None if loop is None else UNBOUNDED if refuse_loop else loop.calls,
        tool_rounds=1 if loop is None or refuse_loop else loop.rounds,
        inference_geo=regional.request_geo(body),
        host=endpoint.host,
        # Anthropic's 1M-token context is a beta the client turns on with a header.
        long_context=any(b.strip().lower().startswith("context-1m") for b in betas),
        hides_added_events=family.adds_stream_events(endpoint.api, body, forward),
        body_fixed=getattr(family, "BODY_FIXED", False),
    )
    return ReadRequest(info, forward, body, legacy_cap(engine.usage_rules.get(endpoint.entry)))


def _refuse_signed_rewrite(family: object, forward: object) -> None:
    """A signed request (`BODY_FIXED`) cannot take a bound written into it: it is refused instead."""
    if getattr(family, "BODY_FIXED", False) and forward is not None:
        raise RequestParseError(
            "this request is signed over its bytes, and spendfuse would have to change it"
        )


def _deployed(
    engine: Engine,
    endpoint: Endpoint,
    parsed: ParsedRequest,
    key_id: str | None,
    provider: str,
    now: datetime | None,
) -> ParsedRequest:
    """`parsed` with its model replaced by the one it is reserved as, where it may run as several:
    a deployment name (a family whose models are deployments) by the model the rules map it to,
    or the priciest it may run (`governance.deployments`); a request with fallbacks (OpenRouter's
    `models`) by the priciest of them all. `now`: the time whose prices rank the models (None:
    the clock's)."""
    if getattr(wire.FAMILIES[endpoint.family], "DEPLOYMENTS", False):
        key = engine.scopes.keys.get(key_id) if key_id else None
        models = deployments.candidates(engine, endpoint.host, parsed.model, key, provider)
    elif parsed.fallbacks:
        models = tuple(dict.fromkeys((parsed.model, *parsed.fallbacks)))
    else:
        return parsed
    when = now or datetime.now(UTC)

    def worst(model: str) -> Decimal:
        as_model = replace(parsed, model=model)
        tokens, _ = _input_tokens(engine, as_model)
        cap, _ = output_cap(engine, model, parsed.max_output_tokens, input_tokens=tokens, provider=provider)
        return (
            engine.pricer_at(endpoint.entry)
            .worst_case(
                provider,
                model,
                input_tokens=tokens,
                max_output_tokens=cap * parsed.choices,
                now=when,
                cache_write_hint=parsed.cache_write_hint,
            )
            .cost
        )

    return replace(parsed, model=deployments.priciest(models, worst))


def _prepared(
    engine: Engine, endpoint: Endpoint, body: Mapping[str, Any], parsed: ParsedRequest
) -> dict[str, Any] | None:
    """The family's preparation of the body (None: forward it as sent), unless the host takes
    the request only as written (`usage: {stream: sent}`)."""
    if not injects_stream_usage(engine.usage_rules.get(endpoint.entry)):
        return None
    return wire.FAMILIES[endpoint.family].prepare_request(endpoint.api, body, parsed)


def _input_tokens(engine: Engine, parsed: ParsedRequest) -> tuple[int, str | None]:
    """The input to reserve for, with the rules' margins (rounded up), and why part of it is
    kept on the provider's side or unreadable (None: all of it was counted here)."""
    estimate_rules = engine.policy.estimate
    estimate = tokens.estimate_input(
        parsed.prompt,
        parsed.model,
        image_tokens=estimate_rules.image_tokens,
        image_formulas=engine.image_formulas,
        script_margins=estimate_rules.script_margins,
    )
    counted = estimate.tokens + parsed.provider_prompt_tokens
    input_tokens = int((counted * estimate_rules.input_margin).to_integral_value(rounding="ROUND_CEILING"))
    # A document that cannot be read is bounded like input kept on the provider's side: by
    # the model's context window, or refused.
    server_input = "; ".join(r for r in (parsed.server_input, *estimate.unbounded) if r) or None
    return input_tokens, server_input


def _tool_loop(
    engine: Engine,
    endpoint: Endpoint,
    body: Mapping[str, Any],
    parsed: ParsedRequest,
    forward: dict[str, Any] | None,
) -> tuple[server_tools.ToolLoop | None, bool, int, dict[str, Any] | None]:
    """A server tool loop's bound: `(loop, refused, web searches, body to forward)`. A loop
    whose calls are only assumed is refused when the rules say so; otherwise the assumed
    bound is written into the forwarded request, so the provider enforces what was reserved."""
    estimate_rules = engine.policy.estimate
    assume = estimate_rules.server_tool_uses
    loop = server_tools.tool_loop(
        endpoint.family, endpoint.api, body, parsed.model, assume=assume, looping=engine.looping_models
    )
    refuse = estimate_rules.unbounded_tool_calls == "refuse"
    refuse_loop = loop is not None and loop.assumed and refuse
    searches = parsed.web_searches
    if searches == UNBOUNDED:  # a search tool with no bound: at most every call of its loop
        searches = loop.calls if loop is not None else assume
    if loop is not None and loop.assumed and not refuse_loop:
        # The provider enforces the calls reserved for: the assumed bound goes into the request.
        bounded = server_tools.with_bound(endpoint.family, endpoint.api, forward or body, assume)
        forward = bounded if bounded is not None else forward
    return loop, refuse_loop, searches, forward


def _service_tier(engine: Engine, requested: str | None) -> str | None:
    """The tier to reserve at. `auto` (or none) is served at the project's own default tier,
    which the rules declare (`estimate.auto_service_tier`, `default` unless said)."""
    if requested in (None, "auto"):
        return engine.policy.estimate.auto_service_tier
    return requested


def forward_body(read: ReadRequest, decision: Decision, family: str) -> dict[str, Any] | None:
    """The body to forward for an admitted request: the family's own preparation, with the
    output cap the decision injects. None: forward the original bytes untouched (always, for a
    request signed over its bytes)."""
    if decision.output_cap is None or read.info.body_fixed:
        return read.forward_body
    base = read.forward_body if read.forward_body is not None else read.body
    assert base is not None
    if read.legacy_cap and "max_completion_tokens" not in base:
        base = {**base, "max_tokens": decision.output_cap}  # so the cap is written there
    return wire.FAMILIES[family].with_output_cap(read.info.api, base, decision.output_cap)


def encoded_forward_body(read: ReadRequest) -> bytes | None:
    """The bytes of the body the family prepared, before any output cap; None: forward the
    original bytes. Raises `RequestParseError` if it cannot be written, so that the request fails
    before anything is reserved."""
    return wire.encode_json_body(read.forward_body) if read.forward_body is not None else None


def forward_bytes(read: ReadRequest, decision: Decision, family: str, prepared: bytes | None) -> bytes | None:
    """The bytes to forward for an admitted request, given `prepared` (`encoded_forward_body`):
    re-encoded only when the decision injects an output cap. None: the original bytes."""
    if decision.output_cap is None or read.info.body_fixed:
        return prepared
    return wire.encode_json_body(forward_body(read, decision, family) or {})


def counter_request(read: ReadRequest, family: str, *, dry_run: bool) -> tuple[str, dict[str, Any]] | None:
    """`(path suffix, body)` of the provider's free input-token counter for `read`, or None
    (dry run never asks: it refuses nothing, so no refusal can hinge on the count)."""
    if read.body is None or dry_run:
        return None
    return wire.FAMILIES[family].count_request(read.info.api, read.body)
