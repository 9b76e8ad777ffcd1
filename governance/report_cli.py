"""`spendfuse report`: the ledger's spend at a glance, as rich tables (by model, day, principal,
budget scope: key, team, customer, model, provider, global), as data for export
(`--format csv|json`, `governance.report`), and as a chart (`--chart FILE.html`,
`governance.chart`)."""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from governance import chart, money, policy
from governance.store import LedgerStore
from governance.types import from_micro, usd


def render(ledger: LedgerStore, args: argparse.Namespace) -> int:
    """The report as `args` asks: tables on stdout, or an export, and the chart if asked."""
    if args.chart:
        rules = policy.load(args.rules)
        lines = chart.series(ledger.budget_claims_over_time(args.since), chart.limits_of(rules))
        chart.write_html(lines, Path(args.chart))
        print(f"spendfuse: wrote {len(lines)} budget series to {args.chart}", file=sys.stderr)
    if args.format != "text":
        from governance import report

        t = report.tables(ledger, args.since)
        sys.stdout.write(report.as_json(t) + "\n" if args.format == "json" else report.as_csv(t))
        return 0
    # Wide enough that no row wraps when the output is a file or a pipe.
    console = Console(width=None if sys.stdout.isatty() else 200, highlight=False)
    for title, header, rows in _tables(ledger, args.since):
        console.print(f"\n{title}" if title != "spend by model" else title)
        if not rows:
            console.print("  (none)")
            continue
        table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
        for i, name in enumerate(header):
            table.add_column(name, justify="left" if i == 0 else "right", no_wrap=True)
        for row in rows:
            table.add_row(*row)
        console.print(table)
    return 0


def _tables(ledger: LedgerStore, since: str | None) -> list[tuple[str, list[str], list[list[str]]]]:
    by_model = sorted(ledger.spend_by_model(since), key=lambda r: money.summed(r, "cost"), reverse=True)
    per_day = ledger.spend_by_principal_and_day(since)
    principals: dict[str, list[Any]] = defaultdict(lambda: [0, Decimal(0)])
    for r in per_day:
        principals[r["principal"]][0] += r["n"]
        principals[r["principal"]][1] += money.summed(r, "cost")
    return [
        (
            "spend by model",
            ["model", "requests", "input tok", "output tok", "cost"],
            [
                [r["model"], str(r["n"]), str(r["tin"]), str(r["tout"]), usd(money.summed(r, "cost"))]
                for r in by_model
            ],
        ),
        (
            "spend by day (UTC)",
            ["day", "requests", "cost"],
            [[r["day"], str(r["n"]), usd(money.summed(r, "cost"))] for r in ledger.spend_by_day(since)],
        ),
        (
            "spend by principal (key, proxy user, or API-key hash)",
            ["principal", "requests", "cost"],
            [
                [p, str(n), usd(cost)]
                for p, (n, cost) in sorted(principals.items(), key=lambda kv: (-kv[1][1], kv[0]))
            ],
        ),
        (
            "spend by budget (scope: key, team, customer, model, provider, global)",
            ["scope", "budget", "window", "requests", "spent"],
            _by_budget(ledger.budget_claims_over_time(since)),
        ),
        (
            "refusals by rule",
            ["rule", "count"],
            [[r["rule"], str(r["n"])] for r in ledger.refusals_by_rule(since)],
        ),
        (
            "prices from the rules' fee and regional tables (rules/fees.yaml, rules/regional_prices.yaml)",
            ["model", "requests", "cost", "price source"],
            [
                [r["model"], str(r["n"]), usd(from_micro(r["cost"])), r["source"]]
                for r in ledger.spend_by_rules_table(since)
            ],
        ),
        (
            "input estimate against the real input (real / estimated: above 1 is an undercount)",
            ["model", "requests", "median", "p99", "max", "undercounts"],
            estimator_errors(ledger.input_estimates(since)),
        ),
    ]


def _by_budget(claims: list[dict[str, Any]]) -> list[list[str]]:
    """Per budget window: its scope, budget, window start, requests and spend."""
    totals: dict[tuple[str, str], list[Any]] = defaultdict(lambda: [0, Decimal(0)])
    for c in claims:
        total = totals[(c["scope"], c["window_start"] or "")]
        total[0] += 1
        total[1] += money.to_usd(c["amount"], c["amount_rest"] or 0)
    rows = []
    for (counter, window), (n, spent) in sorted(totals.items()):
        scope, budget = chart.budget_of(counter)
        rows.append([scope, budget, window or "never resets", str(n), usd(spent)])
    return rows


def estimator_errors(measured: list[dict]) -> list[list[str]]:
    """Per model: how the real input compared with the estimate reserved for it."""
    by_model: dict[str, list[float]] = {}
    for r in measured:
        by_model.setdefault(r["model"], []).append(r["real"] / r["est"])
    rows = []
    for model, ratios in sorted(by_model.items()):
        ratios.sort()
        p99 = ratios[min(len(ratios) - 1, int(0.99 * len(ratios)))]
        rows.append(
            [
                model,
                str(len(ratios)),
                f"{statistics.median(ratios):.3f}",
                f"{p99:.3f}",
                f"{ratios[-1]:.3f}",
                str(sum(x > 1 for x in ratios)),
            ]
        )
    return rows
