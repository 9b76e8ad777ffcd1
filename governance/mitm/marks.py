"""A flow shows what spendfuse decided about it, in mitmproxy's own conventions: a mark (an
emoji name mitmweb and the console render), a comment naming the rule, the reservation and the
settled cost, and the same facts, versioned, in `flow.metadata["spendfuse"]`, which `-w` saves
and mitmweb's detail view shows. The facts come from the engine's records
(`governance.decisions`); this module only writes them on the flow."""

from decimal import Decimal

from mitmproxy import http

from governance import decisions
from governance.decisions import About, Record, Settled
from governance.observe import Observers
from governance.types import Decision, Endpoint, Refusal, RequestInfo

KEY = "spendfuse"


def show(flow: http.HTTPFlow, record: Record) -> None:
    """Write `record` on `flow`: a settlement adds to the admission's facts, any other record
    replaces them."""
    before = flow.metadata.get(KEY)
    facts = decisions.flow_facts(record, before if isinstance(before, dict) else None)
    flow.metadata[KEY] = facts
    flow.marked = decisions.MARKS.get(facts["decision"], ":default:")
    flow.comment = decisions.comment(facts)


def decided(flow: http.HTTPFlow | None, record: Record, observers: Observers) -> None:
    """Show a decision: on its flow (if it has one), and to the sinks the operator turned on."""
    if flow is not None:
        show(flow, record)
    if observers:
        observers.emit(record)


def refused(
    flow: http.HTTPFlow,
    endpoint: Endpoint | None,
    refusal: Refusal,
    about: About,
    observers: Observers,
    *,
    dry_run: bool = False,
) -> None:
    """A refusal (`dry_run`: one let pass); `about`: what is known of the request."""
    provider = endpoint.family if endpoint else None
    decided(flow, decisions.refused(refusal, about, provider=provider, dry_run=dry_run), observers)


def let_through(
    flow: http.HTTPFlow,
    endpoint: Endpoint,
    request_id: str,
    principal: str,
    unmetered: bool,
    observers: Observers,
) -> None:
    """A request let through unreserved: free (a model list, a token count) or unmetered by the
    rules' `allow_unmetered`."""
    record = Record(
        "unmetered_allowed" if unmetered else "free",
        request_id=request_id,
        principal=principal,
        provider=endpoint.family,
        api=endpoint.api,
    )
    decided(flow, record, observers)


def settled(
    flow: http.HTTPFlow,
    info: RequestInfo,
    decision: Decision | None,
    done: Settled | None,
    observers: Observers,
) -> None:
    """A settlement (`done` None: none was made, the hold stays for the reaper)."""
    if done is not None:
        reserved = decision.reserved if decision is not None else Decimal(0)
        decided(flow, decisions.settled(info, reserved, done), observers)
