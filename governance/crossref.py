"""What pydantic cannot see field by field in a rules file: duplicate ids, references to ids
that do not exist, limits attached nowhere (settings that would silently do nothing), and
allow-lists that allow nothing. Each check returns the problems it finds, at their places."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from governance.crossref_deployments import credential_host_problems, deployment_problems
from governance.hostrules import host_table
from governance.rulefile import Problem

if TYPE_CHECKING:
    from governance.limits import Key
    from governance.policymodel import Policy


def reference_problems(p: Policy) -> list[Problem]:
    """Every cross-reference problem of `p` (fatal ones and warnings), in the order of the file's
    sections."""
    return [
        *_duplicate_ids(p),
        *_shared_secrets(p),
        *_attachments(p),
        *_provider_scopes(p),
        *_memberships(p),
        *_keys(p),
        *deployment_problems(p),
        *credential_host_problems(p),
    ]


def _duplicate_ids(p: Policy) -> list[Problem]:
    out: list[Problem] = []
    for field, items in (
        ("budgets", p.budgets),
        ("rate_limits", p.rate_limits),
        ("customers", p.customers),
        ("teams", p.teams),
        ("keys", p.keys),
        ("credentials", p.credentials),
    ):
        first: dict[str, int] = {}
        for i, item in enumerate(items):
            if item.id in first:
                out.append(
                    Problem((field, i, "id"), f"duplicate id {item.id!r} (first at {field}.{first[item.id]})")
                )
            first.setdefault(item.id, i)
    return out


def _shared_secrets(p: Policy) -> list[Problem]:
    out: list[Problem] = []
    secrets: dict[str, str] = {}
    for i, k in enumerate(p.keys):
        if k.secret_sha256 is not None and k.secret_sha256 in secrets:
            out.append(
                Problem(
                    ("keys", i, "secret_sha256"),
                    f"key {k.id!r} has the same secret as {secrets[k.secret_sha256]!r}",
                )
            )
        elif k.secret_sha256 is not None:
            secrets[k.secret_sha256] = k.id
    return out


def _scopes(p: Policy) -> list[tuple[tuple[str | int, ...], Any]]:
    scopes: list[tuple[tuple[str | int, ...], Any]] = [(("global",), p.global_scope)]
    for field in ("providers", "models", "customers", "teams", "keys"):
        scopes += [((field, i), s) for i, s in enumerate(getattr(p, field))]
    scopes += [
        (("keys", i, "providers", j), kp) for i, k in enumerate(p.keys) for j, kp in enumerate(k.providers)
    ]
    return scopes


def _attachments(p: Policy) -> list[Problem]:
    """Budgets and rate limits attached by unknown id, twice, or nowhere."""
    out: list[Problem] = []
    budget_ids = {b.id for b in p.budgets}
    limit_ids = {r.id for r in p.rate_limits}
    used: set[str] = set()
    used_limits: set[str] = set()
    for loc, scope in _scopes(p):
        for j, bid in enumerate(scope.budgets):
            used.add(bid)
            if bid not in budget_ids:
                out.append(Problem((*loc, "budgets", j), f"unknown budget id {bid!r}"))
        for j, rid in enumerate(scope.rate_limits):
            used_limits.add(rid)
            if rid not in limit_ids:
                out.append(Problem((*loc, "rate_limits", j), f"unknown rate limit id {rid!r}"))
        for what, ids in (("budget", scope.budgets), ("rate limit", scope.rate_limits)):
            for dupe in sorted({x for x in ids if ids.count(x) > 1}):
                out.append(Problem(loc, f"{what} {dupe!r} attached twice"))
    for i, b in enumerate(p.budgets):
        if b.id not in used:
            out.append(
                Problem(("budgets", i), f"budget {b.id!r} is attached to no scope, so it limits nothing")
            )
    for i, r in enumerate(p.rate_limits):
        if r.id not in used_limits:
            out.append(
                Problem(
                    ("rate_limits", i), f"rate limit {r.id!r} is attached to no scope, so it limits nothing"
                )
            )
    return out


def _provider_scopes(p: Policy) -> list[Problem]:
    """Provider and model scopes naming a provider no metered host is priced as, or repeated."""
    out: list[Problem] = []
    known_providers = {e.provider for e in host_table(p.hosts).entries if e.family and e.provider}
    seen_scopes: dict[str, str] = {}
    for field, items in (("providers", p.providers), ("models", p.models)):
        for i, item in enumerate(items):
            provider = item.provider
            if provider is not None and provider not in known_providers:
                out.append(
                    Problem(
                        (field, i, "provider"),
                        f"unknown provider {provider!r}: no metered host is priced as it "
                        f"(known: {', '.join(sorted(known_providers))})",
                    )
                )
            name = f"{field}:{provider}/{getattr(item, 'model', '')}"
            if name in seen_scopes:
                out.append(Problem((field, i), f"the same scope as {seen_scopes[name]}: merge their limits"))
            seen_scopes.setdefault(name, f"{field}.{i}")
    return out


def _memberships(p: Policy) -> list[Problem]:
    """`require_key` with no key; teams naming unknown customers."""
    out: list[Problem] = []
    if p.require_key and not p.keys:
        out.append(
            Problem(("require_key",), "require_key with no keys: every client is refused", fatal=False)
        )
    customers = {c.id for c in p.customers}
    for i, t in enumerate(p.teams):
        if t.customer is not None and t.customer not in customers:
            out.append(Problem(("teams", i, "customer"), f"unknown customer {t.customer!r}"))
    return out


def _keys(p: Policy) -> list[Problem]:
    """Each key's problems, key by key."""
    customers = {c.id for c in p.customers}
    teams = {t.id for t in p.teams}
    listeners: dict[str, str] = {}  # listener -> the key it is given to
    out: list[Problem] = []
    credentials = {c.id for c in p.credentials}
    for i, k in enumerate(p.keys):
        out += _key_problems(i, k, teams, customers, listeners)
        out += [
            Problem(("keys", i, "credentials", j), f"unknown credential {c!r}")
            for j, c in enumerate(k.credentials or ())
            if c not in credentials
        ]
        named = [kp.provider for kp in k.providers]
        out += [
            Problem(("keys", i, "providers", j), f"provider {kp.provider!r} has two entries on key {k.id!r}")
            for j, kp in enumerate(k.providers)
            if named.index(kp.provider) != j
        ]
    return out


def _key_problems(
    i: int, k: Key, teams: set[str], customers: set[str], listeners: dict[str, str]
) -> list[Problem]:
    """A key naming an unknown team or customer, one nothing can use, a listener already another
    key's, and allow-lists that allow nothing. Records the key's listeners in `listeners`."""
    out: list[Problem] = []
    if k.team is not None and k.team not in teams:
        out.append(Problem(("keys", i, "team"), f"unknown team {k.team!r}"))
    if k.customer is not None and k.customer not in customers:
        out.append(Problem(("keys", i, "customer"), f"unknown customer {k.customer!r}"))
    if k.secret_sha256 is None and not k.listeners:
        out.append(
            Problem(("keys", i), f"key {k.id!r} has no secret_sha256 and no listeners: nothing can use it")
        )
    for j, listener in enumerate(k.listeners):
        if listener in listeners:
            out.append(
                Problem(
                    ("keys", i, "listeners", j),
                    f"listener {listener!r} is already key {listeners[listener]!r}'s",
                )
            )
        listeners[listener] = k.id
    for field in ("allowed_models", "allowed_providers"):
        if getattr(k, field) == []:
            out.append(
                Problem(("keys", i, field), f"empty: key {k.id!r} may use no {field[8:]} at all", fatal=False)
            )
    return out
