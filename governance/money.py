"""Exact settled money: whole micro-USD plus the part of a micro-dollar below it.

Limits, holds and top-ups are whole micro-USD (a limit rounds down, a hold rounds up: see
`types.limit_to_micro` and `types.to_micro`). A settled cost is rarely whole: at $0.075 per
million tokens a token costs 0.075 µ$, and rounding every cost up recorded 2,000 requests of
1.3 µ$ as $0.004000 against a bill of $0.002600. So a settled amount is kept exactly, as a pair
of integer columns: its whole micro-dollars in one, and the rest in another (`*_rest`, or
`cost_submicro` on requests), counted in atto-USD (10^-18 $; `SUBMICRO_PER_MICRO` of them to
the micro-dollar; 0 <= rest < that).
A counter's spend adds each cost's rest and carries whole micro-dollars over in the same
UPDATE, inside the settling transaction, so the recorded sum of any number of costs is exact.

Atto-USD is exact for every price with up to 12 decimals per million tokens (genai-prices has
none finer but a few float artefacts such as 0.18000000000000002); a finer cost rounds up to
the next atto-dollar, so a total drifts 1 µ$ above the bill only after 10^12 requests.

Rows written before these columns existed read their rest as 0: their whole micro-dollars
(each cost rounded up) keep their meaning.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_CEILING, Decimal, localcontext
from typing import Any

from sqlite_utils import Database

#: Atto-USD to the micro-dollar: the unit of the rest columns.
SUBMICRO_PER_MICRO = 10**12
# Sums of rests over many rows are taken in two parts, each a bounded integer, so that SQLite's
# 64-bit sum() cannot overflow (it raises rather than lose precision, and a report would fail).
_HALF = 10**6


def add_columns(db: Database) -> None:
    """The schema change (migration m006): the rest of each settled amount, 0 for old rows."""
    db["requests"].add_column("cost_submicro", int, not_null_default=0)
    db["claims"].add_column("amount_submicro", int, not_null_default=0)
    db["totals"].add_column("settled_submicro", int, not_null_default=0)


def split(usd: Decimal) -> tuple[int, int]:
    """`(micro, submicro)` of a cost in USD: whole micro-dollars (rounded down) and the rest in
    atto-USD (rounded up), so that the pair is never below the cost and above it by less than
    one atto-dollar. Raises ValueError for a negative or non-finite cost."""
    if not usd.is_finite() or usd < 0:
        raise ValueError(f"a cost must be a finite amount >= 0, not {usd}")
    with localcontext() as ctx:
        ctx.prec = max(60, usd.adjusted() + 40)  # exact whatever the cost's size
        atto = int(usd.scaleb(18).to_integral_value(rounding=ROUND_CEILING))
    return divmod(atto, SUBMICRO_PER_MICRO)


def to_usd(micro: int, submicro: int = 0) -> Decimal:
    """The exact USD of whole micro-dollars plus a rest in atto-USD."""
    with localcontext() as ctx:
        ctx.prec = 60
        return Decimal(micro * SUBMICRO_PER_MICRO + submicro).scaleb(-18)


def used_micro(settled_micro: int, settled_submicro: int, held_micro: int) -> int:
    """A window's spend plus holds, rounded up to whole micro-units. Limits and amounts are
    whole, so `used_micro(...) + amount <= limit` exactly when the exact spend, holds and
    amount fit the limit: a request that fits exactly is admitted, and a rest is never lost."""
    return settled_micro + held_micro + (1 if settled_submicro > 0 else 0)


def add_sql(micro_col: str, sub_col: str) -> str:
    """A SET clause adding `(micro, submicro)` to a column pair, carrying whole micro-dollars.
    Its parameters: micro, submicro, submicro. SQLite evaluates every SET expression on the old
    row, so both columns see the same rest. The rest added must be 0 <= rest < one micro-dollar
    (the micro part may be negative: a late settlement correcting an expiry charge)."""
    n = SUBMICRO_PER_MICRO
    return f"{micro_col} = {micro_col} + ? + ({sub_col} + ?) / {n}, {sub_col} = ({sub_col} + ?) % {n}"


def sum_sql(micro_col: str, sub_col: str, alias: str) -> str:
    """SELECT terms summing a column pair without overflow; read the result with `summed`."""
    return (
        f"coalesce(sum({micro_col}), 0) AS {alias}_micro, "
        f"coalesce(sum({sub_col} / {_HALF}), 0) AS {alias}_hi, "
        f"coalesce(sum({sub_col} % {_HALF}), 0) AS {alias}_lo"
    )


def summed(row: Mapping[str, Any], alias: str) -> Decimal:
    """The exact USD a `sum_sql(..., alias)` row adds up to."""
    return to_usd(row[f"{alias}_micro"], row[f"{alias}_hi"] * _HALF + row[f"{alias}_lo"])
