"""The `LedgerStore` verbs every store shares, written once: a reservation's arguments gathered
and its decision taken (`holds.decide`), and the three ways a hold finishes. A store supplies
its transactions: `_reserve` and `_finish`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from governance import money
from governance.store import RecordRefusal, RequestRecord, ReserveResult
from governance.store.holds import Finish, Reservation
from governance.types import Claim, Usage


class StoreVerbs:
    """reserve, settle, release and charge_reservation over a store's `_reserve` and `_finish`."""

    #: Resolve the windows, read their totals and `holds.decide`, in one transaction.
    _reserve: Callable[[Reservation], ReserveResult]
    #: Finish a hold as told, in one transaction; False if it had already finished.
    _finish: Callable[[Finish], bool]

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
        """Check every claim and hold them all, or none, in one transaction.

        With `enforce`, the first claim (in the order given) whose window's settled + held +
        amount would pass its limit refuses the request: a `refused` row is written and nothing
        is held. Without it (dry run) everything is held and the would-be refusal is only reported.
        A refusal reports the room its windows had left (`room`, `output_room`).

        `record_refusal`: False, or a callable that answers False for the room seen, writes
        nothing for a refusal (`recorded=False`): the caller may try again (made to fit the room,
        or with the provider's own input count) and records the outcome then."""
        return self._reserve(
            Reservation(rec, claims, reserved_micro, now, enforce, decision, rule, reason, record_refusal)
        )

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
    ) -> bool:
        """Replace a hold by the real cost: `cost_micro` whole micro-dollars plus `cost_submicro`
        atto-USD (`money.split` of the exact cost). Idempotent: returns False if already finished."""
        if not 0 <= cost_submicro < money.SUBMICRO_PER_MICRO:
            raise ValueError(f"a cost's rest below a micro-dollar must be in [0, 10^12), not {cost_submicro}")
        return self._finish(
            Finish(request_id, cost_micro, "settled", outcome, now, cost_submicro, usage, price_source)
        )

    def release(self, request_id: str, now: datetime, *, outcome: str) -> bool:
        """Drop a hold, charging nothing (the upstream never ran the request). Idempotent."""
        return self._finish(Finish(request_id, 0, "released", outcome, now))

    def charge_reservation(self, request_id: str, now: datetime, *, outcome: str) -> bool:
        """Settle a hold at its full reserved amount, when real usage cannot be known."""
        return self._finish(Finish(request_id, None, "settled", outcome, now))
