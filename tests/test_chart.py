"""`governance.chart`: spend over time per budget window, as data (the drawing is plotly's)."""

from __future__ import annotations

from decimal import Decimal

from governance import chart


def claim(scope: str, at: str, micro: int, rest: int = 0, window: str = "") -> dict:
    return {"scope": scope, "window_start": window, "at": at, "amount": micro, "amount_rest": rest}


def test_a_budgets_series_is_its_running_spend_with_its_limit():
    claims = [
        claim("team=t|tb", "2026-11-21T09:00:00Z", 100_000),
        claim("global", "2026-11-21T09:00:00Z", 100_000),
        claim("team=t|tb", "2026-11-21T10:00:00Z", 50_000, 500_000_000_000),  # $0.0500005
        claim("key=a|daily", "2026-11-21T10:00:00Z", 7, window="2026-11-21T00:00:00Z"),
        claim("key=a|daily", "2026-11-22T10:00:00Z", 9, window="2026-11-22T00:00:00Z"),
    ]
    lines = chart.series(claims, {"tb": Decimal("0.2"), "global": Decimal("1")})
    by_name = {line.name: line for line in lines}
    team = by_name["tb on team=t"]
    assert team.points == [
        ("2026-11-21T09:00:00Z", Decimal("0.1")),
        ("2026-11-21T10:00:00Z", Decimal("0.1500005")),
    ]
    assert team.limit == Decimal("0.2") and by_name["global on global"].limit == Decimal("1")
    # A window that resets starts its own series from zero; a budget the rules lost has no limit.
    days = [line for line in lines if line.budget == "daily"]
    assert [(d.window_start, d.points[-1][1], d.limit) for d in days] == [
        ("2026-11-21T00:00:00Z", Decimal("0.000007"), None),
        ("2026-11-22T00:00:00Z", Decimal("0.000009"), None),
    ]


def test_counters_name_their_scope_and_budget():
    assert chart.budget_of("global") == ("global", "global")
    assert chart.budget_of("global:monthly") == ("global", "monthly")
    assert chart.budget_of("team=research|tb") == ("team=research", "tb")
    assert chart.budget_of("model=gpt-5*|m") == ("model=gpt-5*", "m")


def test_the_figure_draws_each_series_and_each_limit():
    lines = chart.series(
        [claim("team=t|tb", "t1", 100_000), claim("team=t|tb", "t2", 100_000)], {"tb": Decimal(1)}
    )
    fig = chart.figure(lines)
    spent, limit = fig.data
    assert (list(spent.x), list(spent.y)) == (["t1", "t2"], [0.1, 0.2])
    assert (list(limit.x), list(limit.y), limit.name) == (["t1", "t2"], [1.0, 1.0], "limit of tb on team=t")
