"""The conversion's driver: `convert_with_notes` locates the governance section (`_locate`), runs
every section through its module in Bifrost's order (budgets and rate limits: `limits`;
customers and teams: `orgs`; virtual keys: `keys`, their allow-lists `allow`; model configs and
providers: `models`), attaches budgets to the owners they name, and builds spendfuse version 2
rules, collecting every problem and note on the way in one `_State`. `convert` and
`convert_with_notes` raise BifrostImportError listing every field that has no exact spendfuse
equivalent, and refuse to print a virtual key's value wherever it was copied."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any

from governance.bifrost.errors import BifrostImportError
from governance.bifrost.hosts import host_prices
from governance.bifrost.keys import add_virtual_key
from governance.bifrost.limits import define_budgets, define_rate_limit, limits_out, own_budget
from governance.bifrost.locate import _locate
from governance.bifrost.models import add_model_config, add_provider, groups_out
from governance.bifrost.orgs import add_customer, add_team
from governance.bifrost.pricing import add_pricing_override
from governance.bifrost.provider_keys import read_providers
from governance.bifrost.state import _Scope, _State

# The sections after budgets and rate limits, in the order they must be read: each names only
# what an earlier one defined (a team its customer, a key its team, a model config its key).
_SECTIONS: tuple[tuple[str, Callable[[_State, object, str], None]], ...] = (
    ("customers", add_customer),
    ("teams", add_team),
    ("virtual_keys", add_virtual_key),
    ("model_configs", add_model_config),
    ("providers", add_provider),
)


def _left_out(st: _State) -> None:
    """Sections that change routing or prices are problems; dashboard credentials a note."""
    g = st.src.governance
    for name, why in (
        ("routing_rules", "routing rules change which provider and model serve a request"),
        ("business_units", "spendfuse has no business units"),
        ("roles", "spendfuse has no dashboard roles or access profiles"),
    ):
        if g.get(name) not in (None, []):
            st.bad(st.src.paths[name], why)
    if g.get("complexity_analyzer_config") not in (None, {}) and g.get("routing_rules") not in (None, []):
        st.bad(st.src.paths["complexity_analyzer_config"], "only routing rules use it")
    auth = g.get("auth_config")
    if auth not in (None, {}):
        if not isinstance(auth, Mapping):
            st.bad(st.src.paths["auth_config"], "must be an object")
        else:
            st.notes.append(f"{st.src.paths['auth_config']}: dashboard credentials left out")


def run(st: _State) -> dict[str, Any]:
    """Read every section into `st`, then build the rules."""
    _left_out(st)
    read_providers(st)  # first: virtual keys name their provider keys and self-hosted providers
    by_host: dict[str, dict[str, Any]] = {}
    path, items = st.section("pricing_overrides")
    for i, obj in enumerate(items):
        add_pricing_override(st, obj, f"{path}[{i}]", by_host)
    owned = define_budgets(st)
    path, items = st.section("rate_limits")
    for i, obj in enumerate(items):
        define_rate_limit(st, obj, f"{path}[{i}]")
    for name, add in _SECTIONS:
        path, items = st.section(name)
        for i, obj in enumerate(items):
            add(st, obj, f"{path}[{i}]")
    for ident, owner, target, where in owned:
        own_budget(st, ident, owner, target, where)
    return build(st, host_prices(st, by_host))


def build(st: _State, hosts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The spendfuse rules from what `run` read, with the operator `hosts` of self-hosted
    providers; problems found on the way go into `st`."""
    budgets = limits_out(st, st.budgets, "budget")
    limits = limits_out(st, st.limits, "rate limit")
    kept = {"budgets": {b["id"] for b in budgets}, "rate_limits": {r["id"] for r in limits}}

    def scope_out(scope: _Scope) -> dict[str, Any]:
        out = dict(scope.out)
        for key, ids in (("budgets", scope.budgets), ("rate_limits", scope.rate_limits)):
            # The same id can arrive twice (a team's budget_id and the budget's team_id).
            ids = [i for i in dict.fromkeys(ids) if i in kept[key]]
            if ids:
                out[key] = ids
        if scope.nested:
            out["providers"] = [scope_out(n) for n in scope.nested]
        return out

    rules: dict[str, Any] = {"version": 2}
    if st.src.vk_mandatory is not None:
        rules["require_key"] = st.src.vk_mandatory
    if budgets:
        rules["budgets"] = budgets
    if limits:
        rules["rate_limits"] = limits
    if glob := scope_out(st.global_scope):
        rules["global"] = glob
    providers, models = groups_out(st)
    if providers:
        rules["providers"] = [scope_out(s) for s in providers]
    if all_models := [scope_out(s) for s in [*st.models.values(), *models]]:
        rules["models"] = all_models
    for key, table in (("customers", st.customers), ("teams", st.teams), ("keys", st.keys)):
        if table:
            rules[key] = [scope_out(s) for s in table.values()]
    if st.credentials:
        rules["credentials"] = list(st.credentials.values())
    if st.azure_deployments:
        rules["azure_deployments"] = st.azure_deployments
    if st.prices:
        rules["prices"] = st.prices
    if hosts:
        rules["hosts"] = hosts
    if not budgets and not limits:
        # Bifrost with no budget or rate limit caps nothing; spendfuse starts such rules only
        # when they say that is meant.
        rules["allow_unlimited"] = True
        st.notes.append("no budget or rate limit applies, as in Bifrost: allow_unlimited is set")
    check_secrets(st, rules)
    return rules


def check_secrets(st: _State, rules: dict[str, Any]) -> None:
    """No key's value may reach the output, even inside a name someone copied it into."""
    texts = list(_strings(rules))
    for path, secret in st.secrets.items():
        if any(secret == t or (len(secret) >= 8 and secret in t) for t in texts):
            st.bad(f"{path}.value", "appears elsewhere in this configuration (a name?); refusing to print it")


def _strings(value: object) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def convert_with_files(
    data: object,
    *,
    environ: Mapping[str, str] | None = None,
    self_hosted_price: Mapping[str, Decimal] | None = None,
    secrets_dir: str | None = None,
) -> tuple[dict[str, Any], list[str], dict[str, str]]:
    """`convert_with_notes`, where `secrets_dir` (a directory path) takes the secrets the rules
    must not hold: a literal provider key becomes a credential reading `DIR/<id>.key`, and a
    virtual key without a value gets a generated one in `DIR/<id>.vk`. Returns the files to write
    (path -> content) besides the rules and notes; the caller writes them, mode 0600."""
    st = _State(_locate(data), environ, self_hosted_price)
    st.secrets_dir = None if secrets_dir is None else secrets_dir.rstrip("/") or "/"
    rules = run(st)
    if st.problems:
        raise BifrostImportError(st.problems)
    return rules, st.notes, st.files


def convert_with_notes(
    data: object,
    *,
    environ: Mapping[str, str] | None = None,
    self_hosted_price: Mapping[str, Decimal] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """`convert`, plus notes worth a reader's attention (what was left out because it governs
    nothing, keys that may use nothing); `to_yaml` prints them in the header. Notes starting
    with "warning: " name a path where Bifrost's code and its docs disagree (the docs are
    followed). `self_hosted_price` ({input_mtok, output_mtok}) prices the models of self-hosted
    providers that no pricing override prices."""
    rules, notes, _ = convert_with_files(data, environ=environ, self_hosted_price=self_hosted_price)
    return rules, notes


def convert(
    data: object,
    *,
    environ: Mapping[str, str] | None = None,
    self_hosted_price: Mapping[str, Decimal] | None = None,
) -> dict[str, Any]:
    """spendfuse version 2 rules equivalent to the Bifrost governance in `data` (a parsed
    config.json or Helm values file), as a plain dict of plain values, except that amounts are
    Decimal as written: print it with `to_yaml` (yaml.safe_dump has no Decimal). Virtual key values
    are hashed into `secret_sha256` and never appear in the result; a value `env.NAME` is read from
    `environ` when given.

    Raises BifrostImportError listing every field it cannot translate exactly."""
    return convert_with_notes(data, environ=environ, self_hosted_price=self_hosted_price)[0]
