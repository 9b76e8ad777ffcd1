"""The engine: read a request, admit it (check, price, reserve), and finish it (settle).

`read_request` is pure. `admit` and `finish` write the ledger and must run on the ledger's
thread. Nothing here knows mitmproxy.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from governance import (
    admission,
    fees,
    gate,
    identity,
    money,
    regional,
    server_tools,
    tokens,
    wire,
)
from governance import policy as policies
from governance.errors import PricingError, RequestParseError
from governance.gate import Incoming, Verdict
from governance.hosts import UNKNOWN_ENTRY
from governance.identity import Credentials, Identity
from governance.ledger import RequestRecord
from governance.matching import lookup_model
from governance.policy import Policy
from governance.pricing import Pricer, context_window
from governance.scopes import Scopes
from governance.store import LedgerStore
from governance.types import (
    UNBOUNDED,
    Decision,
    Endpoint,
    Priced,
    Refusal,
    RequestInfo,
    Usage,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReadRequest:
    """A metered request, understood: what to decide on, and the body to forward if changed."""

    info: RequestInfo
    forward_body: dict[str, Any] | None  # None: forward the original bytes untouched
    body: Mapping[str, Any] | None = None  # the request as the client sent it


class Engine:
    """Decides on requests under one policy and records them in one ledger."""

    def __init__(self, policy: Policy, ledger: LedgerStore, *, dry_run: bool = False, salt: str = "") -> None:
        self.policy = policy
        self.ledger = ledger
        self.dry_run = dry_run
        self.salt = salt  # the ledger's, for hashing upstream API keys into principals
        self.scopes = Scopes(policy)
        self.hosts = policies.host_table(policy.hosts)
        self.pricer = Pricer(policy)
        # Operator hosts with prices of their own (a self-hosted model) price with them first.
        self._host_pricers = {e.name: Pricer(policy, e.settings) for e in self.hosts.entries if e.settings}
        self._providers = {e.name: e.provider for e in self.hosts.entries}
        self.fees = fees.shipped()
        self.regional = regional.shipped()
        self._looping_models = server_tools.shipped().looping_models
        # LLM-shaped requests to unknown hosts (`unknown_llm_hosts: meter`): a provider genai-prices
        # does not know, so the rules' own prices decide.
        self._providers[UNKNOWN_ENTRY] = UNKNOWN_ENTRY
        self._image_formulas = {
            model: formula.model_dump(exclude_none=True)
            for model, formula in policy.image_formula_table().items()
        }

    # -- screening and reading (pure) ---------------------------------------------------------

    def identify(self, creds: Credentials) -> Identity | Refusal:
        """Who sends a request, under the rules' keys: see `governance.identity`."""
        return identity.identify(creds, self.scopes, salt=self.salt, require_key=self.policy.require_key)

    def screen(self, incoming: Incoming) -> Verdict:
        """What happens to a request before pricing: see `governance.gate`."""
        return gate.screen(incoming, self.policy, self.hosts)

    def screen_connect(self, names: Sequence[str], port: int | None) -> Refusal | None:
        """The refusal of a CONNECT tunnel, or None: see `gate.connect_refusal`."""
        return gate.connect_refusal(names, port, self.policy, self.hosts)

    def screen_raw(self, names: Sequence[str], port: int | None, protocol: str) -> Refusal | None:
        """The refusal of a raw (non-HTTP) connection, or None: see `gate.raw_transport_refusal`."""
        return gate.raw_transport_refusal(names, port, self.policy, self.hosts, protocol)

    def output_cap(
        self, model: str, requested: int | None, *, input_tokens: int = 0, provider: str = ""
    ) -> tuple[int, str]:
        """The output cap to reserve for, per choice, and where it came from: the request's own;
        else the model's maximum output from the rules' table; else what its context window
        (genai-prices) leaves after the input; else `estimate.default_max_output_tokens`."""
        if requested is not None:
            return requested, "request"
        found = lookup_model(self.policy.output_cap_table(), model)
        if found is not None:
            return found[1], "model_table"
        window = context_window(provider, model) if provider else None
        if window is not None and window > input_tokens:
            return window - input_tokens, "context_window"
        if self.policy.estimate.default_max_output_tokens is not None:
            return self.policy.estimate.default_max_output_tokens, "default"
        raise RequestParseError(
            f"the request sets no output cap, model '{model}' is not in the output-cap table and its "
            f"context window is unknown; set max_tokens, or add the model to the rules' model_limits"
        )

    def read_request(
        self,
        endpoint: Endpoint,
        body: Mapping[str, Any],
        *,
        principal: str,
        request_id: str,
        betas: Sequence[str] = (),
        key_id: str | None = None,
    ) -> ReadRequest:
        """Understand a metered request. Raises `RequestParseError` when it cannot be metered."""
        family = wire.FAMILIES[endpoint.family]
        parsed = family.parse_request(endpoint.api, body)
        provider = self._providers.get(endpoint.entry) or family.PROVIDER
        estimate = tokens.estimate_input(
            parsed.prompt,
            parsed.model,
            image_tokens=self.policy.estimate.image_tokens,
            image_formulas=self._image_formulas,
            script_margins=self.policy.estimate.script_margins,
        )
        margin = self.policy.estimate.input_margin
        counted = estimate.tokens + parsed.provider_prompt_tokens
        input_tokens = int((counted * margin).to_integral_value(rounding="ROUND_CEILING"))
        # A document that cannot be read is bounded like input kept on the provider's side: by
        # the model's context window, or refused.
        server_input = "; ".join(r for r in (parsed.server_input, *estimate.unbounded) if r) or None
        cap, source = self.output_cap(
            parsed.model, parsed.max_output_tokens, input_tokens=input_tokens, provider=provider
        )
        assume = self.policy.estimate.server_tool_uses
        loop = server_tools.tool_loop(
            endpoint.family, endpoint.api, body, parsed.model, assume=assume, looping=self._looping_models
        )
        refuse = self.policy.estimate.unbounded_tool_calls == "refuse"
        refuse_loop = loop is not None and loop.assumed and refuse
        searches = parsed.web_searches
        if searches == UNBOUNDED:  # a search tool with no bound: at most every call of its loop
            searches = loop.calls if loop is not None else assume
        forward = family.prepare_request(endpoint.api, body, parsed)
        if loop is not None and loop.assumed and not refuse_loop:
            # The provider enforces the calls reserved for: the assumed bound goes into the request.
            bounded = server_tools.with_bound(endpoint.family, endpoint.api, forward or body, assume)
            forward = bounded if bounded is not None else forward
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
            service_tier=self._service_tier(parsed.service_tier),
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
        )
        return ReadRequest(info, forward, body)

    def _service_tier(self, requested: str | None) -> str | None:
        """The tier to reserve at. `auto` (or none) is served at the project's own default tier,
        which the rules declare (`estimate.auto_service_tier`, `default` unless said)."""
        if requested in (None, "auto"):
            return self.policy.estimate.auto_service_tier
        return requested

    def forward_body(self, read: ReadRequest, decision: Decision, family: str) -> dict[str, Any] | None:
        """The body to forward for an admitted request: the family's own preparation, with the
        output cap the decision injects. None: forward the original bytes untouched."""
        if decision.output_cap is None:
            return read.forward_body
        base = read.forward_body if read.forward_body is not None else read.body
        assert base is not None
        return wire.FAMILIES[family].with_output_cap(read.info.api, base, decision.output_cap)

    def _pricer_for(self, info: RequestInfo) -> Pricer:
        return self._host_pricers.get(info.host_entry, self.pricer)

    def _worst_case(self, info: RequestInfo, max_output_tokens: int, now: datetime) -> Priced:
        """The most `info` can cost with `max_output_tokens` per round: every round of a server
        tool loop generates output (its input is already summed over rounds), at the regional
        uplift wherever it could apply, plus the per-call fee of the rules' fee table."""

        def worst(searches: int) -> Priced:
            return self._pricer_for(info).worst_case(
                info.provider,
                info.model,
                input_tokens=info.input_tokens,
                max_output_tokens=max_output_tokens * info.tool_rounds,
                now=now,
                cache_write_hint=info.cache_write_hint,
                service_tier=info.service_tier,
                speed=info.speed,
                web_searches=searches,
                audio_output=info.audio_output,
                audio_input=info.audio_input,
            )

        uplift = self.regional.uplift(
            info.provider, info.model, info.host, info.inference_geo, reserving=True
        )
        fee = self.fees.fee_for(info.provider, info.model)
        return regional.surcharged(worst, info.web_searches, uplift, fee)

    # -- admitting (ledger thread) ------------------------------------------------------------

    def _record(
        self, info: RequestInfo, price_source: str | None = None, *, injected: int | None = None
    ) -> RequestRecord:
        return RequestRecord(
            request_id=info.request_id,
            principal=info.principal,
            provider=info.provider,
            api=info.api,
            model=info.model,
            stream=info.stream,
            est_input_tokens=info.input_tokens,
            max_output_tokens=info.max_output_tokens,
            price_source=price_source,
            requested_output_tokens=info.requested_output_tokens,
            injected_output_tokens=injected,
        )

    def refuse(self, rec: RequestRecord, refusal: Refusal, now: datetime) -> Decision:
        """Record a refusal made before any reservation. In dry run, record it and let it pass."""
        if self.dry_run:
            logger.warning("dry run: would refuse %s (%s): %s", rec.request_id, refusal.rule, refusal.message)
            self.ledger.record_refusal(
                rec, now, rule=refusal.rule, reason=refusal.message, decision="dry_run"
            )
            return Decision(allowed=True, refusal=refusal)
        self.ledger.record_refusal(rec, now, rule=refusal.rule, reason=refusal.message)
        return Decision(allowed=False, refusal=refusal)

    def counter_request(self, read: ReadRequest, family: str) -> tuple[str, dict[str, Any]] | None:
        """`(path suffix, body)` of the provider's free input-token counter for `read`, or None."""
        if read.body is None or self.dry_run:
            return None
        return wire.FAMILIES[family].count_request(read.info.api, read.body)

    def with_counted_input(self, info: RequestInfo, counted: int) -> RequestInfo:
        """`info` with the provider's own count of its input. The count is itself an estimate
        ("may differ by a small amount"), so it is reserved with `estimate.counter_margin`."""
        margin = self.policy.estimate.counter_margin
        return replace(info, input_tokens=int((counted * margin).to_integral_value(rounding="ROUND_CEILING")))

    def admit(self, info: RequestInfo, now: datetime, *, count_may_help: bool = False) -> Decision:
        """Check the rules, price the worst case and reserve it against every budget, atomically
        (`governance.admission`; pricing runs outside the ledger's transactions).

        `count_may_help`: the provider has a free input counter for this request. A budget
        refusal that the exact count could turn around (the request fits at the estimate's lower
        end) is then returned unrecorded, with `hinges_on_count`, for the caller to ask the
        counter and admit again."""
        return admission.admit(self, info, now, count_may_help=count_may_help)

    # -- finishing (ledger thread) ------------------------------------------------------------

    def _price_usage(self, info: RequestInfo, usage: Usage, now: datetime) -> Priced:
        # Price by the model the upstream says it ran (a dated id, or what a router picked),
        # falling back to the requested model when that name is unknown.
        if usage.model and usage.model != info.model:
            try:
                return self._settled_price(info, usage.model, usage, now)
            except PricingError:
                pass
        return self._settled_price(info, info.model, usage, now)

    def _settled_price(self, info: RequestInfo, model: str, usage: Usage, now: datetime) -> Priced:
        """`usage` on `model` at the geo the response reports (else the one the request named),
        with the fee table's per-call fee."""
        pricer = self._pricer_for(info)

        def price(searches: int) -> Priced:
            return pricer.price(info.provider, model, replace(usage, web_searches=searches), now)

        geo = usage.inference_geo or info.inference_geo
        uplift = self.regional.uplift(info.provider, model, info.host, geo, reserving=False)
        return regional.surcharged(price, usage.web_searches, uplift, self.fees.fee_for(info.provider, model))

    def finish(
        self,
        info: RequestInfo,
        usage: Usage | None,
        now: datetime,
        *,
        outcome: str,
        upstream_ran: bool = True,
    ) -> None:
        """Settle a reservation. Real usage is priced and charged; without usage, the hold is
        released if the upstream never ran the request, and charged in full otherwise (a
        provider bills a stream that was cut before its usage event)."""
        if usage is not None:
            try:
                priced = self._price_usage(info, usage, now)
            except PricingError:
                logger.error(
                    "cannot price usage of %s on %s; charging its reservation", info.request_id, info.model
                )
                self.ledger.charge_reservation(info.request_id, now, outcome=f"{outcome}:unpriced")
                return
            micro, rest = money.split(priced.cost)  # exact: see governance.money
            self.ledger.settle(
                info.request_id,
                micro,
                now,
                outcome=outcome,
                usage=usage,
                price_source=priced.source,
                cost_submicro=rest,
            )
        elif upstream_ran:
            self.ledger.charge_reservation(info.request_id, now, outcome=outcome)
        else:
            self.ledger.release(info.request_id, now, outcome=outcome)
