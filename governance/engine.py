"""The engine: read a request, admit it (check, price, reserve), and finish it (settle).

`read_request` is pure. `admit` and `finish` write the ledger and must run on the ledger's
thread. Nothing here knows mitmproxy.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from governance import checks, gate, tokens, wire
from governance import policy as policies
from governance.errors import PricingError, RequestParseError
from governance.gate import Incoming, Verdict
from governance.ledger import Ledger, RequestRecord
from governance.matching import lookup_model
from governance.policy import Policy
from governance.pricing import Pricer
from governance.types import (
    Decision,
    Endpoint,
    Priced,
    Refusal,
    RefusalKind,
    RequestInfo,
    Usage,
    from_micro,
    to_micro,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReadRequest:
    """A metered request, understood: what to decide on, and the body to forward if changed."""

    info: RequestInfo
    forward_body: dict[str, Any] | None  # None: forward the original bytes untouched


def parse_refusal(message: str) -> Refusal:
    return Refusal(
        rule="request_parse",
        code="invalid_request",
        kind=RefusalKind.INVALID,
        message=f"spendfuse: cannot meter this request: {message}",
    )


def unpriced_refusal(e: PricingError) -> Refusal:
    return Refusal(
        rule="pricing", code="model_not_priced", kind=RefusalKind.INVALID, message=f"spendfuse: refused: {e}"
    )


class Engine:
    """Decides on requests under one policy and records them in one ledger."""

    def __init__(self, policy: Policy, ledger: Ledger, *, dry_run: bool = False) -> None:
        self.policy = policy
        self.ledger = ledger
        self.dry_run = dry_run
        self.hosts = policies.host_table(policy.hosts)
        self.pricer = Pricer(policy)
        # Operator hosts with prices of their own (a self-hosted model) price with them first.
        self._host_pricers = {e.name: Pricer(policy, e.settings) for e in self.hosts.entries if e.settings}
        self._providers = {e.name: e.provider for e in self.hosts.entries}

    # -- screening and reading (pure) ---------------------------------------------------------

    def screen(self, incoming: Incoming) -> Verdict:
        """What happens to a request before pricing: see `governance.gate`."""
        return gate.screen(incoming, self.policy, self.hosts)

    def screen_connect(self, names: Sequence[str], port: int | None) -> Refusal | None:
        """The refusal of a CONNECT tunnel, or None: see `gate.connect_refusal`."""
        return gate.connect_refusal(names, port, self.policy, self.hosts)

    def screen_raw(self, names: Sequence[str], port: int | None, protocol: str) -> Refusal | None:
        """The refusal of a raw (non-HTTP) connection, or None: see `gate.raw_transport_refusal`."""
        return gate.raw_transport_refusal(names, port, self.policy, self.hosts, protocol)

    def output_cap(self, model: str, requested: int | None) -> tuple[int, str]:
        """The output cap to reserve for, per choice, and where it came from."""
        if requested is not None:
            return requested, "request"
        found = lookup_model(self.policy.output_cap_table(), model)
        if found is not None:
            return found[1], "model_table"
        if self.policy.estimate.default_max_output_tokens is not None:
            return self.policy.estimate.default_max_output_tokens, "default"
        raise RequestParseError(
            f"the request sets no output cap and model '{model}' is not in the output-cap table; "
            f"set max_tokens, or add the model to the rules' model_limits"
        )

    def read_request(
        self, endpoint: Endpoint, body: Mapping[str, Any], *, principal: str, request_id: str
    ) -> ReadRequest:
        """Understand a metered request. Raises `RequestParseError` when it cannot be metered."""
        family = wire.FAMILIES[endpoint.family]
        parsed = family.parse_request(endpoint.api, body)
        cap, source = self.output_cap(parsed.model, parsed.max_output_tokens)
        estimate = tokens.estimate_input_tokens(
            parsed.prompt, parsed.model, image_tokens=self.policy.estimate.image_tokens
        )
        margin = self.policy.estimate.input_margin
        info = RequestInfo(
            request_id=request_id,
            provider=self._providers.get(endpoint.entry) or family.PROVIDER,
            api=endpoint.api,
            model=parsed.model,
            principal=principal,
            stream=parsed.stream,
            input_tokens=int((estimate * margin).to_integral_value(rounding="ROUND_CEILING")),
            max_output_tokens=cap * parsed.choices,
            output_cap_source=source,
            cache_write_hint=parsed.cache_write_hint,
            host_entry=endpoint.entry,
        )
        return ReadRequest(info, family.prepare_request(endpoint.api, body, parsed))

    def _pricer_for(self, info: RequestInfo) -> Pricer:
        return self._host_pricers.get(info.host_entry, self.pricer)

    # -- admitting (ledger thread) ------------------------------------------------------------

    def _record(self, info: RequestInfo, price_source: str | None = None) -> RequestRecord:
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

    def admit(self, info: RequestInfo, now: datetime) -> Decision:
        """Check the rules, price the worst case and reserve it against every budget, atomically."""
        refusal = checks.stateless_checks(info, self.policy)
        if refusal is not None and not self.dry_run:
            return self.refuse(self._record(info), refusal, now)
        try:
            worst = self._pricer_for(info).worst_case(
                info.provider,
                info.model,
                input_tokens=info.input_tokens,
                max_output_tokens=info.max_output_tokens,
                cache_write_hint=info.cache_write_hint,
            )
        except PricingError as e:
            return self.refuse(self._record(info), unpriced_refusal(e), now)
        amount = to_micro(worst.cost)
        claims = checks.budget_claims(self.policy, info, amount, now)
        result = self.ledger.reserve(
            self._record(info, worst.source),
            claims,
            amount,
            now,
            enforce=not self.dry_run,
            decision="dry_run" if refusal is not None else "allowed",
            rule=refusal.rule if refusal else None,
            reason=refusal.message if refusal else None,
        )
        if result.blocking is not None:
            budget = checks.budget_refusal(result.blocking, result.settled_micro, result.held_micro)
            if not result.granted:
                return Decision(allowed=False, refusal=budget)
            logger.warning("dry run: would refuse %s: %s", info.request_id, budget.message)
            refusal = refusal or budget
        elif refusal is not None:
            logger.warning(
                "dry run: would refuse %s (%s): %s", info.request_id, refusal.rule, refusal.message
            )
        return Decision(allowed=True, reserved=from_micro(amount), refusal=refusal)

    # -- finishing (ledger thread) ------------------------------------------------------------

    def _price_usage(self, info: RequestInfo, usage: Usage) -> Priced:
        # Price by the model the upstream says it ran (a dated id, or what a router picked),
        # falling back to the requested model when that name is unknown.
        if usage.model and usage.model != info.model:
            try:
                return self._pricer_for(info).price(info.provider, usage.model, usage)
            except PricingError:
                pass
        return self._pricer_for(info).price(info.provider, info.model, usage)

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
                priced = self._price_usage(info, usage)
            except PricingError:
                logger.error(
                    "cannot price usage of %s on %s; charging its reservation", info.request_id, info.model
                )
                self.ledger.charge_reservation(info.request_id, now, outcome=f"{outcome}:unpriced")
                return
            self.ledger.settle(
                info.request_id,
                to_micro(priced.cost),
                now,
                outcome=outcome,
                usage=usage,
                price_source=priced.source,
            )
        elif upstream_ran:
            self.ledger.charge_reservation(info.request_id, now, outcome=outcome)
        else:
            self.ledger.release(info.request_id, now, outcome=outcome)
