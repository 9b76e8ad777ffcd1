"""spendfuse's mitmproxy options, and the rules they select (with their overrides applied)."""

import os
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from mitmproxy import ctx, exceptions

from governance import DEFAULT_RULES, policy
from governance.keyring import Keyring


@dataclass(frozen=True)
class OptionSpec:
    name: str
    env: str
    default: str
    help: str


# Every option is a string that spendfuse parses itself. mitmproxy drops a script whose typed
# option gets a malformed `--set` value without a word (and forwards traffic unmetered); a
# string is never malformed to mitmproxy, so bad values reach `configure` and stop startup.
OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec(
        "spendfuse_rules",
        "SPENDFUSE_RULES",
        str(DEFAULT_RULES),
        "Path of the rules file (YAML). Defaults to the shipped rules/default.yaml.",
    ),
    OptionSpec(
        "spendfuse_db",
        "SPENDFUSE_DB",
        "",
        "Path of the SQLite ledger, created if missing. Several proxies may share one file; a "
        "URL (postgresql://...) is refused, as this build keeps its ledger in SQLite. "
        "Empty: ledger.sqlite in a per-user state directory ($SPENDFUSE_STATE_DIR, else "
        "$XDG_STATE_HOME/spendfuse, else ~/.local/state/spendfuse). In-memory ledgers are refused.",
    ),
    OptionSpec(
        "spendfuse_budget",
        "SPENDFUSE_BUDGET",
        "",
        "Global budget in USD; replaces the rules' global cap. Empty: use the rules.",
    ),
    OptionSpec(
        "spendfuse_max_multiplier",
        "SPENDFUSE_MAX_MULTIPLIER",
        "",
        "Refuse models whose multiplier is above this. Empty: use the rules.",
    ),
    OptionSpec(
        "spendfuse_gateway",
        "SPENDFUSE_GATEWAY",
        "",
        "Gateway (base-URL) mode: PORT or HOST:PORT of a listener that clients use as their base "
        "URL (http://HOST:PORT/openai/v1, /anthropic, /genai, /v1), beside the proxy listener. "
        "Empty: none. The same as --mode reverse:http://gateway.spendfuse.invalid@PORT.",
    ),
    OptionSpec(
        "spendfuse_gateway_routes",
        "SPENDFUSE_GATEWAY_ROUTES",
        "",
        "Path of the gateway's routing table (path prefix -> upstream). Empty: the shipped "
        "rules/gateway.yaml.",
    ),
    OptionSpec(
        "spendfuse_dry_run",
        "SPENDFUSE_DRY_RUN",
        "false",
        "true: log and record what would be refused, but refuse nothing.",
    ),
    OptionSpec(
        "spendfuse_websockets",
        "SPENDFUSE_WEBSOCKETS",
        "",
        "meter or refuse: replaces the rules' `websockets` (WebSockets to the Responses API, "
        "metered frame by frame, or answered 426). Empty: use the rules.",
    ),
    OptionSpec(
        "spendfuse_log_format",
        "SPENDFUSE_LOG_FORMAT",
        "human",
        "human or json. json: also write one JSON line per decision (rules/decision-log.schema.json) "
        "to spendfuse_log_file; the human log stays as it is.",
    ),
    OptionSpec(
        "spendfuse_log_file",
        "SPENDFUSE_LOG_FILE",
        "",
        "Where the JSON decision log goes: a file (appended) or - for stderr. Empty: stderr.",
    ),
    OptionSpec(
        "spendfuse_metrics",
        "SPENDFUSE_METRICS",
        "",
        "Serve Prometheus metrics on PORT (loopback) or HOST:PORT, at /metrics. Empty: off. A "
        "host other than loopback requires spendfuse_metrics_token.",
    ),
    OptionSpec(
        "spendfuse_metrics_token",
        "SPENDFUSE_METRICS_TOKEN",
        "",
        "The bearer token a scrape must send (Authorization: Bearer TOKEN). Required when the "
        "metrics listen on a host other than loopback; optional on loopback.",
    ),
)


def add_options(loader) -> None:  # type: ignore[no-untyped-def]
    """Register every option, defaulting to its environment variable."""
    for spec in OPTIONS:
        default = os.environ.get(spec.env, spec.default)
        loader.add_option(spec.name, str, default, f"{spec.help} Env: {spec.env}.")


def unknown_options() -> list[str]:
    """`spendfuse*` options given on the command line that no addon knows (typos)."""
    return sorted(k for k in getattr(ctx.options, "deferred", {}) if k.startswith("spendfuse"))


def parse_bool(value: str, name: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("", "0", "false", "no", "off"):
        return False
    raise exceptions.OptionsError(f"{name} must be true or false, not {value!r}")


def parse_decimal(value: str, name: str) -> Decimal | None:
    v = value.strip().lstrip("$")
    if not v:
        return None
    try:
        d = Decimal(v)
    except InvalidOperation:
        raise exceptions.OptionsError(f"{name} must be a number, not {value!r}") from None
    if not d.is_finite() or d < 0:
        raise exceptions.OptionsError(f"{name} must be a non-negative number, not {value!r}")
    return d


def load_keyring(rules: policy.Policy) -> Keyring:
    """The custody keys of `rules`, read from the environment and files (relative paths from the
    rules file's directory). Raises `PolicyError` naming each credential that cannot be read."""
    base = Path(ctx.options.spendfuse_rules).expanduser().parent
    return Keyring.load(rules.credentials, base, os.environ)


def load_rules() -> tuple[policy.Policy, list[policy.Problem]]:
    """The rules file with the options' overrides applied, and its warnings. Raises
    `PolicyError` (or `OptionsError` for a malformed override)."""
    o = ctx.options
    budget = parse_decimal(o.spendfuse_budget, "spendfuse_budget")
    max_multiplier = parse_decimal(o.spendfuse_max_multiplier, "spendfuse_max_multiplier")
    warnings: list[policy.Problem] = []
    rules = policy.with_overrides(
        policy.load(o.spendfuse_rules, warnings=warnings),
        budget_usd=budget,
        max_multiplier=max_multiplier,
    )
    websockets = o.spendfuse_websockets.strip().lower()
    if websockets:
        if websockets not in ("meter", "refuse"):
            raise exceptions.OptionsError(
                f"spendfuse_websockets must be meter or refuse, not {o.spendfuse_websockets!r}"
            )
        rules = rules.model_copy(update={"websockets": websockets})
    policy.require_limits(rules, o.spendfuse_rules)
    return rules, warnings
