"""`spendfuse report --format csv|json`: the report's tables as data, for export. Money is USD
as exact decimal strings (the ledger's figures, never floats); rows come in a stable order.

Tables: `by_model`, `by_day`, `by_principal` (whom the ledger recorded each request under: a
key's id, a proxy user, a salted hash of an API key; never a secret), `by_principal_day` (the
series of spend over time per principal) and `refusals` (by rule)."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from decimal import Decimal
from typing import Any

from governance import money
from governance.decisions import usd_text
from governance.store import LedgerStore

Tables = dict[str, list[dict[str, Any]]]


def tables(ledger: LedgerStore, since: str | None) -> Tables:
    """Every table of the report, from the ledger."""
    by_model = sorted(ledger.spend_by_model(since), key=lambda r: (-money.summed(r, "cost"), r["model"]))
    per_day = ledger.spend_by_principal_and_day(since)
    totals: dict[str, list[Any]] = defaultdict(lambda: [0, Decimal(0)])
    for r in per_day:
        totals[r["principal"]][0] += r["n"]
        totals[r["principal"]][1] += money.summed(r, "cost")
    return {
        "by_model": [
            {
                "model": r["model"],
                "requests": r["n"],
                "input_tokens": r["tin"],
                "output_tokens": r["tout"],
                "cost_usd": usd_text(money.summed(r, "cost")),
            }
            for r in by_model
        ],
        "by_day": [
            {"day": r["day"], "requests": r["n"], "cost_usd": usd_text(money.summed(r, "cost"))}
            for r in ledger.spend_by_day(since)
        ],
        "by_principal": [
            {"principal": p, "requests": n, "cost_usd": usd_text(cost)}
            for p, (n, cost) in sorted(totals.items(), key=lambda kv: (-kv[1][1], kv[0]))
        ],
        "by_principal_day": [
            {
                "day": r["day"],
                "principal": r["principal"],
                "requests": r["n"],
                "cost_usd": usd_text(money.summed(r, "cost")),
            }
            for r in per_day
        ],
        "refusals": [{"rule": r["rule"], "refusals": r["n"]} for r in ledger.refusals_by_rule(since)],
    }


def as_json(t: Tables) -> str:
    return json.dumps({"v": 1, **t}, indent=2)


def as_csv(t: Tables) -> str:
    """One CSV in long form: a `table` column naming each row's table, then the union of the
    tables' columns (empty where a table has none)."""
    columns = ["table"]
    for rows in t.values():
        for row in rows:
            columns += [c for c in row if c not in columns]
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, restval="", lineterminator="\n")
    writer.writeheader()
    for name, rows in t.items():
        for row in rows:
            writer.writerow({"table": name, **row})
    return out.getvalue()
