"""Budgets and rate limits: `define_budget` and `define_rate_limit` read one definition each into
the conversion's tables, `define_budgets` reads the `budgets` section and returns the owners the
budgets name, `own_budget` attaches a budget to the owner it names once the owners exist, and
`limits_out` writes the spendfuse budgets or rate limits, windows converted to the calendar or
rolling kind of their owners (unattached ones are left out with a note)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from governance.bifrost.durations import _Duration, _parse_duration, _reset
from governance.bifrost.schema import _BUDGET, _HELM_RATE_LIMIT, _OWNERS, _RATE_LIMIT
from governance.bifrost.state import _decimal, _Limit, _State

# Output order of a budget's or rate limit's fields, as a person would write them.
_FIELD_ORDER = (
    "id",
    "max_usd",
    "reset",
    "max_requests",
    "requests_reset",
    "max_tokens",
    "tokens_reset",
    "count_tokens",
    "calendar",
    "timezone",
)
_DURATION_FIELD = {
    "reset": "reset_duration",
    "tokens_reset": "token_reset_duration",
    "requests_reset": "request_reset_duration",
}


def define_budget(st: _State, obj: object, path: str, allowed: set[str]) -> str | None:
    """Define one budget; its id, or None (a problem)."""
    if not st.fields(obj, allowed, path):
        return None
    assert isinstance(obj, Mapping)
    ident = st.ident(obj, "id", path)
    amount = _decimal(obj.get("max_limit"))
    if amount is None or amount < 0:
        st.bad(f"{path}.max_limit", f"must be a non-negative number of USD, not {obj.get('max_limit')!r}")
    duration = _parse_duration(obj.get("reset_duration"))
    if isinstance(duration, str):
        st.bad(f"{path}.reset_duration", duration)
    st.no_state(obj, path, "current_usage", "last_reset")
    st.deprecated_calendar(obj, path)
    if ident is None or amount is None or amount < 0 or isinstance(duration, str):
        return None
    if ident in st.budgets:
        st.bad(f"{path}.id", f"duplicate budget id {ident!r} (also {st.budgets[ident].path})")
        return None
    st.budgets[ident] = _Limit(path, {"id": ident, "max_usd": amount}, {"reset": duration})
    return ident


def define_rate_limit(st: _State, obj: object, path: str) -> None:
    """Define one rate limit (token and/or request limit, each with its window), or report why not."""
    if st.src.helm:
        ok = st.fields(
            obj, _HELM_RATE_LIMIT, path, "the Bifrost chart passes only id and the token/request limits"
        )
    else:
        ok = st.fields(obj, _RATE_LIMIT, path)
    if not ok:
        return
    assert isinstance(obj, Mapping)
    ident = st.ident(obj, "id", path)
    out: dict[str, Any] = {"id": ident}
    durations: dict[str, _Duration] = {}
    for part, max_out, reset_out in (
        ("token", "max_tokens", "tokens_reset"),
        ("request", "max_requests", "requests_reset"),
    ):
        st.no_state(obj, path, f"{part}_current_usage", f"{part}_last_reset")
        limit, reset = obj.get(f"{part}_max_limit"), obj.get(f"{part}_reset_duration")
        if limit is None and reset is None:
            continue
        n = _decimal(limit)
        if n is None or n != n.to_integral_value() or n <= 0:
            # Bifrost refuses a limit of 0 or less, or one without its duration.
            st.bad(f"{path}.{part}_max_limit", f"must be a whole number above 0, not {limit!r}")
            ident = None
        duration = _parse_duration(reset)
        if isinstance(duration, str):
            st.bad(f"{path}.{part}_reset_duration", duration)
            ident = None
        elif n is not None:
            out[max_out] = int(n)
            durations[reset_out] = duration
    metric = obj.get("metric")
    if metric is not None and (metric not in ("tokens", "requests") or set(durations) - {f"{metric}_reset"}):
        st.bad(f"{path}.metric", f"{metric!r} does not match the limits it sets")
    st.deprecated_calendar(obj, path)
    if ident is None:
        return
    if ident in st.limits:
        st.bad(f"{path}.id", f"duplicate rate limit id {ident!r} (also {st.limits[ident].path})")
        return
    if "max_tokens" in out:
        out["count_tokens"] = "total"  # Bifrost counts input + output tokens
    st.limits[ident] = _Limit(path, out, durations)


def define_budgets(st: _State) -> list[tuple[str, str, object, str]]:
    """Define the `budgets` section; the owner each budget names, as (budget id, owner field,
    owner id, path), to attach once the owners are defined."""
    owned: list[tuple[str, str, object, str]] = []
    path, items = st.section("budgets")
    for i, obj in enumerate(items):
        where = f"{path}[{i}]"
        ident = define_budget(st, obj, where, _BUDGET)
        if ident is None:
            continue
        assert isinstance(obj, Mapping)
        owners = [k for k in _OWNERS if obj.get(k) is not None]
        if len(owners) > 1:
            st.bad(where, f"a budget has at most one owner, here {', '.join(owners)}")
        elif owners == ["provider_config_id"]:
            st.bad(
                f"{where}.provider_config_id",
                "a budget on one provider of one key: spendfuse attaches limits to a key or to a "
                "provider, not to the pair",
            )
        elif owners:
            owned.append((ident, owners[0], obj[owners[0]], f"{where}.{owners[0]}"))
    return owned


def own_budget(st: _State, budget: str, owner: str, target: object, where: str) -> None:
    """Attach a budget by the owner it names (budgets[].virtual_key_id, team_id, ...)."""
    if owner == "model_config_id":
        if not isinstance(target, str) or target not in st.model_configs:
            st.bad(where, f"unknown model config {target!r}")
            return
        resolved = st.model_configs[target]
        if resolved is not None:  # None: the model config itself is already a problem
            st.attach("budget", budget, resolved[0], resolved[1], where)
        return
    kind, table = {
        "virtual_key_id": ("key", st.keys),
        "team_id": ("team", st.teams),
        "customer_id": ("customer", st.customers),
    }[owner]
    if not isinstance(target, str) or target not in table:
        st.bad(where, f"unknown {owner[:-3].replace('_', ' ')} {target!r}")
        return
    st.attach("budget", budget, table[target], st.calendar[kind, target], where)


def limits_out(st: _State, table: dict[str, _Limit], kind: str) -> list[dict[str, Any]]:
    """The spendfuse budgets or rate limits: windows converted, unattached ones left out."""
    out: list[dict[str, Any]] = []
    for ident, limit in table.items():
        if not limit.owners:
            st.notes.append(f"{limit.path}: {kind} {ident!r} is attached to nothing in Bifrost; left out")
            continue
        if not limit.durations:
            st.notes.append(f"{limit.path}: rate limit {ident!r} limits nothing; left out")
            continue
        calendars = {cal for cal, _ in limit.owners}
        if len(calendars) > 1:
            aligned = ", ".join(p for cal, p in limit.owners if cal)
            rolling = ", ".join(p for cal, p in limit.owners if not cal)
            st.bad(
                limit.path,
                f"shared by calendar-aligned ({aligned}) and rolling ({rolling}) owners; "
                "a spendfuse limit has one kind of window",
            )
            continue
        calendar = calendars.pop()
        item = dict(limit.out)
        aligned_windows: set[bool] = set()
        for key, duration in limit.durations.items():
            converted = _reset(duration, calendar)
            if isinstance(converted, str):
                st.bad(f"{limit.path}.{_DURATION_FIELD[key]}", converted)
                break
            item[key], aligned = converted
            aligned_windows.add(aligned)
        else:
            if len(aligned_windows) > 1:
                st.bad(
                    limit.path,
                    "calendar-aligned, and Bifrost aligns one of its windows (d, w, M, Y) but not the "
                    "other (shorter); a spendfuse rate limit has one kind of window",
                )
                continue
            item["calendar"] = aligned_windows.pop()
            if item["calendar"]:
                item["timezone"] = "UTC"  # Bifrost aligns windows in UTC
            out.append({k: item[k] for k in _FIELD_ORDER if k in item})
    return out
