"""The ledger as a storage protocol: the only counter of spend, whatever holds it.

A `LedgerStore` has storage verbs only: reserve all of a request's claims or none, settle,
release, charge, reap, record a refusal; totals and anchors; operator adjustments; the context
sizes providers keep; and the reads the operator commands need. Pricing never runs inside a
store's write transaction: the admission (`governance.admission`) reads the room a refused
reservation reports, computes what fits outside, and reserves again under the same all-or-none
check, so a lost race is refused or retried, never overspent.

Every store keeps the same promises, tested by one contract suite (tests/test_store_contract.py):
spend plus holds never pass a limit, across every process sharing the store; `totals` always
equals the sum of its claims; money is exact (`governance.money`); every verb takes `now`.
`governance.store.sqlite.SqliteStore` is the SQLite store.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from governance import money
from governance.types import Claim, Usage


def iso(now: datetime) -> str:
    """A fixed-width UTC timestamp, so text order is time order."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    # isoformat is ~20x cheaper than strftime, and this runs twice per request.
    return now.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


@dataclass(frozen=True)
class RequestRecord:
    """The facts recorded about a request when it is admitted or refused."""

    request_id: str
    principal: str
    provider: str | None = None
    api: str | None = None
    model: str | None = None
    stream: bool = False
    est_input_tokens: int | None = None
    max_output_tokens: int | None = None
    price_source: str | None = None
    requested_output_tokens: int | None = None  # the request's own cap, per choice; None: it set none
    injected_output_tokens: int | None = None  # the cap spendfuse wrote into it, per choice


@dataclass(frozen=True)
class Refit:
    """A request made to fit the room left in its windows: a smaller amount, and its record."""

    amount_micro: int
    rec: RequestRecord


@dataclass(frozen=True)
class Room:
    """What a reservation's windows had left when it was checked: the least micro-USD left in
    its budgets and the fewest output tokens left under token limits that count output (None
    where no such limit applies)."""

    usd: int | None
    output_tokens: int | None


@dataclass(frozen=True)
class ReserveResult:
    """Whether the holds were written, and the first claim that did not fit (with its window's
    spend and holds, in the claim's unit) when one did not: refused, or in dry run held regardless."""

    granted: bool
    blocking: Claim | None = None
    settled: int = 0  # the blocking window's spend, in its unit (whole micro-USD for money)
    held: int = 0  # its holds, in its unit
    settled_rest: int = 0  # money: the spend's rest below a micro-dollar, in atto-USD (governance.money)
    refit: Refit | None = None  # set by the admission when the request was made to fit
    room: int | None = None  # the least room left in the claims' USD windows, when refused
    remaining_micro: int | None = None  # granted: USD left in the tightest budget after the hold
    binding: str | None = None  # that budget's rule
    output_room: int | None = None  # refused: the fewest output tokens left (see `Room`)
    recorded: bool = True  # refused: whether the refusal was written


@dataclass(frozen=True)
class WindowTotals:
    """A window's spend and holds, in its counter's unit (whole micro-USD for money, plus the
    spend's rest below a micro-dollar in atto-USD)."""

    settled: int
    held: int
    settled_rest: int = 0

    @property
    def used(self) -> int:
        """Spend plus holds, rounded up: what a whole amount must fit beside (money.used_micro)."""
        return money.used_micro(self.settled, self.settled_rest, self.held)


#: Decides, inside a reservation that a claim did not fit, whether to write the refusal now
#: (True) or leave it unwritten for the caller to try again, from the first claim that did not
#: fit and the room seen; it must be cheap and never price.
RecordRefusal = bool | Callable[[Claim, Room], bool]


class LedgerStore(Protocol):
    """The storage verbs the engine, the addon and the operator commands use."""

    def reserve(
        self,
        rec: RequestRecord,
        claims: Sequence[Claim],
        reserved_micro: int,
        now: datetime,
        *,
        enforce: bool = True,
        decision: str = "allowed",
        rule: str | None = None,
        reason: str | None = None,
        record_refusal: RecordRefusal = True,
    ) -> ReserveResult:
        """Resolve each claim's window, then hold every claim or none, in one transaction."""
        ...

    def record_refusal(
        self, rec: RequestRecord, now: datetime, *, rule: str, reason: str | None, decision: str = "refused"
    ) -> None: ...

    def settle(
        self,
        request_id: str,
        cost_micro: int,
        now: datetime,
        *,
        outcome: str,
        usage: Usage | None = None,
        price_source: str | None = None,
        cost_submicro: int = 0,
    ) -> bool: ...

    def release(self, request_id: str, now: datetime, *, outcome: str) -> bool: ...

    def charge_reservation(self, request_id: str, now: datetime, *, outcome: str) -> bool: ...

    def reap(self, now: datetime, ttl_seconds: int) -> int: ...

    def salt(self) -> str: ...

    def reset(self, counters: Sequence[str], now: datetime, *, who: str, note: str | None = None) -> None: ...

    def topup(
        self, counter: str, amount_micro: int, now: datetime, *, who: str, note: str | None = None
    ) -> None: ...

    def resolve_window(self, claim: Claim, now: datetime) -> Claim: ...

    def context_tokens(self, ids: Sequence[str]) -> dict[str, int]: ...

    def window_totals(self, scope: str, window_start: str) -> WindowTotals: ...

    def request(self, request_id: str) -> dict[str, Any] | None: ...

    # -- the operator's reads (rows as dicts; money sums exact: `money.summed(row, "cost")`) -----

    def requests_by_state(self) -> list[dict[str, Any]]: ...

    def spend_by_model(self, since: str | None = None) -> list[dict[str, Any]]: ...

    def spend_by_day(self, since: str | None = None) -> list[dict[str, Any]]: ...

    def spend_by_principal_and_day(self, since: str | None = None) -> list[dict[str, Any]]: ...

    def budget_claims_over_time(self, since: str | None = None) -> list[dict[str, Any]]: ...

    def refusals_by_rule(self, since: str | None = None) -> list[dict[str, Any]]: ...

    def spend_by_rules_table(self, since: str | None = None) -> list[dict[str, Any]]: ...

    def input_estimates(self, since: str | None = None) -> list[dict[str, Any]]: ...

    # -- housekeeping --------------------------------------------------------------------------

    def checkpoint_if_due(self) -> bool: ...

    def check_file(self) -> None: ...

    def close(self) -> None: ...
