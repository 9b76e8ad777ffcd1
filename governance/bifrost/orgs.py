"""Customers and teams: `add_customer` and `add_team` read one each into the conversion, with the
budgets and rate limits they name (a customer's inline `budgets` lines included) and a team's
customer, and record whether their windows are calendar-aligned for the limits they own."""

from __future__ import annotations

from collections.abc import Mapping

from governance.bifrost.limits import define_budget
from governance.bifrost.schema import _BUDGET_LINE, _CUSTOMER, _TEAM
from governance.bifrost.state import _Scope, _State


def add_customer(st: _State, obj: object, path: str) -> None:
    """Read one customer, its inline `budgets` lines or budget_id, and its rate limit."""
    if not st.fields(obj, _CUSTOMER, path):
        return
    assert isinstance(obj, Mapping)
    ident = st.ident(obj, "id", path)
    if ident is None:
        return
    if ident in st.customers:
        st.bad(f"{path}.id", f"duplicate customer id {ident!r}")
        return
    calendar = st.flag(obj, "calendar_aligned", path)
    st.calendar["customer", ident] = calendar
    scope = st.customers[ident] = _Scope(path, {"id": ident})
    if (name := st.text(obj, "name", path)) is not None:
        scope.out["name"] = name
    inline = obj.get("budgets")
    if inline is not None:
        if obj.get("budget_id") is not None:
            st.bad(f"{path}.budget_id", "Bifrost takes budgets or budget_id on a customer, not both")
        if not isinstance(inline, list):
            st.bad(f"{path}.budgets", "must be a list")
            inline = []
        for j, line in enumerate(inline):
            where = f"{path}.budgets[{j}]"
            if (b := define_budget(st, line, where, _BUDGET_LINE)) is not None:
                st.attach("budget", b, scope, calendar, where)
    st.attach_all(obj, path, scope, calendar, calendar)


def add_team(st: _State, obj: object, path: str) -> None:
    """Read one team, its customer, and the budget and rate limit it names."""
    if not st.fields(obj, _TEAM, path):
        return
    assert isinstance(obj, Mapping)
    ident = st.ident(obj, "id", path)
    if ident is None:
        return
    if ident in st.teams:
        st.bad(f"{path}.id", f"duplicate team id {ident!r}")
        return
    st.unsupported(obj, "business_unit_id", path, "spendfuse has no business units")
    for key in ("profile", "config", "claims"):
        st.unsupported(obj, key, path, "free-form team data spendfuse cannot interpret")
    calendar = st.flag(obj, "calendar_aligned", path)
    st.calendar["team", ident] = calendar
    scope = st.teams[ident] = _Scope(path, {"id": ident})
    if (name := st.text(obj, "name", path)) is not None:
        scope.out["name"] = name
    customer = obj.get("customer_id")
    if customer is not None:
        if customer not in st.customers:
            st.bad(f"{path}.customer_id", f"unknown customer {customer!r}")
        else:
            scope.out["customer"] = customer
    if obj.get("budget_id") is not None:
        st.notes.append(
            f"{path}.budget_id: attached to the team, as the schema describes it; Bifrost's docs now "
            "attach a team's budgets by budgets[].team_id instead"
        )
    st.attach_all(obj, path, scope, calendar, calendar)
