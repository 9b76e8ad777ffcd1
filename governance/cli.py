"""`spendfuse`: the operator's command.

spendfuse run [mitmdump args]   the proxy, failing closed on any bad option
spendfuse status                every scope's limits: spent, reserved, remaining, next reset
spendfuse report                spend by model and by day
spendfuse simulate FLOWS --rules FILE   what a rules file would have done to a recording
spendfuse check FILE            validate a rules file: every problem with its line, and the policy
spendfuse reset SCOPE           start a new window of a scope's limits now (history is kept)
spendfuse topup SCOPE USD       add to a never-resetting budget's balance
spendfuse import-bifrost FILE   print spendfuse rules equivalent to a Bifrost governance config
spendfuse hash-secret [SECRET]  the secret_sha256 of a key's secret (read from stdin when omitted)
spendfuse env                   the environment variables an agent needs
spendfuse schema [--check]      the rules file's JSON schema
spendfuse addon-path            where the mitmproxy script is: mitmdump -s "$(spendfuse addon-path)"
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from governance import (
    ADDON_SCRIPT,
    DEFAULT_RULES,
    RULES_DIR,
    load_addon,
    money,
    policy,
    report_cli,
    simulate_cli,
)
from governance.checks.quota import budget_claim, rate_claims, rule_parts
from governance.errors import LedgerUnavailable, PolicyError
from governance.ledger import default_path as default_ledger_path
from governance.scopes import Scope, Scopes, secret_hash
from governance.store import LedgerStore
from governance.store.opening import is_database, open_store
from governance.types import Claim, from_micro, usd
from governance.units import Unit


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--db",
        default=os.environ.get("SPENDFUSE_DB") or str(default_ledger_path()),
        help="ledger file, or postgresql:// URL (env SPENDFUSE_DB; default: ledger.sqlite in the "
        "per-user state directory)",
    )


def _open_ledger(path: str) -> LedgerStore:
    if not is_database(path) and not Path(path).exists():
        raise LedgerUnavailable(f"no ledger at {path!r} (has the proxy run with this --db?)")
    return open_store(path)


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


def _rules(args: argparse.Namespace) -> policy.Policy:
    budget = Decimal(args.budget.lstrip("$")) if getattr(args, "budget", "") else None
    return policy.with_overrides(policy.load(args.rules), budget_usd=budget)


def _scope_claims(scope: Scope) -> list[Claim]:
    """Every counter of a scope, as claims carrying its limit and window rule."""
    out = [c for r in scope.rate_limits for c in rate_claims(scope.name, r, None)]
    return out + [budget_claim(scope.name, b, 0) for b in scope.budgets]


def _amount(claim: Claim, amount: Decimal) -> str:
    """An amount in the claim's unit (USD for money: `amount` is then in micro-USD)."""
    return usd(amount.scaleb(-6)) if Unit(claim.unit).is_money else f"{amount:,}"


def cmd_status(args: argparse.Namespace) -> int:
    rules = _rules(args)
    ledger = _open_ledger(args.db)
    now = datetime.now(UTC)
    rows = []
    for scope in Scopes(rules).every_scope():
        for claim in _scope_claims(scope):
            c = ledger.resolve_window(claim, now)
            t = ledger.window_totals(c.scope, c.window_start)
            # Exact spend, in micro-units: whole micro-dollars plus the rest (governance.money).
            spent = Decimal(t.settled)
            if t.settled_rest:
                spent += Decimal(t.settled_rest) / money.SUBMICRO_PER_MICRO
            left = max(c.limit - spent - t.held, Decimal(0))
            name = rule_parts(c.rule)[0]
            unit = Unit(c.unit).status_label
            window = c.reset + (" (calendar)" if c.calendar and c.reset != "never" else "")
            rows.append(
                [
                    scope.name,
                    name,
                    unit,
                    window,
                    _amount(c, Decimal(c.limit)),
                    _amount(c, spent),
                    _amount(c, Decimal(t.held)),
                    _amount(c, left),
                    c.resets,
                ]
            )
    print(f"ledger {args.db}, rules {args.rules}")
    if rows:
        header = ["scope", "limit", "unit", "window", "max", "spent", "reserved", "remaining", "next reset"]
        print(_table(rows, header))
    else:
        print("no budgets or rate limits configured")
    counts = ledger.requests_by_state()
    if counts:
        print()
        print(
            _table(
                [[c["state"], str(c["n"]), usd(money.summed(c, "cost"))] for c in counts],
                ["requests", "count", "cost"],
            )
        )
    return 0


def _counters_of(rules: policy.Policy, target: str) -> tuple[Scope, list[Claim]]:
    """The claims (counters) a SCOPE argument names: `key=agent-1` (every limit of the scope) or
    `key=agent-1|daily` (one budget or rate limit of it)."""
    name, _, limit_id = target.partition("|")
    scopes = {s.name: s for s in Scopes(rules).every_scope()}
    if name not in scopes:
        known = ", ".join(sorted(scopes)) or "none"
        raise PolicyError(f"no scope {name!r} with limits in the rules (scopes: {known})")
    scope = scopes[name]
    claims = _scope_claims(scope)
    if limit_id:
        claims = [c for c in claims if rule_parts(c.rule)[0].split(":", 1)[0] == limit_id]
        if not claims:
            raise PolicyError(f"scope {name!r} has no budget or rate limit {limit_id!r}")
    return scope, claims


def _who(args: argparse.Namespace) -> str:
    return args.who or os.environ.get("USER") or os.environ.get("LOGNAME") or "unknown"


def cmd_reset(args: argparse.Namespace) -> int:
    rules = _rules(args)
    _, claims = _counters_of(rules, args.scope)
    ledger = open_store(args.db)
    now = datetime.now(UTC)
    # Requests in flight are not a window: their holds end when they finish, wherever reset.
    counters = sorted({c.scope for c in claims if c.unit is not Unit.IN_FLIGHT})
    ledger.reset(counters, now, who=_who(args), note=args.note)
    print(f"reset {len(counters)} counter(s) of {args.scope} at {now.isoformat()}: {', '.join(counters)}")
    return 0


def cmd_topup(args: argparse.Namespace) -> int:
    rules = _rules(args)
    _, claims = _counters_of(rules, args.scope)
    budgets = [c for c in claims if c.unit is Unit.USD and c.reset == "never"]
    if len(budgets) != 1:
        what = "no budget that never resets" if not budgets else "several budgets that never reset"
        raise PolicyError(f"{args.scope} has {what}; name one as SCOPE|BUDGET_ID")
    try:
        amount = Decimal(args.usd.lstrip("$"))
    except ArithmeticError:
        raise PolicyError(f"not an amount of USD: {args.usd!r}") from None
    micro = int((amount * 1_000_000).to_integral_value(rounding="ROUND_FLOOR"))
    if not amount.is_finite() or micro <= 0:
        raise PolicyError(f"a top-up must be a positive amount of USD, not {args.usd!r}")
    ledger = open_store(args.db)
    ledger.topup(budgets[0].scope, micro, datetime.now(UTC), who=_who(args), note=args.note)
    print(f"added {usd(from_micro(micro))} to {budgets[0].rule} ({budgets[0].scope})")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from governance import rulecheck

    rules, problems = rulecheck.check_file(Path(args.file))
    print(rulecheck.render(args.file, rules, problems))
    return 1 if any(p.fatal for p in problems) else 0


def cmd_import_bifrost(args: argparse.Namespace) -> int:
    import json

    import yaml

    from governance import bifrost

    text = Path(args.file).read_text(encoding="utf-8")
    try:
        data = json.loads(text, parse_float=Decimal)
    except ValueError:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise PolicyError(f"{args.file} is neither JSON nor YAML: {e}") from e
    price = None
    if args.self_hosted_price:
        try:
            inp, out = (Decimal(v) for v in args.self_hosted_price.split(":"))
        except (ValueError, ArithmeticError) as e:
            raise PolicyError(f"--self-hosted-price {args.self_hosted_price!r}: expected INPUT:OUTPUT") from e
        price = {"input_mtok": inp, "output_mtok": out}
    try:
        secrets_dir = str(Path(args.secrets_dir).resolve()) if args.secrets_dir else None
        rules, notes, files = bifrost.convert_with_files(
            data, environ=os.environ, self_hosted_price=price, secrets_dir=secrets_dir
        )
        _write_secret_files(files)
        if args.bifrost_codes:
            rules["refusal_codes"] = "bifrost"
        for note in notes:
            if note.startswith("warning: "):
                print(f"spendfuse: {note}", file=sys.stderr)
        sys.stdout.write(bifrost.to_yaml(rules, source=Path(args.file).name, notes=notes))
    except bifrost.BifrostImportError as e:
        print(f"spendfuse: {args.file} cannot be imported exactly:", file=sys.stderr)
        for problem in e.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    return 0


def _write_secret_files(files: dict[str, str]) -> None:
    """Write each secret file, mode 0600, in a directory made 0700; never over an existing file
    (checked for all of them first, so a refused import writes none)."""
    for path in files:
        if Path(path).exists():
            raise PolicyError(f"{path} exists; refusing to overwrite a secret (move it away first)")
    for path, content in files.items():
        Path(path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError as e:
            raise PolicyError(f"{path} exists; refusing to overwrite a secret (move it away first)") from e
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(content + "\n")


def cmd_hash_secret(args: argparse.Namespace) -> int:
    secret = args.secret if args.secret is not None else sys.stdin.readline().rstrip("\n")
    if not secret:
        raise PolicyError("an empty secret proves nothing")
    print(secret_hash(secret))
    return 0


def cmd_migrate_ledger(args: argparse.Namespace) -> int:
    from governance.store.migrate_ledger import copy_ledger

    if not is_database(args.target) or is_database(args.source):
        raise PolicyError("usage: spendfuse migrate-ledger SQLITE_FILE postgresql://...")
    src, dst = _open_ledger(args.source), open_store(args.target)
    try:
        copied = copy_ledger(src, dst)  # type: ignore[arg-type]
    finally:
        src.close()
        dst.close()
    print("copied " + ", ".join(f"{n} {table}" for table, n in copied.items()))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    return report_cli.render(_open_ledger(args.db), args)


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


def _with_rules(p: argparse.ArgumentParser) -> None:
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


def _import_bifrost_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `import-bifrost` subcommand and its options."""
    p = sub.add_parser(
        "import-bifrost", help="print spendfuse rules for a Bifrost config.json or Helm values"
    )
    p.add_argument("file")
    p.add_argument(
        "--self-hosted-price",
        metavar="INPUT:OUTPUT",
        help="USD per 1M input:output tokens for models on self-hosted providers (ollama, vllm, "
        "sgl, custom) that no pricing override prices; without it such providers are refused",
    )
    p.add_argument(
        "--secrets-dir",
        metavar="DIR",
        help="write provider keys found written into the file, and generated values for virtual "
        "keys that have none, to files in DIR (mode 0600) that the rules read; without it both "
        "stop the import",
    )
    p.add_argument(
        "--bifrost-codes",
        action="store_true",
        help="answer refusals with Bifrost's statuses (402 budget, 403 blocked, 429 rate limit) "
        "instead of each provider's own, which make its clients stop at once",
    )
    p.set_defaults(fn=cmd_import_bifrost)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spendfuse", description="LLM spend caps as a mitmproxy addon.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the proxy (all further arguments go to mitmdump)", add_help=False)
    p = sub.add_parser("status", help="every scope's limits: spent, reserved, remaining, next reset")
    _with_rules(p)
    p.set_defaults(fn=cmd_status)
    p = sub.add_parser("reset", help="start a new window of a scope's limits now")
    p.add_argument(
        "scope", help="global, key=ID, team=ID, customer=ID, provider=P, model=M; |LIMIT_ID for one"
    )
    p.add_argument("--who", help="who resets (default: $USER)")
    p.add_argument("--note", help="why, kept with the ledger row")
    _with_rules(p)
    p.set_defaults(fn=cmd_reset)
    p = sub.add_parser("topup", help="add USD to a scope's budget that never resets")
    p.add_argument("scope", help="as for reset")
    p.add_argument("usd", help="amount in USD")
    p.add_argument("--who", help="who tops up (default: $USER)")
    p.add_argument("--note", help="why, kept with the ledger row")
    _with_rules(p)
    p.set_defaults(fn=cmd_topup)
    p = sub.add_parser("check", help="validate a rules file and print the effective policy")
    p.add_argument("file")
    p.set_defaults(fn=cmd_check)
    _import_bifrost_parser(sub)
    p = sub.add_parser("hash-secret", help="print the secret_sha256 of a key's secret")
    p.add_argument("secret", nargs="?", help="the secret (default: read one line from stdin)")
    p.set_defaults(fn=cmd_hash_secret)
    p = sub.add_parser(
        "migrate-ledger", help="copy a SQLite ledger into a new PostgreSQL one (proxies stopped)"
    )
    p.add_argument("source", help="the SQLite ledger file")
    p.add_argument("target", help="postgresql://user@host/db, holding no requests yet")
    p.set_defaults(fn=cmd_migrate_ledger)
    p = sub.add_parser("report", help="spend by model, day, principal and budget; export; chart")
    p.add_argument("--since", help="only requests at or after this ISO date/time (UTC)")
    p.add_argument("--format", choices=("text", "csv", "json"), default="text", help="csv, json: for export")
    p.add_argument(
        "--chart", metavar="FILE.html", help="write spend over time per budget, with its limit, as HTML"
    )
    _with_rules(p)
    p.set_defaults(fn=cmd_report)
    simulate_cli.add_parser(sub)
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
