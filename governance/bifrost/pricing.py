"""Bifrost `pricing_overrides` (docs/providers/custom-pricing.mdx) as spendfuse price overrides:
`add_pricing_override` reads one entry into `st.prices` (scope `global`) or into the prices of a
self-hosted provider's host (scope `provider` naming it).

Contract: a price is taken only when it means the same here. The token prices
(`input_cost_per_token`, `output_cost_per_token`, `cache_read_input_token_cost`,
`cache_creation_input_token_cost`, USD per token) become USD per 1M tokens, exactly (Decimal).
Anything else is a problem naming its path: a price for one virtual key, user or provider key
(spendfuse prices a model alike for every caller), a wildcard pattern (Bifrost matches any name
that starts with it; spendfuse matches whole names and name-boundary prefixes), a tiered, batch,
priority or per-image price spendfuse cannot apply, or an override without both an input and an
output price. An override limited to some request types is applied to every metered request of
that model, with a warning.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from governance.bifrost.state import _decimal, _State

_FIELDS = {
    "id",
    "name",
    "scope_kind",
    "virtual_key_id",
    "provider_id",
    "provider_key_id",
    "user_id",
    "match_type",
    "pattern",
    "request_types",
    "pricing_patch",
    "patch",
    "config_hash",
}
# Bifrost's per-token prices -> spendfuse's per-1M-token ones.
_TOKEN_PRICES = {
    "input_cost_per_token": "input_mtok",
    "output_cost_per_token": "output_mtok",
    "cache_read_input_token_cost": "cache_read_mtok",
    "cache_creation_input_token_cost": "cache_write_mtok",
}
_METERED_TYPES = {"chat_completion", "text_completion", "responses"}
_MILLION = Decimal(1_000_000)


def add_pricing_override(st: _State, obj: object, path: str, by_host: dict[str, dict[str, Any]]) -> None:
    """Read one pricing override into `st.prices`, or into `by_host[provider]` (see the module
    docstring)."""
    if not st.fields(obj, _FIELDS, path):
        return
    assert isinstance(obj, Mapping)
    target = _target(st, obj, path, by_host)
    model = _model(st, obj, path)
    price = _price(st, obj, path)
    if target is None or model is None or price is None:
        return
    types = obj.get("request_types")
    if not isinstance(types, list) or not types:
        st.bad(f"{path}.request_types", "required: a list of request types")
        return
    if not _METERED_TYPES & set(types):
        st.notes.append(
            f"{path}: left out: it prices none of the requests spendfuse meters "
            f"({', '.join(sorted(_METERED_TYPES))})"
        )
        return
    if not _METERED_TYPES <= set(types):
        st.warn(
            f"{path}.request_types",
            f"applied to every metered request of {model!r}, not only {', '.join(map(str, types))}: "
            "spendfuse prices a model alike for every API",
        )
    if model in target:
        st.bad(f"{path}.pattern", f"a second price for {model!r}")
        return
    target[model] = price


def _target(
    st: _State, obj: Mapping[str, Any], path: str, by_host: dict[str, dict[str, Any]]
) -> dict[str, Any] | None:
    kind = obj.get("scope_kind")
    if kind == "global":
        return st.prices
    provider = obj.get("provider_id")
    if kind == "provider" and isinstance(provider, str) and provider in st.hosts:
        return by_host.setdefault(provider, {})
    if kind == "provider":
        st.bad(
            f"{path}.provider_id",
            f"a price for {provider!r} only: spendfuse prices a model alike on every provider it "
            "reaches, so this would reprice it elsewhere too (scope it global if that is meant)",
        )
        return None
    st.bad(f"{path}.scope_kind", f"{kind!r}: spendfuse prices a model alike for every key and caller")
    return None


def _model(st: _State, obj: Mapping[str, Any], path: str) -> str | None:
    pattern, match = obj.get("pattern"), obj.get("match_type")
    if not isinstance(pattern, str) or not pattern:
        st.bad(f"{path}.pattern", "required, and must be text")
        return None
    if match == "exact" and "*" not in pattern:
        return pattern
    if match == "wildcard":
        st.bad(
            f"{path}.pattern",
            f"{pattern!r}: Bifrost prices every model whose name starts with {pattern.rstrip('*')!r}; "
            "spendfuse's prices match whole names and name-boundary prefixes: write one exact "
            "override per model",
        )
        return None
    st.bad(f"{path}.match_type", f"{match!r} with pattern {pattern!r}: expected exact or wildcard")
    return None


def _price(st: _State, obj: Mapping[str, Any], path: str) -> dict[str, Decimal] | None:
    raw: object = obj.get("patch")
    where = f"{path}.patch"
    if raw is None and obj.get("pricing_patch") is not None:
        where = f"{path}.pricing_patch"
        try:
            raw = json.loads(str(obj["pricing_patch"]), parse_float=Decimal)
        except ValueError:
            st.bad(where, "is not JSON")
            return None
    if not isinstance(raw, Mapping):
        st.bad(where, "required: the prices the override sets")
        return None
    out: dict[str, Decimal] = {}
    ok = True
    for field, value in raw.items():
        if value is None:
            continue
        if field not in _TOKEN_PRICES:
            st.bad(f"{where}.{field}", "spendfuse's price overrides have no such price; it cannot be applied")
            ok = False
            continue
        d = _decimal(value)
        if d is None or d < 0:
            st.bad(f"{where}.{field}", "must be a number of USD per token, not below 0")
            ok = False
            continue
        out[_TOKEN_PRICES[field]] = (d * _MILLION).normalize()
    if ok and not {"input_mtok", "output_mtok"} <= set(out):
        st.bad(where, "sets no input or no output price: a spendfuse override needs both")
        return None
    return out if ok else None
