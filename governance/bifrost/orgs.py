"""Customers and teams: `add_customer` and `add_team` read one each into the conversion, with the
budgets and rate limits they name (a customer's inline `budgets` lines included) and a team's
customer, and record whether their windows are calendar-aligned for the limits they own."""

from __future__ import annotations

from collections.abc import Mapping

from governance.bifrost.limits import define_budget
from governance.bifrost.schema import _BUDGET_LINE, _CUSTOMER, _TEAM
from governance.bifrost.state import _State


def add_customer(st: _State, obj: object, path: str) -> None:
    """Read one customer, its inline `budgets` lines or budget_id, and its rate limit."""
    ident = st.entry(obj, _CUSTOMER, path, st.customers, "customer")
    if ident is None:
        return
    assert isinstance(obj, Mapping)
    scope, calendar = st.owner(obj, path, "customer", ident, st.customers)
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
    ident = st.entry(obj, _TEAM, path, st.teams, "team")
    if ident is None:
        return
    assert isinstance(obj, Mapping)
    st.unsupported(obj, "business_unit_id", path, "spendfuse has no business units")
    for key in ("profile", "config", "claims"):
        st.unsupported(obj, key, path, "free-form team data spendfuse cannot interpret")
    scope, calendar = st.owner(obj, path, "team", ident, st.teams)
    customer = obj.get("customer_id")
    if customer is not None and st.link(customer, f"{path}.customer_id", st.customers, "customer"):
        scope.out["customer"] = customer
    if obj.get("budget_id") is not None:
        st.notes.append(
            f"{path}.budget_id: attached to the team, as the schema describes it; Bifrost's docs now "
            "attach a team's budgets by budgets[].team_id instead"
        )
    st.attach_all(obj, path, scope, calendar, calendar)
