"""Virtual keys: `add_virtual_key` reads one into a spendfuse key: its value hashed into
`secret_sha256` (`key_secret` reads it, from the environment for `env.NAME`), its team or
customer, active flag, expiry, budgets and rate limits, and the allow-lists of its
provider_configs (`governance.bifrost.allow`)."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from governance.bifrost.allow import allow_lists
from governance.bifrost.schema import _VK
from governance.bifrost.state import _State


def key_secret(st: _State, obj: Mapping[str, Any], path: str, ident: str | None = None) -> str | None:
    """The key's value (read from `environ` for `env.NAME`); None after a problem. A missing value
    is generated, as Bifrost does, when there is a secrets directory to hand it out from."""
    value = obj.get("value")
    where = f"{path}.value"
    if (value is None or value == "") and st.secrets_dir is not None and ident is not None:
        value = f"sk-bf-{secrets.token_urlsafe(32)}"
        file = f"{st.secrets_dir}/{ident}.vk"
        st.files[file] = value
        st.notes.append(f"{where}: missing, so one was generated, as Bifrost does: hand out {file}")
        return value
    if value is None or value == "":
        st.bad(
            where,
            "missing: Bifrost would generate one, and spendfuse needs the value itself to hash it "
            "(--secrets-dir DIR generates one into DIR)",
        )
        return None
    if not isinstance(value, str):
        st.bad(where, "must be text")
        return None
    if value.startswith("env."):
        return st.env(value, where, "")
    if value.startswith("vault."):
        st.bad(where, "is a vault reference; spendfuse needs the key itself to hash it")
        return None
    return value


def add_virtual_key(st: _State, obj: object, path: str) -> None:
    """Read one virtual key into a spendfuse key (see the module docstring)."""
    if not st.fields(obj, _VK, path):
        return
    assert isinstance(obj, Mapping)
    ident = st.ident(obj, "id", path)
    secret = key_secret(st, obj, path, ident)
    if ident is None:
        return
    if ident in st.keys:
        st.bad(f"{path}.id", f"duplicate virtual key id {ident!r}")
        return
    st.unsupported(obj, "access_profile_id", path, "spendfuse has no access profiles")
    st.unsupported(obj, "mcp_configs", path, "spendfuse does not govern MCP tools")
    scope, calendar = st.owner(obj, path, "key", ident, st.keys)
    out = scope.out
    if secret is not None:
        out["secret_sha256"] = hashlib.sha256(secret.encode("utf-8")).hexdigest()
        st.secrets[path] = secret
        _hide_secret(st, out, path, secret)
    team, customer = obj.get("team_id"), obj.get("customer_id")
    if team is not None and customer is not None:
        st.bad(f"{path}.customer_id", "a virtual key belongs to a team or to a customer, not both")
    elif team is not None:
        if st.link(team, f"{path}.team_id", st.teams, "team"):
            out["team"] = team
    elif customer is not None:
        if st.link(customer, f"{path}.customer_id", st.customers, "customer"):
            out["customer"] = customer
    out["active"] = st.flag(obj, "is_active", path, default=True)
    expiry(st, obj, path, out)
    if obj.get("budget_id") is not None:
        st.notes.append(
            f"{path}.budget_id: attached to the key, as Bifrost 1.4 did; newer Bifrost and its Helm "
            "chart ignore a virtual key's budget_id (they attach budgets by budgets[].virtual_key_id)"
        )
    st.attach_all(obj, path, scope, calendar, calendar)
    allow_lists(st, obj, path, scope, calendar)


def _hide_secret(st: _State, out: dict[str, Any], path: str, secret: str) -> None:
    """A key whose id contains its own value (Bifrost's example config does this) would print the
    secret in the rules, logs and the ledger: its id becomes `vk-` + the hash's first 12 digits,
    with a note. References by the Bifrost id still resolve. (A name or any other field holding
    the value is still refused by `convert.check_secrets`.)"""
    if secret in out["id"]:
        out["id"] = f"vk-{out['secret_sha256'][:12]}"
        st.notes.append(f"{path}.id: contains the key's own value, so the key is named {out['id']} instead")


def expiry(st: _State, obj: Mapping[str, Any], path: str, out: dict[str, Any]) -> None:
    """`expires_at` as an ISO time with its zone into `out`, or a problem."""
    expires = obj.get("expires_at")
    if expires is None:
        return
    when = expires if isinstance(expires, datetime) else None  # YAML reads timestamps itself
    if isinstance(expires, str):
        try:
            when = datetime.fromisoformat(expires)
        except ValueError:
            when = None
    if when is None or when.tzinfo is None:
        st.bad(f"{path}.expires_at", f"{expires!r} is not an RFC 3339 time with a zone")
    else:
        out["expires_at"] = when.isoformat()
