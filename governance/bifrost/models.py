"""Model configs and governed providers: `add_model_config` attaches a model config's limits to
the global scope, a model, a provider (or provider + model) or a virtual key; `add_provider`
attaches `governance.providers[]` limits to a provider; `groups_out` merges the Bifrost providers
that share one genai-prices id (gemini and vertex are both `google`) into one spendfuse scope, or
reports a problem when their limits differ."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from governance.bifrost.providers import _MEMBERS
from governance.bifrost.schema import _MODEL_CONFIG, _PROVIDER
from governance.bifrost.state import _Scope, _State


def add_model_config(st: _State, obj: object, path: str) -> None:
    """Read one model config, and attach its budgets and rate limits to the scope it targets."""
    if not st.fields(obj, _MODEL_CONFIG, path):
        return
    assert isinstance(obj, Mapping)
    ident = obj.get("id")
    if not isinstance(ident, str) or not ident:
        st.bad(f"{path}.id", "required, and must be text")
        return
    if ident in st.model_configs:
        st.bad(f"{path}.id", f"duplicate model config id {ident!r}")
        return
    st.model_configs[ident] = None
    model = obj.get("model_name")
    if not isinstance(model, str) or not model.strip():
        st.bad(f"{path}.model_name", "required, and must be text")
        return
    if model != "*" and "*" in model:
        st.bad(f"{path}.model_name", f"{model!r}: Bifrost matches it literally, spendfuse as a pattern")
        return
    provider = obj.get("provider")
    gid = None if provider is None else st.provider(provider, f"{path}.provider")
    if provider is not None and gid is None:
        return
    calendar = st.flag(obj, "calendar_aligned", path)
    target = _target(st, obj, path, model, provider, gid, calendar)
    if target is None:
        return
    scope, calendar = target
    # Model configs stamp their calendar alignment on their budgets only, not their rate limit.
    st.attach_all(obj, path, scope, calendar, False)
    st.model_configs[ident] = (scope, calendar)


def _target(
    st: _State,
    obj: Mapping[str, Any],
    path: str,
    model: str,
    provider: object,
    gid: str | None,
    calendar: bool,
) -> tuple[_Scope, bool] | None:
    """The scope a model config's limits count against, and their calendar alignment: a key (whose
    alignment they follow), the global scope, a model, or a provider group member; None after a
    problem."""
    kind = obj.get("scope") or "global"
    if kind == "virtual_key":
        vk = obj.get("scope_id")
        if not isinstance(vk, str) or vk not in st.keys:
            st.bad(f"{path}.scope_id", f"unknown virtual key {vk!r}")
            return None
        if model != "*" or provider is not None:
            st.bad(
                f"{path}.scope",
                "a limit on one model or provider of one virtual key: spendfuse attaches limits to a "
                "key, a model or a provider, not to a pair of them",
            )
            return None
        scope = st.keys[vk]
        calendar = st.calendar["key", vk]  # Bifrost: a key's model configs follow the key
    elif kind == "global":
        if obj.get("scope_id") is not None:
            st.bad(f"{path}.scope_id", "a global model config has no scope_id")
            return None
        if gid is None:
            # model_name "*" without a provider is every request (Bifrost's ModelConfigAllModels).
            scope = (
                st.global_scope
                if model == "*"
                else st.models.setdefault(model.lower(), _Scope(path, {"model": model}))
            )
        else:
            assert isinstance(provider, str)
            scope = st.group_member(gid, None if model == "*" else model, provider, path)
    else:
        st.bad(f"{path}.scope", f"{kind!r} scope: spendfuse governs keys, not users")
        return None
    return scope, calendar


def add_provider(st: _State, obj: object, path: str) -> None:
    """Attach a `governance.providers[]` entry's budget and rate limit to its provider."""
    if not st.fields(obj, _PROVIDER, path):
        return
    assert isinstance(obj, Mapping)
    name = obj.get("name")
    gid = st.provider(name, f"{path}.name")
    if gid is None:
        return
    assert isinstance(name, str)
    st.attach_all(obj, path, st.group_member(gid, None, name, path), False, False)


def groups_out(st: _State) -> tuple[list[_Scope], list[_Scope]]:
    """Provider scopes and provider-specific model scopes; every Bifrost provider sharing a
    genai-prices id must carry the same limits, or the shared scope would not be exact."""
    providers: list[_Scope] = []
    models: list[_Scope] = []
    for (gid, _), group in st.groups.items():
        members = group.members
        attached = {m: (frozenset(s.budgets), frozenset(s.rate_limits)) for m, s in members.items()}
        missing = [m for m in _MEMBERS.get(gid, ()) if m not in members]
        if missing or len(set(attached.values())) > 1:
            what = f"model {group.model!r} of " if group.model is not None else ""
            st.bad(
                ", ".join(s.path for s in members.values()),
                f"limits on {what}{', '.join(sorted(members))}: Bifrost's "
                f"{', '.join(_MEMBERS.get(gid, ()))} are "
                f"all {gid!r} in spendfuse, so each needs the same limits here",
            )
            continue
        first = next(iter(members.values()))
        out = {"provider": gid} if group.model is None else {"model": group.model, "provider": gid}
        (providers if group.model is None else models).append(
            _Scope(first.path, out, first.budgets, first.rate_limits)
        )
    return providers, models
