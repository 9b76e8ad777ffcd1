"""A virtual key's provider configs: `allow_lists` turns them into spendfuse's per-key
`allowed_providers`, `allowed_models`, `denied_models` and `credentials`, and, where models differ
per provider or a provider config carries a budget or rate limit, a `providers:` entry per
provider (key × provider). Problems: providers that share a genai-prices id allowed differently,
key lists naming provider keys the file does not define. `white_list` reads one Bifrost WhiteList;
`model_rule` what one provider config lets through."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from governance.bifrost.providers import _MEMBERS
from governance.bifrost.schema import _PROVIDER_CONFIG
from governance.bifrost.state import _Scope, _State

# What one provider config of a virtual key lets through: None (nothing), or
# (kind, allowed, denied) with names case-folded: ("all", {}, denied) or ("some", allowed, {}).
_Rule = tuple[str, frozenset[str], frozenset[str]]
_ERROR: _Rule = ("error", frozenset(), frozenset())  # a problem was reported


def white_list(
    st: _State, value: object, path: str, empty_means_all: bool, names: dict[str, str]
) -> _Rule | None:
    """A Bifrost WhiteList as ("all" | "some" | "none", folded names, {}); None after a problem.
    Original spellings go into `names` (folded -> name)."""
    if value is None or value == []:
        return ("all" if empty_means_all else "none"), frozenset(), frozenset()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        st.bad(path, "must be a list of names")
        return None
    if "*" in value:
        if len(value) > 1:
            st.bad(path, "Bifrost allows '*' only alone")
            return None
        return "all", frozenset(), frozenset()
    folded: set[str] = set()
    for j, name in enumerate(value):
        if "*" in name:
            # Bifrost compares this name literally; spendfuse would read it as a pattern.
            st.bad(f"{path}[{j}]", f"{name!r}: Bifrost matches it literally, spendfuse as a pattern")
            return None
        if name.lower() in folded:
            st.bad(f"{path}[{j}]", f"{name!r} is listed twice (Bifrost compares case-insensitively)")
            return None
        folded.add(name.lower())
        names.setdefault(name.lower(), name)
    return "some", frozenset(folded), frozenset()


def _key_names(st: _State, pc: Mapping[str, Any], where: str) -> tuple[object, str]:
    """A provider config's key list (`key_ids`, or Helm's `keys: [{name}]`) and its path."""
    keys = pc.get("keys")
    if keys is None:
        return pc.get("key_ids"), f"{where}.key_ids"
    if pc.get("key_ids") is not None:
        st.bad(f"{where}.keys", "set key_ids or keys, not both")
        return None, f"{where}.keys"
    if not isinstance(keys, list) or not all(
        isinstance(k, Mapping) and isinstance(k.get("name"), str) for k in keys
    ):
        st.bad(f"{where}.keys", "must be a list of {name: provider key name}")
        return None, f"{where}.keys"
    return [k["name"] for k in keys], f"{where}.keys"


def _credentials(
    st: _State, provider: str, names: frozenset[str], spelled: dict[str, str], where: str
) -> list[str] | None:
    """The custody credentials a provider config's key list names; None after a problem."""
    out: list[str] = []
    for folded in sorted(names):
        name = spelled[folded]
        if (provider, name) not in st.key_refs:
            st.bad(
                where,
                f"names provider key {name!r}, which this file does not define under "
                f"{st.src.providers_path}.{provider}.keys: spendfuse must know where to read it",
            )
            return None
        cred = st.key_refs[provider, name]
        if cred is not None:
            out.append(cred)
    return out


def model_rule(
    st: _State, pc: Mapping[str, Any], where: str, names: dict[str, str], creds: dict[str, list[str] | None]
) -> _Rule | None:
    """What one provider config lets through (see _Rule); _ERROR after a problem. The custody
    credentials its key list names go into `creds[provider]` (None: every one of the provider).

    As Bifrost's Helm governance docs say, a provider config without a key list may use every key
    of its provider; one without `allowed_models` is read as every model (Bifrost's code since 1.5
    reads both as nothing: a warning names the path)."""
    v1 = st.src.empty_allows_all
    provider = str(pc.get("provider"))
    value, keys_path = _key_names(st, pc, where)
    if value is None and not v1 and not (pc.get("keys") is not None or pc.get("key_ids") is not None):
        st.warn(
            keys_path,
            f"no key list: every {provider} key, as the Helm governance docs say (Bifrost's code reads none)",
        )
    spelled: dict[str, str] = {}
    keys = white_list(st, value, keys_path, True if value is None else v1, spelled)
    models_value = pc.get("allowed_models")
    if models_value is None and not v1:
        st.warn(
            f"{where}.allowed_models",
            "unset: every model, as the Helm governance docs' examples use it (Bifrost's code reads none)",
        )
    allowed = white_list(
        st, models_value, f"{where}.allowed_models", True if models_value is None else v1, names
    )
    # An empty blacklist blocks nothing, whatever the version.
    denied = white_list(st, pc.get("blacklisted_models") or None, f"{where}.blacklisted_models", False, names)
    if keys is None or allowed is None or denied is None:
        return _ERROR
    if keys[0] == "some":
        named = _credentials(st, provider, keys[1], spelled, keys_path)
        if named is None:
            return _ERROR
        creds[provider] = named
    else:
        creds[provider] = None
    if keys[0] == "none" or allowed[0] == "none" or denied[0] == "all":
        return None  # no API key to serve it, no model allowed, or every model blocked
    if allowed[0] == "all":
        return "all", frozenset(), denied[1]
    left = allowed[1] - denied[1]
    return ("some", left, frozenset()) if left else None


def allow_lists(st: _State, vk: Mapping[str, Any], path: str, scope: _Scope, calendar: bool) -> None:
    """allowed_providers / allowed_models / denied_models / credentials of key `scope` equal to
    its provider_configs; where the models differ per provider, or a provider config carries a
    budget or rate limit, a `providers:` entry per provider (`scope.nested`), whose limits follow
    the key's calendar alignment."""
    out = scope.out
    configs = vk.get("provider_configs")
    if not _has_configs(st, configs, path, out):
        return
    assert isinstance(configs, list)
    names: dict[str, str] = {}
    creds: dict[str, list[str] | None] = {}
    limited: dict[str, tuple[Mapping[str, Any], str]] = {}
    rules = _provider_rules(st, configs, path, names, creds, limited)
    if rules is None:
        return
    nested = per_provider_limits(st, limited, path, calendar)
    by_id: dict[str, _Rule] = {}
    for provider, rule in rules.items():
        if rule is None:
            continue
        gid = st.provider(provider, path)
        assert gid is not None  # _provider_rules checked it
        siblings = {m: rules.get(m) for m in _siblings(st, gid, provider)}
        if len(set(siblings.values())) > 1:
            st.bad(
                f"{path}.provider_configs",
                f"{', '.join(siblings)} are all {gid!r} in spendfuse, so they must allow the same "
                f"models; here: {_describe(siblings, names)}",
            )
            return
        by_id[gid] = rule
    distinct = set(by_id.values())
    out["allowed_providers"] = sorted(by_id)
    _key_credentials(st, rules, creds, out)
    if len(distinct) > 1:  # models differ per provider: each allowed provider gets its own lists
        for gid, rule in by_id.items():
            _models_out(nested.setdefault(gid, _Scope(path, {"provider": gid})).out, rule, names)
    elif distinct:
        _models_out(out, distinct.pop(), names)
    else:
        st.notes.append(f"{path}: its provider_configs allow no model, so the key may use nothing")
    scope.nested = [nested[g] for g in sorted(nested)]


def _models_out(out: dict[str, Any], rule: _Rule, names: Mapping[str, str]) -> None:
    """`allowed_models` / `denied_models` of one rule into `out` (a key or a key's provider)."""
    kind, models, denied = rule
    if kind == "some":
        out["allowed_models"] = sorted(names[m] for m in models)
    elif denied:
        out["denied_models"] = sorted(names[m] for m in denied)


def per_provider_limits(
    st: _State, limited: Mapping[str, tuple[Mapping[str, Any], str]], path: str, calendar: bool
) -> dict[str, _Scope]:
    """A key × provider scope per provider whose config carries a budget or rate limit, by
    provider id; two Bifrost providers of one id (gemini, vertex) cannot both carry limits."""
    nested: dict[str, _Scope] = {}
    for provider, (pc, where) in limited.items():
        gid = st.provider(provider, where)
        assert gid is not None  # _provider_rules checked it
        if gid in nested:
            st.bad(
                where,
                f"a second provider config with limits on {gid!r}: spendfuse counts them as one provider",
            )
            continue
        nested[gid] = _Scope(where, {"provider": gid})
        st.attach_all(pc, where, nested[gid], calendar, calendar)
    return nested


def _has_configs(st: _State, configs: object, path: str, out: dict[str, Any]) -> bool:
    """Whether a key's provider_configs list is there to read. Unset is every provider (the Helm
    governance docs; Bifrost's code since 1.5 allows none: a warning), `[]` none."""
    if configs is None:
        if not st.src.empty_allows_all:
            st.warn(
                f"{path}.provider_configs",
                "unset: every provider, as the Helm governance docs say (Bifrost's code since 1.5 "
                "allows none)",
            )
        return False
    if configs == []:
        if not st.src.empty_allows_all:
            out["allowed_providers"] = []
            st.notes.append(
                f"{path}: provider_configs is empty, which allows no provider, so the key may use nothing"
            )
        return False
    if not isinstance(configs, list):
        st.bad(f"{path}.provider_configs", "must be a list")
        return False
    return True


def _siblings(st: _State, gid: str, provider: str) -> tuple[str, ...]:
    """The Bifrost providers spendfuse cannot tell apart from `provider` (gemini and vertex are
    both `google`). When the file configures its providers, one it does not configure serves
    nothing in Bifrost, so it need not be allowed alike."""
    members = _MEMBERS.get(gid, (provider,))
    if st.src.providers is None:
        return members
    return tuple(m for m in members if m in st.configured or m == provider)


def _key_credentials(
    st: _State, rules: dict[str, _Rule | None], creds: dict[str, list[str] | None], out: dict[str, Any]
) -> None:
    """`credentials:` of the key, when a provider config names some provider keys: the named
    ones, plus every credential of the providers whose configs name none."""
    if all(v is None for v in creds.values()):
        return
    ids: list[str] = []
    for provider, rule in rules.items():
        if rule is None:
            continue
        named = creds.get(provider)
        ids += st.provider_creds.get(provider, []) if named is None else named
    out["credentials"] = sorted(dict.fromkeys(ids))


def _provider_rules(
    st: _State,
    configs: list[Any],
    path: str,
    names: dict[str, str],
    creds: dict[str, list[str] | None],
    limited: dict[str, tuple[Mapping[str, Any], str]],
) -> dict[str, _Rule | None] | None:
    """What each provider config of a key lets through, by Bifrost provider name (see _Rule);
    None when any of them is a problem (all are checked, so all problems are reported). Configs
    carrying a budget or rate limit go into `limited`, with their paths."""
    rules: dict[str, _Rule | None] = {}
    ok = True
    for j, pc in enumerate(configs):
        where = f"{path}.provider_configs[{j}]"
        if not st.fields(pc, _PROVIDER_CONFIG, where):
            ok = False
            continue
        assert isinstance(pc, Mapping)
        provider = pc.get("provider")
        if st.provider(provider, f"{where}.provider") is None:
            ok = False
            continue
        assert isinstance(provider, str)
        if provider in rules:
            st.bad(f"{where}.provider", f"{provider!r} has two provider configs")
            ok = False
            continue
        rules[provider] = model_rule(st, pc, where, names, creds)
        if pc.get("budget_id") is not None or pc.get("rate_limit_id") is not None:
            limited[provider] = (pc, where)
        ok = ok and rules[provider] != _ERROR
    return rules if ok else None


def _describe(rules: Mapping[str, _Rule | None], names: Mapping[str, str]) -> str:
    parts = []
    for provider, rule in sorted(rules.items()):
        if rule is None:
            parts.append(f"{provider}: none")
        elif rule[0] == "all":
            parts.append(
                f"{provider}: all" + (f" but {sorted(names[m] for m in rule[2])}" if rule[2] else "")
            )
        else:
            parts.append(f"{provider}: {sorted(names[m] for m in rule[1])}")
    return "; ".join(parts)
