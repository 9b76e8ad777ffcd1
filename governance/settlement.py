"""Settling a reservation: what an answered, failed or abandoned request is charged.

The proxy side hands over plain facts (status, content type, body or the stream tap's usage,
whether the upstream was reached, replay); this module decides what they mean for the ledger:

- `read_response` / `read_error` / `read_shutdown` (pure) turn facts into a `Settlement`;
- `settle` (ledger thread) carries it out: real usage is priced and charged; without usage the
  hold is released if the upstream never ran the request and charged in full otherwise; when
  settling itself fails, the hold (an upper bound of the bill) is charged.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from governance import money, refusals, regional, usage_rules, wire
from governance.decisions import Settled
from governance.errors import LedgerUnavailable, PricingError
from governance.families import runaway
from governance.types import Priced, RequestInfo, Usage
from governance.wire.tap import StreamTap, read_sse_body

if TYPE_CHECKING:
    from governance.engine import Engine

logger = logging.getLogger(__name__)

SSE = "text/event-stream"
#: The price source of a settlement at the cost the provider reported (`usage: {cost: reported}`).
REPORTED = "reported:usage.cost"


@dataclass(frozen=True)
class ResponseFacts:
    """What the upstream answered, as plain values. `streamed`: the stream tap read the body as
    it passed (then `tapped` is its usage, and `body` is not needed); otherwise `body` is the
    whole decoded body. `replayed`: mitmproxy's server replay answered, not the upstream."""

    status: int
    content_type: str
    body: bytes = b""
    streamed: bool = False
    tapped: Usage | None = None
    replayed: bool = False
    headers: tuple[tuple[str, str], ...] = ()  # the response's, names lower-cased (usage in headers)

    def get_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]


@dataclass(frozen=True)
class Settlement:
    """What to do with a reservation: settle `usage` (or, without it, charge the hold when the
    upstream ran and release it when not); `charge`: charge the whole hold, as settling failed."""

    info: RequestInfo
    usage: Usage | None
    outcome: str
    upstream_ran: bool
    charge: bool = False


def is_event_stream(content_type: str) -> bool:
    """Whether a response is a server-sent event stream (where usage comes in an event)."""
    return content_type.lower().startswith(SSE)


def stream_tap(
    info: RequestInfo,
    family: str,
    content_type: str,
    content_encoding: str,
    *,
    sized: bool = False,
    margins: Mapping[str, Decimal] | None = None,
) -> StreamTap | None:
    """The tap that reads usage from an event stream (or a streamed request's answer in a type
    its family names in `STREAM_CONTENT_TYPES`) as it passes (None: not a stream; the whole body
    is read when it has arrived). Events that preparing the request added are taken
    out of what the client receives, unless the stream's bytes cannot change: compressed, or
    `sized` (a Content-Length the client holds the body to).

    With `margins` (the rules' `estimate.script_margins`), a stream of a family that has a
    stream kit (`governance.families.runaway`) is guarded: cut once its running output passes
    what its reservation covers."""
    fam = wire.FAMILIES[family]
    if _own_stream(fam, content_type):  # a binary framing of the family's own (AWS event stream)
        return StreamTap(fam.stream_reader(info.api), content_encoding)
    # A family whose streams come in another framing (Gemini's JSON array) names its types.
    other = getattr(fam, "STREAM_CONTENT_TYPES", ())
    if not is_event_stream(content_type) and not (info.stream and content_type.lower().startswith(other)):
        return None
    drop = None
    if info.hides_added_events and not sized:
        drop = functools.partial(fam.added_event, info.api)
    kit = runaway.kit(family, fam) if margins is not None and not sized else None
    if kit is None:
        return StreamTap(fam.StreamUsage(info.api), content_encoding, drop=drop)
    guard = runaway.OutputMeter(kit, info, runaway.count_factor(info.model, margins))

    def cut_event() -> bytes:  # rendered only for a stream that is cut
        refusal = refusals.runaway(guard.limit)
        return kit.error_event(info.api, refusal, fam.render_error(refusal, info.request_id)[2])

    return StreamTap(fam.StreamUsage(info.api), content_encoding, drop=drop, guard=guard, cut_event=cut_event)


def read_cut(info: RequestInfo, reason: str) -> Settlement:
    """How a stream spendfuse cut settles: at its reservation, whatever usage it reported (a
    runaway reports more than was reserved; the provider bills what it generated up to the cut,
    which the reservation covers)."""
    return Settlement(info, None, f"cut: {reason}"[:120], upstream_ran=True)


def _own_stream(fam: object, content_type: str) -> bool:
    """Whether `content_type` is the family's own stream framing (`STREAM_CONTENT_TYPE`)."""
    own = getattr(fam, "STREAM_CONTENT_TYPE", None)
    return own is not None and content_type.lower().startswith(own)


def response_usage(info: RequestInfo, family: str, facts: ResponseFacts) -> Usage | None:
    """The usage an answer reports: the tap's for a streamed one, else read from its body; with
    the usage its headers report, for a family that reports some there (`usage_with_headers`)."""
    usage = _body_usage(info, family, facts)
    with_headers = getattr(wire.FAMILIES[family], "usage_with_headers", None)
    return usage if with_headers is None else with_headers(info.api, usage, facts.get_all)


def _body_usage(info: RequestInfo, family: str, facts: ResponseFacts) -> Usage | None:
    if facts.streamed:
        return facts.tapped
    if not facts.body:
        return None
    reader = wire.FAMILIES[family]
    if _own_stream(reader, facts.content_type):
        return read_sse_body(reader.stream_reader(info.api), facts.body)
    if is_event_stream(facts.content_type):
        return read_sse_body(reader.StreamUsage(info.api), facts.body)
    try:
        body = json.loads(facts.body)
    except ValueError:
        body = None
    return reader.usage_from_body(info.api, body)


def read_response(info: RequestInfo, family: str, facts: ResponseFacts) -> Settlement:
    """How an answered request settles. A replayed answer cost no real money: released. An
    answer without usage was billed in full unless it is an error status (then it was not run)."""
    if facts.replayed:
        return Settlement(info, None, "replayed", upstream_ran=False)
    try:
        usage = response_usage(info, family, facts)
    except Exception:  # a reader's bug must not leave the hold to the reaper: charged below
        logger.exception("settling %s failed", info.request_id)
        return Settlement(info, None, "settle failed", upstream_ran=True, charge=True)
    if usage is not None:
        outcome = "usage"
    elif facts.status >= 400:
        outcome = f"upstream_error_{facts.status}"
    else:
        outcome = "no_usage"
    return Settlement(info, usage, outcome, upstream_ran=usage is not None or facts.status < 400)


def read_error(info: RequestInfo, tapped: Usage | None, *, reached: bool, error: str) -> Settlement:
    """How a request that failed (connection lost, killed) settles: the usage a stream showed,
    else its hold if the upstream was reached (it may have billed), else nothing."""
    msg = (error or "error").split("\n")[0][:80]
    outcome = f"usage; then {msg}" if tapped is not None else f"error: {msg}"
    return Settlement(info, tapped, outcome, upstream_ran=reached)


def read_shutdown(info: RequestInfo, tapped: Usage | None, *, reached: bool) -> Settlement:
    """How a request still in flight at a clean shutdown settles (rather than leave a hold for
    the next run to charge in full): as a failed one, under its own outcome."""
    outcome = "proxy shut down" + ("; usage seen" if tapped is not None else "")
    return Settlement(info, tapped, outcome, upstream_ran=reached)


def settle(engine: Engine, s: Settlement, now: datetime) -> Settled | None:
    """Carry out `s` in the engine's ledger (ledger thread), and say what it did (None: the
    hold stays, for the reaper). When settling fails for a reason other than the ledger, the
    reservation, an upper bound of the bill, is charged instead."""
    if not s.charge:
        try:
            return engine.finish(s.info, s.usage, now, outcome=s.outcome, upstream_ran=s.upstream_ran)
        except Exception:
            logger.exception("settling %s failed", s.info.request_id)
    try:
        engine.ledger.charge_reservation(s.info.request_id, now, outcome="settle failed")
    except LedgerUnavailable as e:
        logger.error("%s stays held until the reaper charges it: %s", s.info.request_id, e)
        return None
    return Settled("charged", "settle failed")


def finish(
    engine: Engine,
    info: RequestInfo,
    usage: Usage | None,
    now: datetime,
    *,
    outcome: str,
    upstream_ran: bool = True,
) -> Settled:
    """Settle a reservation, and say how. Real usage is priced and charged; without usage, the
    hold is released if the upstream never ran the request, and charged in full otherwise (a
    provider bills a stream that was cut before its usage event)."""
    ledger = engine.ledger
    if usage is None:
        if upstream_ran:
            ledger.charge_reservation(info.request_id, now, outcome=outcome)
            return Settled("charged", outcome)
        ledger.release(info.request_id, now, outcome=outcome)
        return Settled("released", outcome)
    try:
        usage, priced = billed(engine, info, usage, now)
    except PricingError:
        logger.error("cannot price usage of %s on %s; charging its reservation", info.request_id, info.model)
        ledger.charge_reservation(info.request_id, now, outcome=f"{outcome}:unpriced")
        return Settled("charged", f"{outcome}:unpriced")
    micro, rest = money.split(priced.cost)  # exact: see governance.money
    ledger.settle(
        info.request_id,
        micro,
        now,
        outcome=outcome,
        usage=usage,
        price_source=priced.source,
        cost_submicro=rest,
    )
    return Settled("settled", outcome, priced.cost)


def billed(engine: Engine, info: RequestInfo, usage: Usage, now: datetime) -> tuple[Usage, Priced]:
    """`usage` as its host bills it (`rules/`'s usage rules of OpenAI-compatible hosts) and its
    price: the cost the host reports itself (OpenRouter's `usage.cost`) where it does, else the
    usage priced. Raises `PricingError`."""
    rules = engine.usage_rules.get(info.host_entry)
    reported = None
    if rules is not None:
        usage = usage_rules.billed(rules, usage)
        reported = usage_rules.settled_cost(rules, usage)
    if reported is not None:
        return usage, Priced(reported, REPORTED)
    return usage, price_usage(engine, info, usage, now)


def price_usage(engine: Engine, info: RequestInfo, usage: Usage, now: datetime) -> Priced:
    """What `usage` of `info` costs at `now`. Raises `PricingError`."""
    # Price by the model the upstream says it ran (a dated id, or what a router picked),
    # falling back to the requested model when that name is unknown.
    if usage.model and usage.model != info.model:
        try:
            return _settled_price(engine, info, usage.model, usage, now)
        except PricingError:
            pass
    return _settled_price(engine, info, info.model, usage, now)


def _settled_price(engine: Engine, info: RequestInfo, model: str, usage: Usage, now: datetime) -> Priced:
    """`usage` on `model` at the geo the response reports (else the one the request named),
    with the fee table's per-call fee."""
    pricer = engine.pricer_for(info)

    def price(searches: int) -> Priced:
        return pricer.price(info.provider, model, replace(usage, web_searches=searches), now)

    geo = usage.inference_geo or info.inference_geo
    uplift = engine.regional.uplift(info.provider, model, info.host, geo, reserving=False)
    return regional.surcharged(price, usage.web_searches, uplift, engine.fees.fee_for(info.provider, model))
