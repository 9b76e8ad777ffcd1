"""Decision records: the plain facts of what spendfuse decided about one request, for everything
that shows decisions (a flow's mark, comment and metadata; the JSON decision log; the metrics).

Pure, and nothing here knows mitmproxy. The engine and the proxy side fill a `Record` at each
decision; `flow_facts` turns the records of one flow into the versioned dict saved with it
(`flow.metadata["spendfuse"]`), `comment` into the line mitmweb shows, and `MARKS` names the
mark. Principals are the ledger's (a key's id, a proxy user's name, a salted hash of an API
key): never a secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from governance.store import RequestRecord
from governance.types import Decision, Refusal, RequestInfo

#: The version of the flow metadata and of the JSON decision log (rules/decision-log.schema.json).
SCHEMA_VERSION = 1

#: Decision -> the mark its flow gets (an emoji name mitmweb and the console render).
MARKS: dict[str, str] = {
    "refused": ":no_entry:",
    "admitted": ":white_check_mark:",
    "unmetered_allowed": ":warning:",
    "free": ":heavy_check_mark:",
    "dry_run": ":large_orange_diamond:",
}

#: What is known of a request when a decision is made about it (None: nothing yet).
About = RequestRecord | RequestInfo | None

#: The events a request's life is made of (plus `reaped`, which names no request).
EVENTS = ("admitted", "refused", "dry_run", "free", "unmetered_allowed", "settled", "released", "reaped")


@dataclass(frozen=True)
class Settled:
    """What settling a reservation did: `settled` (charged `cost`, its priced usage), `charged`
    (charged the whole reservation: no usage, or settling failed) or `released` (nothing)."""

    kind: str
    outcome: str
    cost: Decimal | None = None

    def charged(self, reserved: Decimal) -> Decimal:
        """The USD this settlement charged, given the reservation it settled."""
        if self.kind == "released":
            return Decimal(0)
        return self.cost if self.cost is not None else reserved


@dataclass(frozen=True)
class Record:
    """One decision. `event` is one of `EVENTS`; money in USD (exact Decimals)."""

    event: str
    request_id: str | None = None
    principal: str | None = None
    provider: str | None = None
    api: str | None = None
    model: str | None = None
    rule: str | None = None  # the rule that refused it, or the tightest budget that admitted it
    code: str | None = None  # a refusal's code in the provider's envelope
    kind: str | None = None  # a refusal's kind (budget, rate, policy, ...)
    reserved: Decimal | None = None
    cost: Decimal | None = None
    outcome: str | None = None  # how a settlement came about (usage, upstream_error_500, ...)
    count: int | None = None  # reaped: how many holds were charged

    def fields(self) -> dict[str, Any]:
        """The record as JSON-ready values (money as decimal strings), None fields left out."""
        out: dict[str, Any] = {"event": self.event}
        for name in (
            "request_id",
            "principal",
            "provider",
            "api",
            "model",
            "rule",
            "code",
            "kind",
            "outcome",
        ):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.reserved is not None:
            out["reserved_usd"] = usd_text(self.reserved)
        if self.cost is not None:
            out["cost_usd"] = usd_text(self.cost)
        if self.count is not None:
            out["count"] = self.count
        return out


def usd_text(amount: Decimal) -> str:
    """USD as a decimal string, never in exponent form, trailing zeros kept to micro-dollars."""
    if amount == amount.quantize(Decimal("0.000001")):
        return f"{amount:.6f}"
    return f"{amount:f}"


def flow_facts(record: Record, before: dict[str, Any] | None = None) -> dict[str, Any]:
    """The versioned facts a flow carries after `record`: a settlement adds its cost and outcome
    to the admission's facts (`before`); any other record starts them afresh."""
    if record.event in ("settled", "released") and before:
        facts = dict(before)
        facts["settled"] = record.event
        if record.cost is not None:
            facts["cost_usd"] = usd_text(record.cost)
        if record.outcome is not None:
            facts["outcome"] = record.outcome
        return facts
    facts = {"v": SCHEMA_VERSION, "decision": record.event, **record.fields()}
    del facts["event"]
    return facts


def comment(facts: dict[str, Any]) -> str:
    """One line for mitmweb's comment: the decision, its rule, the reservation, the settled cost."""
    parts = [f"spendfuse: {facts['decision'].replace('_', ' ')}"]
    if facts.get("rule"):
        parts.append(f"rule {facts['rule']}")
    if facts.get("model"):
        parts.append(f"model {facts['model']}")
    if "reserved_usd" in facts:
        parts.append(f"reserved ${facts['reserved_usd']}")
    if "cost_usd" in facts:
        how = f" ({facts['outcome']})" if facts.get("outcome") else ""
        parts.append(
            f"{'released' if facts.get('settled') == 'released' else 'settled'} ${facts['cost_usd']}{how}"
        )
    elif facts.get("decision") == "refused" and facts.get("code"):
        parts.append(f"code {facts['code']}")
    return "; ".join(parts)


def refused(refusal: Refusal, about: About, *, provider: str | None, dry_run: bool = False) -> Record:
    """The record of a refusal (`dry_run`: one that was let pass). `about` is what is known of
    the request (a `RequestRecord` or `RequestInfo`; None: nothing yet)."""
    return Record(
        "dry_run" if dry_run else "refused",
        **{**_request(about), "provider": getattr(about, "provider", None) or provider},
        rule=refusal.rule,
        code=refusal.code,
        kind=refusal.kind.value,
    )


def admitted(info: RequestInfo, decision: Decision) -> Record:
    """The record of a reservation (in dry run, of one the rules would have refused)."""
    would = decision.refusal
    return Record(
        "dry_run" if would is not None else "admitted",
        **_request(info),
        rule=would.rule if would is not None else decision.binding,
        code=would.code if would is not None else None,
        kind=would.kind.value if would is not None else None,
        reserved=decision.reserved,
    )


def settled(info: RequestInfo, reserved: Decimal, done: Settled) -> Record:
    """The record of a settlement of `info`'s reservation of `reserved` USD."""
    return Record(
        "released" if done.kind == "released" else "settled",
        **_request(info),
        reserved=reserved,
        cost=done.charged(reserved),
        outcome=done.outcome,
    )


def _request(about: About) -> dict[str, Any]:
    """The request fields of a record, from what is known of the request."""
    return {
        name: getattr(about, name, None) for name in ("request_id", "principal", "provider", "api", "model")
    }
