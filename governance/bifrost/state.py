"""The state of one Bifrost conversion, and the checks every section shares. `_State` holds the
located section (`_Source`), every problem and note found so far, and the budgets, rate limits
and scopes built so far. Its methods read one field each (`fields`, `ident`, `text`, `flag`,
`unsupported`, ...) and report what is wrong with `bad`; `entry` and `owner` add a customer, team
or key, `link` checks a reference to one, and `attach` / `attach_all` attach a budget or rate
limit to a scope. The section modules (`limits`, `orgs`, `keys`, `allow`, `models`) fill it in;
`convert` runs them and builds the rules."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from governance.bifrost.durations import _Duration
from governance.bifrost.errors import _list
from governance.bifrost.locate import _Source
from governance.bifrost.providers import PROVIDERS

# spendfuse ids (governance.limits.Id).
_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def _decimal(value: object) -> Decimal | None:
    """A number as written: Decimal from its text, so 0.1 stays 0.1. None if not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
        return None
    try:
        d = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    return d if d.is_finite() else None


@dataclass
class _Limit:
    """A budget or rate limit definition, and every scope it is attached to."""

    path: str
    out: dict[str, Any]
    durations: dict[str, _Duration]  # output field ("reset", "tokens_reset", ...) -> Bifrost duration
    owners: list[tuple[bool, str]] = field(default_factory=list)  # (calendar-aligned owner, path)


@dataclass
class _Scope:
    """A spendfuse scope being built: its fields, and the ids attached to it."""

    path: str
    out: dict[str, Any]
    budgets: list[str] = field(default_factory=list)
    rate_limits: list[str] = field(default_factory=list)
    nested: list[_Scope] = field(default_factory=list)  # a key's per-provider entries (`providers:`)


@dataclass
class _ProviderGroup:
    """Bifrost scopes that land on one spendfuse provider (or provider + model) scope, per Bifrost
    provider: gemini and vertex both become `google`, so both must carry the same limits."""

    model: str | None
    members: dict[str, _Scope] = field(default_factory=dict)


class _State:
    """One conversion in progress: what has been built, and every problem and note found."""

    def __init__(
        self,
        src: _Source,
        environ: Mapping[str, str] | None,
        self_hosted_price: Mapping[str, Decimal] | None = None,
    ) -> None:
        self.src = src
        self.environ = environ
        self.self_hosted_price = self_hosted_price
        self.problems: list[str] = list(src.problems)
        self.notes: list[str] = []
        # custody: credential id -> its rules entry; (Bifrost provider, key name or id) -> the
        # credential id, or None for a key spendfuse does not hold; provider -> its credentials
        self.credentials: dict[str, dict[str, Any]] = {}
        self.key_refs: dict[tuple[str, str], str | None] = {}
        self.provider_creds: dict[str, list[str]] = {}
        self.azure_deployments: dict[str, str] = {}  # host/deployment -> model, from Azure keys
        self.configured: set[str] = set()  # Bifrost providers the file configures
        self.hosts: dict[str, dict[str, Any]] = {}  # Bifrost provider -> its operator host entry
        self.prices: dict[str, dict[str, Decimal]] = {}  # model -> price override
        self.budgets: dict[str, _Limit] = {}
        self.limits: dict[str, _Limit] = {}
        self.customers: dict[str, _Scope] = {}
        self.teams: dict[str, _Scope] = {}
        self.keys: dict[str, _Scope] = {}
        self.calendar: dict[tuple[str, str], bool] = {}  # ("key" | "team" | "customer", id) -> aligned
        self.global_scope = _Scope("", {})
        self.models: dict[str, _Scope] = {}  # global model configs without a provider, by folded name
        self.groups: dict[tuple[str, str | None], _ProviderGroup] = {}  # (genai id, folded model)
        # model config id -> (the scope its budgets count against, their calendar); None: refused
        self.model_configs: dict[str, tuple[_Scope, bool] | None] = {}
        self.secrets: dict[str, str] = {}  # virtual key path -> its value, to prove none is printed
        # `--secrets-dir`: where literal provider keys and generated virtual key values go, and
        # the files to write there (path -> content), which the caller writes 0600
        self.secrets_dir: str | None = None
        self.files: dict[str, str] = {}

    def bad(self, path: str, message: str) -> None:
        """Report a problem at `path`; the conversion goes on, to find every other one."""
        self.problems.append(f"{path}: {message}")

    def section(self, name: str) -> tuple[str, list[Any]]:
        """A governance section's path and entries; none when unset, or after a problem."""
        path = self.src.paths.get(name, f"{self.src.root}.{name}")
        value = self.src.governance.get(name)
        if value is None:
            return path, []
        if not isinstance(value, list):
            self.bad(path, "must be a list")
            return path, []
        return path, value

    def fields(self, obj: object, allowed: set[str], path: str, why: str = "not in Bifrost's schema") -> bool:
        """Whether `obj` is an object; each field it has outside `allowed` is a problem."""
        if not isinstance(obj, Mapping):
            self.bad(path, "must be an object")
            return False
        for key in obj:
            if key not in allowed:
                self.bad(f"{path}.{key}", f"unknown field ({why})")
        return True

    def ident(self, obj: Mapping[str, Any], key: str, path: str) -> str | None:
        """The required spendfuse id in `obj[key]`; None after a problem."""
        value = obj.get(key)
        if not isinstance(value, str) or not value:
            self.bad(f"{path}.{key}", "required, and must be text")
            return None
        if not _ID.fullmatch(value):
            self.bad(
                f"{path}.{key}", f"{value!r} is not a spendfuse id (letters, digits, _ . -; at most 128)"
            )
            return None
        return value

    def entry(
        self, obj: object, allowed: set[str], path: str, table: Mapping[str, Any], what: str
    ) -> str | None:
        """The id of `obj`, a new entry of `table` (a customer, a team): its fields checked against
        `allowed`, its `id` a spendfuse id not yet in `table`. None when `obj` is not an object or
        its id is wrong; an unknown field is a problem but the entry is still read."""
        if not self.fields(obj, allowed, path):
            return None
        assert isinstance(obj, Mapping)
        ident = self.ident(obj, "id", path)
        if ident is not None and ident in table:
            self.bad(f"{path}.id", f"duplicate {what} id {ident!r}")
            return None
        return ident

    def optional[T](self, obj: Mapping[str, Any], key: str, path: str, kind: type[T], what: str) -> T | None:
        """`obj[key]` when it is a `kind`; None when unset, or after a problem ("must be `what`")."""
        value = obj.get(key)
        if value is None:
            return None
        if not isinstance(value, kind):
            self.bad(f"{path}.{key}", f"must be {what}")
            return None
        return value

    def text(self, obj: Mapping[str, Any], key: str, path: str) -> str | None:
        """An optional text field; None when unset, or after a problem."""
        return self.optional(obj, key, path, str, "text")

    def flag(self, obj: Mapping[str, Any], key: str, path: str, default: bool = False) -> bool:
        """An optional true/false field; `default` when unset, or after a problem."""
        value = self.optional(obj, key, path, bool, "true or false")
        return default if value is None else value

    def unsupported(self, obj: Mapping[str, Any], key: str, path: str, why: str) -> None:
        """A field spendfuse has no equivalent for: fine when unset or empty, else a problem."""
        if obj.get(key) not in (None, [], {}, ""):
            self.bad(f"{path}.{key}", why)

    def no_state(self, obj: Mapping[str, Any], path: str, usage: str, last: str) -> None:
        # Usage exported from Bifrost's store: spendfuse's counters start at zero.
        used = obj.get(usage)
        if used is not None and _decimal(used) != 0:
            self.bad(
                f"{path}.{usage}", "usage already spent cannot be carried over; spendfuse starts at zero"
            )
        if obj.get(last) not in (None, ""):
            self.bad(f"{path}.{last}", "a window's start cannot be carried over")

    def deprecated_calendar(self, obj: Mapping[str, Any], path: str) -> None:
        value = obj.get("calendar_aligned")
        if value is True:
            self.bad(
                f"{path}.calendar_aligned",
                "deprecated in Bifrost, which moves it onto the owner (and so onto the owner's other "
                "limits); set calendar_aligned on the virtual key, team or customer instead",
            )
        elif value not in (None, False):
            self.bad(f"{path}.calendar_aligned", "must be true or false")

    def owner(
        self, obj: Mapping[str, Any], path: str, kind: str, ident: str, table: dict[str, _Scope]
    ) -> tuple[_Scope, bool]:
        """Add key, team or customer (`kind`) `ident` to `table`, named as `obj` names it; its
        scope, and whether its windows are calendar-aligned (also kept for the limits it owns)."""
        calendar = self.flag(obj, "calendar_aligned", path)
        self.calendar[kind, ident] = calendar
        scope = table[ident] = _Scope(path, {"id": ident})
        if (name := self.text(obj, "name", path)) is not None:
            scope.out["name"] = name
        return scope, calendar

    def link(self, value: object, path: str, table: Mapping[str, Any], what: str) -> bool:
        """Whether `value` names an entry of `table` (a team, a customer); a problem if not."""
        if value not in table:
            self.bad(path, f"unknown {what} {value!r}")
            return False
        return True

    def attach(self, kind: str, ident: object, scope: _Scope, calendar: bool, path: str) -> None:
        """Attach budget / rate limit `ident` to `scope`, whose windows are calendar-aligned or not."""
        table = self.budgets if kind == "budget" else self.limits
        if not isinstance(ident, str) or ident not in table:
            self.bad(path, f"unknown {kind} id {ident!r}")
            return
        table[ident].owners.append((calendar, path))
        (scope.budgets if kind == "budget" else scope.rate_limits).append(ident)

    def attach_all(
        self, obj: Mapping[str, Any], path: str, scope: _Scope, calendar: bool, rl_calendar: bool
    ) -> None:
        """Attach `obj`'s budget_id, budget_ids, rate_limit_id and rate_limit_ids to `scope`."""
        if obj.get("budget_id") is not None:
            self.attach("budget", obj["budget_id"], scope, calendar, f"{path}.budget_id")
        if obj.get("rate_limit_id") is not None:
            if obj.get("rate_limit_ids"):
                self.bad(f"{path}.rate_limit_id", "set rate_limit_id or rate_limit_ids, not both")
            self.attach("rate limit", obj["rate_limit_id"], scope, rl_calendar, f"{path}.rate_limit_id")
        for key, kind, cal in (
            ("budget_ids", "budget", calendar),
            ("rate_limit_ids", "rate limit", rl_calendar),
        ):
            ids = obj.get(key)
            if ids is None:
                continue
            if not isinstance(ids, list):
                self.bad(f"{path}.{key}", "must be a list of ids")
                continue
            for j, ident in enumerate(ids):
                self.attach(kind, ident, scope, cal, f"{path}.{key}[{j}]")

    def env(self, value: str, where: str, what: str) -> str | None:
        """`value`, or for `env.NAME` the environment's NAME (not a secret: a URL, a virtual key's
        value to hash); None, a problem naming `where`, when it is unset (`what` to set it to)."""
        if not value.startswith("env."):
            return value
        var = value[4:]
        if self.environ is None or not self.environ.get(var):
            self.bad(
                where, f"names environment variable {var}, which is not set here; set it{what} and run again"
            )
            return None
        return self.environ[var]

    def listed(self, obj: Mapping[str, Any], key: str, path: str) -> list[Any]:
        """`obj[key]` as a list: [] when unset, or after a problem ("must be a list")."""
        value = obj.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.bad(f"{path}.{key}", "must be a list")
            return []
        return value

    def warn(self, path: str, message: str) -> None:
        """Where Bifrost's code and its documentation disagree: the docs are followed, and the
        CLI prints this on stderr as well as in the printed file's header."""
        self.notes.append(f"warning: {path}: {message}")

    def provider(self, value: object, path: str) -> str | None:
        """The provider id spendfuse scopes a Bifrost provider name by (genai-prices' id, or the
        operator host's `provider` for a self-hosted one), or None (a problem)."""
        if isinstance(value, str) and value in self.hosts:
            return str(self.hosts[value]["provider"])
        if not isinstance(value, str) or value not in PROVIDERS:
            self.bad(
                path,
                f"unknown provider {value!r}: spendfuse names providers as genai-prices does, and knows "
                f"Bifrost's {_list(PROVIDERS)}",
            )
            return None
        return PROVIDERS[value]

    def group_member(self, gid: str, model: str | None, member: str, path: str) -> _Scope:
        group = self.groups.setdefault((gid, None if model is None else model.lower()), _ProviderGroup(model))
        return group.members.setdefault(member, _Scope(path, {}))
