"""The engine: read a request, admit it (check, price, reserve), and settle it.

Reading (`governance.reading`) and reading a response into a `Settlement`
(`governance.settlement`) are pure. `admit`, `settle`, `finish`, `release`, `record_refusal` and
`reap` write the ledger and must run on the ledger's thread. Nothing here knows mitmproxy.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from governance import (
    admission,
    clients,
    fees,
    gate,
    identity,
    injection,
    reading,
    refusal_codes,
    regional,
    server_tools,
    settlement,
)
from governance import policy as policies
from governance.gate import Incoming, Verdict
from governance.hosts import UNKNOWN_ENTRY
from governance.identity import Credentials, Identity
from governance.keyring import Keyring
from governance.ledger import RequestRecord
from governance.policy import Policy
from governance.pricing import Pricer
from governance.reading import ReadRequest
from governance.scopes import Scopes
from governance.store import LedgerStore
from governance.types import (
    Decision,
    Endpoint,
    Priced,
    Refusal,
    RequestInfo,
)

logger = logging.getLogger(__name__)


class Engine:
    """Decides on requests under one policy and records them in one ledger."""

    def __init__(
        self,
        policy: Policy,
        ledger: LedgerStore,
        *,
        dry_run: bool = False,
        salt: str = "",
        keyring: Keyring | None = None,
    ) -> None:
        self.policy = policy
        self.keyring = keyring or Keyring()  # the custody keys, read when the rules loaded
        self.ledger = ledger
        self.dry_run = dry_run
        self.salt = salt  # the ledger's, for hashing upstream API keys into principals
        self.scopes = Scopes(policy)
        self.hosts = policies.host_table(policy.hosts)
        self.pricer = Pricer(policy)
        # Operator hosts with prices of their own (a self-hosted model) price with them first.
        self._host_pricers = {e.name: Pricer(policy, e.settings) for e in self.hosts.entries if e.settings}
        self.providers = {e.name: e.provider for e in self.hosts.entries}
        # Hosts whose usage reports differ from OpenAI's (governance.usage_rules), by entry name.
        self.usage_rules = {e.name: e.usage for e in self.hosts.entries if e.usage is not None}
        # Custody keys go only to the shipped hosts of their own provider, never an operator's.
        self.custody_hosts = {
            e.name: e.provider
            for e in self.hosts.entries
            if e.provider is not None and not e.operator and e.custody
        }
        # Entries whose names are customers' resources: a key goes only to a host it names.
        self.customer_hosts = frozenset(e.name for e in self.hosts.entries if e.customer_hosts)
        self.fees = fees.shipped()
        self.regional = regional.shipped()
        self.looping_models = server_tools.shipped().looping_models
        # Clients that need refusals shaped their own way: the rules' own first.
        self.refusal_clients = (*policy.refusal_clients, *clients.shipped())
        # LLM-shaped requests to unknown hosts (`unknown_llm_hosts: meter`): a provider genai-prices
        # does not know, so the rules' own prices decide.
        self.providers[UNKNOWN_ENTRY] = UNKNOWN_ENTRY
        self.image_formulas = {
            model: formula.model_dump(exclude_none=True)
            for model, formula in policy.image_formula_table().items()
        }

    # -- screening and reading (pure) ---------------------------------------------------------

    def identify(self, creds: Credentials) -> Identity | Refusal:
        """Who sends a request, under the rules' keys: see `governance.identity`."""
        who = identity.identify(creds, self.scopes, salt=self.salt, require_key=self.policy.require_key)
        return self._coded(who) if isinstance(who, Refusal) else who

    def _coded(self, refusal: Refusal) -> Refusal:
        """The refusal with the status the rules' `refusal_codes` give it (see governance.refusal_codes)."""
        return refusal_codes.bifrost_status(refusal) if self.policy.refusal_codes == "bifrost" else refusal

    def custody(
        self, endpoint: Endpoint, model: str | None, who: Identity, *, has_api_key: bool, tls: bool = True
    ) -> injection.Plan | Refusal:
        """Which custody key a request is sent with, or its refusal: see `governance.injection`."""
        if not self.keyring and self.policy.custody == "optional" and not who.virtual_api_key:
            return injection.UNTOUCHED  # no custody in these rules: nothing to decide
        return injection.plan(
            self.keyring,
            self.policy.custody,
            self.custody_hosts,
            endpoint,
            model,
            who,
            has_api_key,
            tls,
            self.customer_hosts,
        )

    def screen(self, incoming: Incoming) -> Verdict:
        """What happens to a request before pricing: see `governance.gate`."""
        return gate.screen(incoming, self.policy, self.hosts)

    def screen_connect(self, names: Sequence[str], port: int | None) -> Refusal | None:
        """The refusal of a CONNECT tunnel, or None: see `gate.connect_refusal`."""
        return gate.connect_refusal(names, port, self.policy, self.hosts)

    def screen_raw(self, names: Sequence[str], port: int | None, protocol: str) -> Refusal | None:
        """The refusal of a raw (non-HTTP) connection, or None: see `gate.raw_transport_refusal`."""
        return gate.raw_transport_refusal(names, port, self.policy, self.hosts, protocol)

    # Understanding a request (pure): see `governance.reading`.
    read_request = reading.read_request
    forward_body = staticmethod(reading.forward_body)
    encoded_forward_body = staticmethod(reading.encoded_forward_body)
    forward_bytes = staticmethod(reading.forward_bytes)

    def pricer_for(self, info: RequestInfo) -> Pricer:
        """Operator hosts with prices of their own (a self-hosted model) price with them first."""
        return self.pricer_at(info.host_entry)

    def pricer_at(self, entry: str) -> Pricer:
        """The pricer of requests to host entry `entry`."""
        return self._host_pricers.get(entry, self.pricer)

    def _worst_case(self, info: RequestInfo, max_output_tokens: int, now: datetime) -> Priced:
        """The most `info` can cost with `max_output_tokens` per round: every round of a server
        tool loop generates output (its input is already summed over rounds), at the regional
        uplift wherever it could apply, plus the per-call fee of the rules' fee table."""

        def worst(searches: int) -> Priced:
            return self.pricer_for(info).worst_case(
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
        return Decision(allowed=False, refusal=self._coded(refusal))

    def counter_request(self, read: ReadRequest, family: str) -> tuple[str, dict[str, Any]] | None:
        """`(path suffix, body)` of the provider's free input-token counter for `read`, or None."""
        return reading.counter_request(read, family, dry_run=self.dry_run)

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
        decision = admission.admit(self, info, now, count_may_help=count_may_help)
        if decision.refusal is None or self.policy.refusal_codes == "provider":
            return decision
        return replace(decision, refusal=self._coded(decision.refusal))

    # -- settling (ledger thread) -------------------------------------------------------------

    # Pure: how an answered, failed or abandoned request settles (see `governance.settlement`).
    read_response = staticmethod(settlement.read_response)
    read_error = staticmethod(settlement.read_error)
    read_shutdown = staticmethod(settlement.read_shutdown)
    # Ledger thread: carry a settlement out (`settle`), or settle given usage (`finish`).
    finish = settlement.finish
    settle = settlement.settle

    def release(self, request_id: str, now: datetime, *, outcome: str) -> None:
        """Drop a hold that was never forwarded (or refused after all): nothing was billed."""
        self.ledger.release(request_id, now, outcome=outcome)

    def record_refusal(self, rec: RequestRecord, refusal: Refusal, now: datetime) -> None:
        """Record a refusal made before any reservation (in dry run, as one that was let pass)."""
        decision = "dry_run" if self.dry_run else "refused"
        self.ledger.record_refusal(rec, now, rule=refusal.rule, reason=refusal.message, decision=decision)

    def reap(self, now: datetime) -> int:
        """Charge holds older than the rules' `hold_ttl_seconds` (left by a crash); how many."""
        return self.ledger.reap(now, self.policy.ledger.hold_ttl_seconds)

    def housekeep(self) -> None:
        """Idle housekeeping (ledger thread): checkpoint the ledger's log when it is due."""
        self.ledger.checkpoint_if_due()

    def close(self) -> None:
        """Close the ledger (ledger thread); the engine is not used after."""
        self.ledger.close()
