"""`spendfuse report --chart FILE.html`: spend over time per budget, with each budget's limit.

`series` turns the ledger's settled claims into one line per budget and window: the spend
counted against that budget so far, step by step, in exact Decimals, with the budget's limit from
the rules. `write_html` draws them with plotly (its JavaScript embedded, so the file opens with no
network). Tests read the series, not the pixels.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from governance import money
from governance.policy import Policy


@dataclass
class Series:
    """One budget's spend within one window: `(when, spend so far)` points, and its limit."""

    scope: str  # the scope the budget is on: global, key=a, team=t, customer=c, model=..., provider=...
    budget: str  # the budget's id
    window_start: str  # "" for a budget that never resets
    limit: Decimal | None  # None: the rules no longer name this budget
    points: list[tuple[str, Decimal]] = field(default_factory=list)

    @property
    def name(self) -> str:
        window = f" from {self.window_start}" if self.window_start else ""
        return f"{self.budget} on {self.scope}{window}"


def budget_of(counter: str) -> tuple[str, str]:
    """`(scope, budget id)` of a budget's ledger counter (`governance.checks.quota.budget_counter`)."""
    if counter == "global":
        return "global", "global"
    if counter.startswith("global:"):
        return "global", counter.removeprefix("global:")
    scope, _, budget = counter.rpartition("|")
    return scope, budget


def limits_of(policy: Policy) -> dict[str, Decimal]:
    """Each budget's limit in USD, by id."""
    return {b.id: b.max_usd for b in policy.budgets}


def series(claims: Iterable[Mapping[str, Any]], limits: Mapping[str, Decimal]) -> list[Series]:
    """The running spend of every budget window, from settled claims oldest first
    (`LedgerStore.budget_claims_over_time`)."""
    found: dict[tuple[str, str], Series] = {}
    for claim in claims:
        key = (claim["scope"], claim["window_start"] or "")
        line = found.get(key)
        if line is None:
            scope, budget = budget_of(claim["scope"])
            line = found[key] = Series(scope, budget, key[1], limits.get(budget))
        spent = (line.points[-1][1] if line.points else Decimal(0)) + money.to_usd(
            claim["amount"], claim["amount_rest"] or 0
        )
        line.points.append((claim["at"], spent))
    return sorted(found.values(), key=lambda s: (s.scope, s.budget, s.window_start))


def figure(lines: list[Series]) -> Any:
    """A plotly figure: a stepped line per budget window, and its limit as a dashed line."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for line in lines:
        xs = [at for at, _ in line.points]
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=[float(v) for _, v in line.points],  # floats only for drawing
                name=line.name,
                mode="lines+markers",
                line_shape="hv",
            )
        )
        if line.limit is not None and xs:
            fig.add_trace(
                go.Scatter(
                    x=[xs[0], xs[-1]],
                    y=[float(line.limit)] * 2,
                    name=f"limit of {line.name}",
                    mode="lines",
                    line={"dash": "dash"},
                )
            )
    fig.update_layout(title="spend per budget (USD)", xaxis_title="time (UTC)", yaxis_title="USD")
    return fig


def write_html(lines: list[Series], path: Path) -> None:
    """Write the chart to `path` as one self-contained HTML file."""
    figure(lines).write_html(str(path), include_plotlyjs=True, full_html=True)
