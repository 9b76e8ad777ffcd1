"""What a rules file would have done to recorded traffic: `spendfuse simulate`.

Each recorded request (`Recorded`, translated from a flow file by `governance.mitm.recording`) is
screened, identified, read, admitted and settled by a real `Engine` over a temporary ledger, in
time order: a request is admitted at the time it was sent, and settled at the time its response
ended, so requests that overlapped in the recording hold their reservations against each other
as they did live. Nothing is sent anywhere: every settlement is priced from the usage the
recording carries (the response body, or the usage a spendfuse proxy noted in the flow's
metadata when it streamed the body past without keeping it).

A request the rules admit but the recording has no answer for (it was refused when recorded,
or failed) is charged its reservation, the upper bound of what it could have cost: a simulation
never guesses low. Pure of mitmproxy; the caller feeds records in the order the file holds them
and `Simulation` puts them in time order within a bounded window (`reorder_window`).
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from governance import money, refusals, settlement, wire
from governance.engine import Engine
from governance.errors import PricingError, RequestParseError
from governance.gate import Action, Incoming
from governance.identity import Credentials, Identity
from governance.settlement import ResponseFacts, Settlement
from governance.types import Refusal, RequestInfo, RequestLine, Usage


@dataclass(frozen=True)
class Recorded:
    """One recorded request and what answered it, as plain values."""

    flow_id: str
    started: datetime
    ended: datetime
    incoming: Incoming
    creds: Credentials
    line: RequestLine
    body: Any  # the decoded JSON body, or a `RequestParseError` naming why it could not be read
    response: ResponseFacts | None  # None: nothing answered it (refused when recorded, or failed)
    usage: Usage | None = None  # usage noted in the flow's metadata (a body streamed past)
    principal: str | None = None  # the principal the recording proxy noted (its key headers are gone)
    reached: bool = True  # the request can have reached its upstream


@dataclass(frozen=True)
class Unreadable:
    """A flow that could not be turned into a `Recorded`: named and counted, never dropped."""

    flow_id: str
    reason: str


@dataclass
class ScopeRunOut:
    """When a rule first refused a request, and how many it refused."""

    rule: str
    first: datetime
    message: str
    refused: int = 0


@dataclass
class Report:
    """What the rules would have done to the recording."""

    flows: int = 0
    metered: int = 0
    admitted: int = 0
    not_metered: int = 0  # passed or free (token counters, reads, hosts that are not LLM APIs)
    recorded_cost: Decimal = Decimal(0)  # the recording's metered requests, priced from their usage
    unpriced: int = 0  # metered requests whose recorded usage could not be priced
    spent: Decimal = Decimal(0)  # what the ledger charged under these rules
    reserved: Decimal = Decimal(0)  # what was reserved for the admitted requests
    billed: Decimal = Decimal(0)  # what the admitted requests were billed (from recorded usage)
    reserved_billed: Decimal = Decimal(0)  # what was reserved for those same requests
    charged_unanswered: int = 0  # admitted with no recorded answer: charged their reservation
    refusals: dict[str, ScopeRunOut] = field(default_factory=dict)
    refused_ids: list[tuple[str, str]] = field(default_factory=list)  # (flow id, rule), time order
    unreadable: list[Unreadable] = field(default_factory=list)
    by_model: Counter[str] = field(default_factory=Counter)

    def as_json(self) -> dict[str, Any]:
        """The report as JSON-ready values (money as decimal strings)."""
        return {
            "flows": self.flows,
            "metered": self.metered,
            "admitted": self.admitted,
            "refused": len(self.refused_ids),
            "not_metered": self.not_metered,
            "recorded_cost_usd": str(self.recorded_cost),
            "spent_usd": str(self.spent),
            "reserved_usd": str(self.reserved),
            "billed_usd": str(self.billed),
            "reserved_for_billed_usd": str(self.reserved_billed),
            "unpriced": self.unpriced,
            "charged_unanswered": self.charged_unanswered,
            "refusals": [
                {
                    "rule": r.rule,
                    "first_refused": r.first.isoformat(),
                    "refused": r.refused,
                    "message": r.message,
                }
                for r in sorted(self.refusals.values(), key=lambda r: r.first)
            ],
            "refused_requests": [{"flow": f, "rule": r} for f, r in self.refused_ids],
            "unreadable": [{"flow": u.flow_id, "reason": u.reason} for u in self.unreadable],
        }


@dataclass(order=True)
class _Open:
    ended: datetime
    seq: int
    info: RequestInfo = field(compare=False)
    family: str = field(compare=False)
    record: Recorded = field(compare=False)
    reserved: Decimal = field(compare=False)


class Simulation:
    """Runs records through `engine` (whose ledger is the simulation's own) in time order."""

    def __init__(self, engine: Engine, *, reorder_window: int = 512) -> None:
        self.engine = engine
        self.report = Report()
        self.reorder_window = reorder_window
        self._waiting: list[tuple[datetime, int, Recorded]] = []  # read, not yet admitted
        self._open: list[_Open] = []  # admitted, not yet settled
        self._seq = itertools.count()
        self._ids: set[str] = set()

    def run(self, records: Iterable[Recorded | Unreadable]) -> Report:
        """Feed every record, settle what is open, and return the report."""
        for record in records:
            self.feed(record)
        return self.finish()

    def feed(self, record: Recorded | Unreadable) -> None:
        """One record, in file order. A flow file holds flows in the order they ended, so a
        request is admitted once `reorder_window` later records have been read (or at the end)."""
        self.report.flows += 1
        if isinstance(record, Unreadable):
            self.report.unreadable.append(record)
            return
        if record.flow_id in self._ids:
            # A flow saved twice (a replay, files joined) is a request of its own each time.
            record = replace(record, flow_id=f"{record.flow_id}~{self.report.flows}")
        self._ids.add(record.flow_id)
        heapq.heappush(self._waiting, (record.started, next(self._seq), record))
        while len(self._waiting) > self.reorder_window:
            self._admit(heapq.heappop(self._waiting)[2])

    def finish(self) -> Report:
        while self._waiting:
            self._admit(heapq.heappop(self._waiting)[2])
        self._settle_until(None)
        return self.report

    # -- one request ---------------------------------------------------------------------------

    def _admit(self, record: Recorded) -> None:
        self._settle_until(record.started)
        engine, report = self.engine, self.report
        verdict = engine.screen(record.incoming)
        if verdict.action is Action.REFUSE:
            assert verdict.refusal is not None
            self._refused(record, verdict.refusal)
            return
        if verdict.action is not Action.METER:
            report.not_metered += 1
            return
        endpoint = verdict.endpoint
        assert endpoint is not None
        report.metered += 1
        who = self._identify(record)
        if isinstance(who, Refusal):
            self._refused(record, who)
            return
        try:
            if isinstance(record.body, RequestParseError):
                raise record.body
            family = wire.FAMILIES[endpoint.family]
            read = engine.read_request(
                endpoint,
                record.body,
                principal=who.principal,
                request_id=record.flow_id,
                betas=family.price_flags(record.line.get_all),
                key_id=who.key.id if who.key else None,
                line=record.line,
            )
        except RequestParseError as e:
            self._refused(record, refusals.parse(str(e)))
            return
        usage = self._usage(read.info, endpoint.family, record)
        self._price_recorded(read.info, usage, record.ended)
        decision = engine.admit(read.info, record.started, count_may_help=usage is not None)
        if decision.hinges_on_count and usage is not None:
            # The provider's counter would have answered with the input the response reports.
            info = engine.with_counted_input(read.info, usage.input_tokens)
            decision = engine.admit(info, record.started)
        else:
            info = read.info
        if not decision.allowed:
            assert decision.refusal is not None
            self._refused(record, decision.refusal)
            return
        report.admitted += 1
        report.reserved += decision.reserved
        report.by_model[info.model] += 1
        heapq.heappush(
            self._open, _Open(record.ended, next(self._seq), info, endpoint.family, record, decision.reserved)
        )

    def _identify(self, record: Recorded) -> Identity | Refusal:
        """The caller: by the recording's credentials, else by the principal its proxy noted (a
        spendfuse proxy strips key headers and virtual keys before a flow is saved)."""
        who = self.engine.identify(record.creds)
        noted = record.principal
        if isinstance(who, Identity) and who.key is None and noted and noted != who.principal:
            key = (
                self.engine.scopes.keys.get(noted.removeprefix("key:")) if noted.startswith("key:") else None
            )
            return Identity(noted, key)
        return who

    def _usage(self, info: RequestInfo, family: str, record: Recorded) -> Usage | None:
        if record.usage is not None:
            return record.usage
        if record.response is None:
            return None
        return settlement.response_usage(info, family, record.response)

    def _price_recorded(self, info: RequestInfo, usage: Usage | None, when: datetime) -> None:
        """What the recording cost: this request priced from its recorded usage, admitted or not."""
        if usage is None:
            return
        try:
            self.report.recorded_cost += settlement.price_usage(self.engine, info, usage, when).cost
        except PricingError:
            self.report.unpriced += 1

    def _refused(self, record: Recorded, refusal: Refusal) -> None:
        seen = self.report.refusals.get(refusal.rule)
        if seen is None:
            seen = self.report.refusals[refusal.rule] = ScopeRunOut(
                refusal.rule, record.started, refusal.message
            )
        seen.refused += 1
        self.report.refused_ids.append((record.flow_id, refusal.rule))

    # -- settling ------------------------------------------------------------------------------

    def _settle_until(self, when: datetime | None) -> None:
        while self._open and (when is None or self._open[0].ended <= when):
            self._settle(heapq.heappop(self._open))

    def _settle(self, held: _Open) -> None:
        engine, record = self.engine, held.record
        if record.usage is not None:
            s = Settlement(held.info, record.usage, "settled from the recording's usage", upstream_ran=True)
        elif record.response is not None:
            s = engine.read_response(held.info, held.family, record.response)
        else:
            # Admitted here, but nothing answered it in the recording: its bill is unknown, so
            # the reservation (an upper bound) is charged, unless it never reached the upstream.
            self.report.charged_unanswered += 1
            s = Settlement(held.info, None, "no recorded answer", upstream_ran=record.reached)
        engine.settle(s, held.ended)
        row = engine.ledger.request(held.info.request_id) or {}
        cost = money.to_usd(row.get("cost_micro") or 0, row.get("cost_submicro") or 0)
        self.report.spent += cost
        if s.usage is not None:
            self.report.billed += cost
            self.report.reserved_billed += held.reserved
