"""`spendfuse`: the operator's command.

spendfuse run [mitmdump args]   the proxy, failing closed on any bad option
spendfuse status                spend, reservations and what remains of each budget
spendfuse report                spend by model and by day
spendfuse env                   the environment variables an agent needs
spendfuse schema [--check]      the rules file's JSON schema
spendfuse addon-path            where the mitmproxy script is: mitmdump -s "$(spendfuse addon-path)"
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from governance import ADDON_SCRIPT, DEFAULT_RULES, RULES_DIR, load_addon, policy
from governance.checks.budget import scope_key, window_of
from governance.errors import LedgerUnavailable, PolicyError
from governance.ledger import Ledger
from governance.ledger import default_path as default_ledger_path
from governance.types import from_micro, usd


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        default=os.environ.get("SPENDFUSE_DB") or str(default_ledger_path()),
        help="ledger file (env SPENDFUSE_DB; default: ledger.sqlite in the per-user state directory)",
    )


def _open_ledger(path: str) -> Ledger:
    if not Path(path).exists():
        raise LedgerUnavailable(f"no ledger at {path!r} (has the proxy run with this --db?)")
    return Ledger.open(path)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    budget = Decimal(args.budget.lstrip("$")) if args.budget else None
    rules = policy.with_overrides(policy.load(args.rules), budget_usd=budget)
    ledger = _open_ledger(args.db)
    now = datetime.now(UTC)
    rows = []
    for b in rules.budgets:
        start, resets = window_of(b, now)
        t = ledger.window_totals(scope_key(b), start)
        spent, held = from_micro(t.settled_micro), from_micro(t.held_micro)
        rows.append(
            [
                b.name,
                b.window,
                usd(b.limit_usd),
                usd(spent),
                usd(held),
                usd(max(b.limit_usd - spent - held, Decimal(0))),
                resets,
            ]
        )
    print(f"ledger {args.db}, rules {args.rules}")
    if rows:
        print(_table(rows, ["budget", "window", "limit", "spent", "reserved", "remaining", "resets"]))
    else:
        print("no budgets configured")
    counts = ledger.query(
        "SELECT state, count(*) AS n, coalesce(sum(cost_micro), 0) AS cost FROM requests "
        "GROUP BY state ORDER BY state"
    )
    if counts:
        print()
        print(
            _table(
                [[c["state"], str(c["n"]), usd(from_micro(c["cost"]))] for c in counts],
                ["requests", "count", "cost"],
            )
        )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    ledger = _open_ledger(args.db)
    where = "WHERE cost_micro IS NOT NULL" + (" AND created_at >= ?" if args.since else "")
    params = [args.since] if args.since else []
    by_model = ledger.query(
        f"SELECT coalesce(model, '?') AS model, count(*) AS n, sum(coalesce(input_tokens, 0)) AS tin, "
        f"sum(coalesce(output_tokens, 0)) AS tout, sum(cost_micro) AS cost FROM requests {where} "
        f"GROUP BY model ORDER BY cost DESC",
        params,
    )
    by_day = ledger.query(
        f"SELECT substr(created_at, 1, 10) AS day, count(*) AS n, sum(cost_micro) AS cost "
        f"FROM requests {where} GROUP BY day ORDER BY day",
        params,
    )
    refused = ledger.query(
        "SELECT coalesce(rule, '?') AS rule, count(*) AS n FROM requests WHERE decision = 'refused' "
        + ("AND created_at >= ? " if args.since else "")
        + "GROUP BY rule ORDER BY n DESC",
        params,
    )
    print("spend by model")
    print(
        _table(
            [
                [r["model"], str(r["n"]), str(r["tin"]), str(r["tout"]), usd(from_micro(r["cost"]))]
                for r in by_model
            ],
            ["model", "requests", "input tok", "output tok", "cost"],
        )
        if by_model
        else "  (none)"
    )
    print("\nspend by day (UTC)")
    print(
        _table(
            [[r["day"], str(r["n"]), usd(from_micro(r["cost"]))] for r in by_day], ["day", "requests", "cost"]
        )
        if by_day
        else "  (none)"
    )
    print("\nrefusals by rule")
    print(_table([[r["rule"], str(r["n"])] for r in refused], ["rule", "count"]) if refused else "  (none)")
    measured = ledger.query(
        "SELECT coalesce(model, '?') AS model, est_input_tokens AS est, input_tokens AS real FROM requests "
        "WHERE state = 'settled' AND est_input_tokens > 0 AND input_tokens IS NOT NULL"
        + (" AND created_at >= ?" if args.since else ""),
        params,
    )
    print("\ninput estimate against the real input (real / estimated: above 1 is an undercount)")
    rows = estimator_errors(measured)
    print(_table(rows, ["model", "requests", "median", "p99", "max", "undercounts"]) if rows else "  (none)")
    return 0


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


def cmd_schema(args: argparse.Namespace) -> int:
    schema = policy.json_schema()
    target = RULES_DIR / "policy.schema.json"
    if args.check:
        if target.read_text() != schema:
            print(f"{target} is stale: run `spendfuse schema > {target}`", file=sys.stderr)
            return 1
        print(f"{target} is up to date")
        return 0
    sys.stdout.write(schema)
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    addon = load_addon()  # touches mitmproxy: only the addon module may

    bundle, ca = addon.ensure_ca_bundle(Path(args.confdir).expanduser())
    proxy = f"http://{args.host}:{args.port}"
    print(f"export HTTPS_PROXY={proxy}")
    print(f"export https_proxy={proxy}")
    print(f"export SSL_CERT_FILE={bundle}        # Python SDKs (httpx): certifi + the spendfuse CA")
    print(f"export REQUESTS_CA_BUNDLE={bundle}   # requests")
    print(f"export NODE_EXTRA_CA_CERTS={ca}      # Claude Code, Gemini CLI and other Node CLIs")
    print(f"export CODEX_CA_CERTIFICATE={ca}     # Codex CLI")
    return 0


def cmd_run(argv: list[str]) -> int:
    return load_addon().launch(argv)  # touches mitmproxy: only the addon module may


def cmd_addon_path(args: argparse.Namespace) -> int:
    print(ADDON_SCRIPT)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spendfuse", description="LLM spend caps as a mitmproxy addon.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the proxy (all further arguments go to mitmdump)", add_help=False)
    p = sub.add_parser("status", help="spend, reservations and remaining budget")
    p.add_argument(
        "--rules",
        default=os.environ.get("SPENDFUSE_RULES", str(DEFAULT_RULES)),
        help="rules file (env SPENDFUSE_RULES)",
    )
    p.add_argument(
        "--budget",
        default=os.environ.get("SPENDFUSE_BUDGET", ""),
        help="global budget override in USD (env SPENDFUSE_BUDGET)",
    )
    _common(p)
    p.set_defaults(fn=cmd_status)
    p = sub.add_parser("report", help="spend by model and by day")
    p.add_argument("--since", help="only requests at or after this ISO date/time (UTC)")
    _common(p)
    p.set_defaults(fn=cmd_report)
    p = sub.add_parser("schema", help="print the rules file's JSON schema")
    p.add_argument("--check", action="store_true", help="fail if rules/policy.schema.json is stale")
    p.set_defaults(fn=cmd_schema)
    p = sub.add_parser("env", help="print the environment an agent needs (creates the CA if missing)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", default="8080")
    p.add_argument("--confdir", default="~/.mitmproxy", help="mitmproxy's confdir, where its CA lives")
    p.set_defaults(fn=cmd_env)
    p = sub.add_parser("addon-path", help="print the path of the mitmproxy script (for mitmdump -s)")
    p.set_defaults(fn=cmd_addon_path)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "run":
        return cmd_run(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (PolicyError, LedgerUnavailable) as e:
        print(f"spendfuse: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
