"""A virtual key's allow-lists: `allow_lists` turns its `provider_configs` into spendfuse's
per-key `allowed_providers`, `allowed_models` and `denied_models` when they say exactly the same,
and reports a problem when they cannot (models allowed differently per provider, providers that
share a genai-prices id allowed differently, limits on one provider of one key, API key choice).
`white_list` reads one Bifrost WhiteList; `model_rule` what one provider config lets through."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from governance.bifrost.providers import _MEMBERS, PROVIDERS
from governance.bifrost.schema import _PROVIDER_CONFIG
from governance.bifrost.state import _State

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


def model_rule(st: _State, pc: Mapping[str, Any], where: str, names: dict[str, str]) -> _Rule | None:
    """What one provider config lets through (see _Rule); _ERROR after a problem."""
    v1 = st.src.empty_allows_all
    if pc.get("keys") not in (None, []):
        st.bad(f"{where}.keys", "limits the key to some provider API keys, which spendfuse does not choose")
        return _ERROR
    keys = white_list(st, pc.get("key_ids"), f"{where}.key_ids", v1, {})
    if keys is not None and keys[0] == "some":
        st.bad(
            f"{where}.key_ids",
            "limits the key to some provider API keys, which spendfuse does not choose",
        )
        return _ERROR
    allowed = white_list(st, pc.get("allowed_models"), f"{where}.allowed_models", v1, names)
    # An empty blacklist blocks nothing, whatever the version.
    denied = white_list(st, pc.get("blacklisted_models") or None, f"{where}.blacklisted_models", False, names)
    if keys is None or allowed is None or denied is None:
        return _ERROR
    if keys[0] == "none" or allowed[0] == "none" or denied[0] == "all":
        return None  # no API key to serve it, no model allowed, or every model blocked
    if allowed[0] == "all":
        return "all", frozenset(), denied[1]
    left = allowed[1] - denied[1]
    return ("some", left, frozenset()) if left else None


def allow_lists(st: _State, vk: Mapping[str, Any], path: str, out: dict[str, Any]) -> None:
    """allowed_providers / allowed_models / denied_models equal to the key's provider_configs,
    or a problem when spendfuse's per-key (not per-provider) lists cannot say the same."""
    configs = vk.get("provider_configs")
    if configs is None or configs == []:
        if not st.src.empty_allows_all:
            out["allowed_providers"] = []
            st.notes.append(
                f"{path}: no provider_configs, which allows no provider since Bifrost 1.5 "
                '(config.json `"version": 1` keeps the 1.4 meaning), so the key may use nothing'
            )
        return
    if not isinstance(configs, list):
        st.bad(f"{path}.provider_configs", "must be a list")
        return
    names: dict[str, str] = {}
    rules = _provider_rules(st, configs, path, names)
    if rules is None:
        return
    by_id: dict[str, _Rule] = {}
    for provider, rule in rules.items():
        if rule is None:
            continue
        gid = PROVIDERS[provider]
        siblings = {m: rules.get(m) for m in _MEMBERS[gid]}
        if len(set(siblings.values())) > 1:
            st.bad(
                f"{path}.provider_configs",
                f"{', '.join(_MEMBERS[gid])} are all {gid!r} in spendfuse, so they must allow the same "
                f"models; here: {_describe(siblings, names)}",
            )
            return
        by_id[gid] = rule
    distinct = set(by_id.values())
    if len(distinct) > 1:
        st.bad(
            f"{path}.provider_configs",
            f"allows different models per provider ({_describe(rules, names)}); spendfuse's allow-lists "
            "are per key, not per provider, so any union would let a model through on a provider that "
            "Bifrost refuses it on (give each provider its own virtual key)",
        )
        return
    out["allowed_providers"] = sorted(by_id)
    if not distinct:
        st.notes.append(f"{path}: its provider_configs allow no model, so the key may use nothing")
        return
    kind, models, denied = distinct.pop()
    if kind == "some":
        out["allowed_models"] = sorted(names[m] for m in models)
    elif denied:
        out["denied_models"] = sorted(names[m] for m in denied)


def _provider_rules(
    st: _State, configs: list[Any], path: str, names: dict[str, str]
) -> dict[str, _Rule | None] | None:
    """What each provider config of a key lets through, by Bifrost provider name (see _Rule);
    None when any of them is a problem (all are checked, so all problems are reported)."""
    rules: dict[str, _Rule | None] = {}
    ok = True
    for j, pc in enumerate(configs):
        where = f"{path}.provider_configs[{j}]"
        if not st.fields(pc, _PROVIDER_CONFIG, where):
            ok = False
            continue
        assert isinstance(pc, Mapping)
        for key in ("budget_id", "rate_limit_id"):
            if pc.get(key) is not None:
                st.bad(
                    f"{where}.{key}",
                    "a limit on one provider of one key: spendfuse attaches limits to a key or to a "
                    "provider, not to the pair, and either would widen or narrow it",
                )
                ok = False
        provider = pc.get("provider")
        if st.provider(provider, f"{where}.provider") is None:
            ok = False
            continue
        assert isinstance(provider, str)
        if provider in rules:
            st.bad(f"{where}.provider", f"{provider!r} has two provider configs")
            ok = False
            continue
        rules[provider] = model_rule(st, pc, where, names)
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
