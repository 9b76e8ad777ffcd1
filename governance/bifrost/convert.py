"""The conversion itself: `_Converter` reads a located governance section (`_Source`), checks
every object against Bifrost's schema, attaches budgets and rate limits to keys, teams,
customers, models and providers, and builds spendfuse version 2 rules, collecting every problem
and note on the way. `convert_with_notes` and `convert` run it on parsed data and raise
BifrostImportError listing every field that has no exact spendfuse equivalent."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from governance.bifrost.durations import _Duration, _parse_duration, _reset
from governance.bifrost.errors import BifrostImportError, _list
from governance.bifrost.locate import _locate, _Source
from governance.bifrost.providers import _MEMBERS, PROVIDERS
from governance.bifrost.schema import (
    _BUDGET,
    _BUDGET_LINE,
    _CUSTOMER,
    _HELM_RATE_LIMIT,
    _MODEL_CONFIG,
    _OWNERS,
    _PROVIDER,
    _PROVIDER_CONFIG,
    _RATE_LIMIT,
    _TEAM,
    _VK,
)

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


# What one provider config of a virtual key lets through: None (nothing), or
# (kind, allowed, denied) with names case-folded: ("all", {}, denied) or ("some", allowed, {}).
_Rule = tuple[str, frozenset[str], frozenset[str]]
_ERROR: _Rule = ("error", frozenset(), frozenset())  # a problem was reported


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


@dataclass
class _ProviderGroup:
    """Bifrost scopes that land on one spendfuse provider (or provider + model) scope, per Bifrost
    provider: gemini and vertex both become `google`, so both must carry the same limits."""

    model: str | None
    members: dict[str, _Scope] = field(default_factory=dict)


# Where a model config's limits go: a key, the global scope, a model, or a provider group member.
_Target = tuple[str, ...]


class _Converter:
    """One conversion: reads the located section, collects problems and notes, builds the rules."""

    def __init__(self, src: _Source, environ: Mapping[str, str] | None) -> None:
        self.src = src
        self.environ = environ
        self.problems: list[str] = list(src.problems)
        self.notes: list[str] = []
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

    # -- helpers -------------------------------------------------------------------------------

    def bad(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def section(self, name: str) -> tuple[str, list[Any]]:
        path = self.src.paths.get(name, f"{self.src.root}.{name}")
        value = self.src.governance.get(name)
        if value is None:
            return path, []
        if not isinstance(value, list):
            self.bad(path, "must be a list")
            return path, []
        return path, value

    def fields(self, obj: object, allowed: set[str], path: str, why: str = "not in Bifrost's schema") -> bool:
        if not isinstance(obj, Mapping):
            self.bad(path, "must be an object")
            return False
        for key in obj:
            if key not in allowed:
                self.bad(f"{path}.{key}", f"unknown field ({why})")
        return True

    def ident(self, obj: Mapping[str, Any], key: str, path: str) -> str | None:
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

    def text(self, obj: Mapping[str, Any], key: str, path: str) -> str | None:
        value = obj.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            self.bad(f"{path}.{key}", "must be text")
            return None
        return value

    def flag(self, obj: Mapping[str, Any], key: str, path: str, default: bool = False) -> bool:
        value = obj.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.bad(f"{path}.{key}", "must be true or false")
            return default
        return value

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

    def provider(self, value: object, path: str) -> str | None:
        """The genai-prices id of a Bifrost provider name, or None (a problem)."""
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

    # -- definitions ---------------------------------------------------------------------------

    def budget(self, obj: object, path: str, allowed: set[str]) -> str | None:
        """Define one budget; its id, or None (a problem)."""
        if not self.fields(obj, allowed, path):
            return None
        assert isinstance(obj, Mapping)
        ident = self.ident(obj, "id", path)
        amount = _decimal(obj.get("max_limit"))
        if amount is None or amount < 0:
            self.bad(
                f"{path}.max_limit", f"must be a non-negative number of USD, not {obj.get('max_limit')!r}"
            )
        duration = _parse_duration(obj.get("reset_duration"))
        if isinstance(duration, str):
            self.bad(f"{path}.reset_duration", duration)
        self.no_state(obj, path, "current_usage", "last_reset")
        self.deprecated_calendar(obj, path)
        if ident is None or amount is None or amount < 0 or isinstance(duration, str):
            return None
        if ident in self.budgets:
            self.bad(f"{path}.id", f"duplicate budget id {ident!r} (also {self.budgets[ident].path})")
            return None
        self.budgets[ident] = _Limit(path, {"id": ident, "max_usd": amount}, {"reset": duration})
        return ident

    def rate_limit(self, obj: object, path: str) -> None:
        if self.src.helm:
            ok = self.fields(
                obj, _HELM_RATE_LIMIT, path, "the Bifrost chart passes only id and the token/request limits"
            )
        else:
            ok = self.fields(obj, _RATE_LIMIT, path)
        if not ok:
            return
        assert isinstance(obj, Mapping)
        ident = self.ident(obj, "id", path)
        out: dict[str, Any] = {"id": ident}
        durations: dict[str, _Duration] = {}
        for part, max_out, reset_out in (
            ("token", "max_tokens", "tokens_reset"),
            ("request", "max_requests", "requests_reset"),
        ):
            self.no_state(obj, path, f"{part}_current_usage", f"{part}_last_reset")
            limit, reset = obj.get(f"{part}_max_limit"), obj.get(f"{part}_reset_duration")
            if limit is None and reset is None:
                continue
            n = _decimal(limit)
            if n is None or n != n.to_integral_value() or n <= 0:
                # Bifrost refuses a limit of 0 or less, or one without its duration.
                self.bad(f"{path}.{part}_max_limit", f"must be a whole number above 0, not {limit!r}")
                ident = None
            duration = _parse_duration(reset)
            if isinstance(duration, str):
                self.bad(f"{path}.{part}_reset_duration", duration)
                ident = None
            elif n is not None:
                out[max_out] = int(n)
                durations[reset_out] = duration
        metric = obj.get("metric")
        if metric is not None and (
            metric not in ("tokens", "requests") or set(durations) - {f"{metric}_reset"}
        ):
            self.bad(f"{path}.metric", f"{metric!r} does not match the limits it sets")
        self.deprecated_calendar(obj, path)
        if ident is None:
            return
        if ident in self.limits:
            self.bad(f"{path}.id", f"duplicate rate limit id {ident!r} (also {self.limits[ident].path})")
            return
        if "max_tokens" in out:
            out["count_tokens"] = "total"  # Bifrost counts input + output tokens
        self.limits[ident] = _Limit(path, out, durations)

    # -- organisation --------------------------------------------------------------------------

    def customer(self, obj: object, path: str) -> None:
        if not self.fields(obj, _CUSTOMER, path):
            return
        assert isinstance(obj, Mapping)
        ident = self.ident(obj, "id", path)
        if ident is None:
            return
        if ident in self.customers:
            self.bad(f"{path}.id", f"duplicate customer id {ident!r}")
            return
        calendar = self.flag(obj, "calendar_aligned", path)
        self.calendar["customer", ident] = calendar
        scope = self.customers[ident] = _Scope(path, {"id": ident})
        if (name := self.text(obj, "name", path)) is not None:
            scope.out["name"] = name
        inline = obj.get("budgets")
        if inline is not None:
            if obj.get("budget_id") is not None:
                self.bad(f"{path}.budget_id", "Bifrost takes budgets or budget_id on a customer, not both")
            if not isinstance(inline, list):
                self.bad(f"{path}.budgets", "must be a list")
                inline = []
            for j, line in enumerate(inline):
                where = f"{path}.budgets[{j}]"
                if (b := self.budget(line, where, _BUDGET_LINE)) is not None:
                    self.attach("budget", b, scope, calendar, where)
        self.attach_all(obj, path, scope, calendar, calendar)

    def team(self, obj: object, path: str) -> None:
        if not self.fields(obj, _TEAM, path):
            return
        assert isinstance(obj, Mapping)
        ident = self.ident(obj, "id", path)
        if ident is None:
            return
        if ident in self.teams:
            self.bad(f"{path}.id", f"duplicate team id {ident!r}")
            return
        self.unsupported(obj, "business_unit_id", path, "spendfuse has no business units")
        for key in ("profile", "config", "claims"):
            self.unsupported(obj, key, path, "free-form team data spendfuse cannot interpret")
        calendar = self.flag(obj, "calendar_aligned", path)
        self.calendar["team", ident] = calendar
        scope = self.teams[ident] = _Scope(path, {"id": ident})
        if (name := self.text(obj, "name", path)) is not None:
            scope.out["name"] = name
        customer = obj.get("customer_id")
        if customer is not None:
            if customer not in self.customers:
                self.bad(f"{path}.customer_id", f"unknown customer {customer!r}")
            else:
                scope.out["customer"] = customer
        if obj.get("budget_id") is not None:
            self.notes.append(
                f"{path}.budget_id: attached to the team, as the schema describes it; Bifrost's docs now "
                "attach a team's budgets by budgets[].team_id instead"
            )
        self.attach_all(obj, path, scope, calendar, calendar)

    # -- virtual keys --------------------------------------------------------------------------

    def secret(self, obj: Mapping[str, Any], path: str) -> str | None:
        value = obj.get("value")
        where = f"{path}.value"
        if value is None or value == "":
            self.bad(
                where, "missing: Bifrost would generate one, and spendfuse needs the value itself to hash it"
            )
            return None
        if not isinstance(value, str):
            self.bad(where, "must be text")
            return None
        if value.startswith("env."):
            var = value[4:]
            if self.environ is None or not self.environ.get(var):
                self.bad(
                    where, f"names environment variable {var}, which is not set here; set it and run again"
                )
                return None
            return self.environ[var]
        if value.startswith("vault."):
            self.bad(where, "is a vault reference; spendfuse needs the key itself to hash it")
            return None
        return value

    def virtual_key(self, obj: object, path: str) -> None:
        if not self.fields(obj, _VK, path):
            return
        assert isinstance(obj, Mapping)
        ident = self.ident(obj, "id", path)
        secret = self.secret(obj, path)
        if ident is None:
            return
        if ident in self.keys:
            self.bad(f"{path}.id", f"duplicate virtual key id {ident!r}")
            return
        self.unsupported(obj, "access_profile_id", path, "spendfuse has no access profiles")
        self.unsupported(obj, "mcp_configs", path, "spendfuse does not govern MCP tools")
        calendar = self.flag(obj, "calendar_aligned", path)
        self.calendar["key", ident] = calendar
        scope = self.keys[ident] = _Scope(path, {"id": ident})
        out = scope.out
        if (name := self.text(obj, "name", path)) is not None:
            out["name"] = name
        if secret is not None:
            out["secret_sha256"] = hashlib.sha256(secret.encode("utf-8")).hexdigest()
            self.secrets[path] = secret
        team, customer = obj.get("team_id"), obj.get("customer_id")
        if team is not None and customer is not None:
            self.bad(f"{path}.customer_id", "a virtual key belongs to a team or to a customer, not both")
        elif team is not None:
            if team not in self.teams:
                self.bad(f"{path}.team_id", f"unknown team {team!r}")
            else:
                out["team"] = team
        elif customer is not None:
            if customer not in self.customers:
                self.bad(f"{path}.customer_id", f"unknown customer {customer!r}")
            else:
                out["customer"] = customer
        out["active"] = self.flag(obj, "is_active", path, default=True)
        self.expiry(obj, path, out)
        if obj.get("budget_id") is not None:
            self.notes.append(
                f"{path}.budget_id: attached to the key, as Bifrost 1.4 did; newer Bifrost and its Helm "
                "chart ignore a virtual key's budget_id (they attach budgets by budgets[].virtual_key_id)"
            )
        self.attach_all(obj, path, scope, calendar, calendar)
        self.allow_lists(obj, path, out)

    def expiry(self, obj: Mapping[str, Any], path: str, out: dict[str, Any]) -> None:
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
            self.bad(f"{path}.expires_at", f"{expires!r} is not an RFC 3339 time with a zone")
        else:
            out["expires_at"] = when.isoformat()

    def white_list(
        self, value: object, path: str, empty_means_all: bool, names: dict[str, str]
    ) -> _Rule | None:
        """A Bifrost WhiteList as ("all" | "some" | "none", folded names, {}); None after a problem.
        Original spellings go into `names` (folded -> name)."""
        if value is None or value == []:
            return ("all" if empty_means_all else "none"), frozenset(), frozenset()
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.bad(path, "must be a list of names")
            return None
        if "*" in value:
            if len(value) > 1:
                self.bad(path, "Bifrost allows '*' only alone")
                return None
            return "all", frozenset(), frozenset()
        folded: set[str] = set()
        for j, name in enumerate(value):
            if "*" in name:
                # Bifrost compares this name literally; spendfuse would read it as a pattern.
                self.bad(f"{path}[{j}]", f"{name!r}: Bifrost matches it literally, spendfuse as a pattern")
                return None
            if name.lower() in folded:
                self.bad(f"{path}[{j}]", f"{name!r} is listed twice (Bifrost compares case-insensitively)")
                return None
            folded.add(name.lower())
            names.setdefault(name.lower(), name)
        return "some", frozenset(folded), frozenset()

    def model_rule(self, pc: Mapping[str, Any], where: str, names: dict[str, str]) -> _Rule | None:
        """What one provider config lets through (see _Rule); _ERROR after a problem."""
        v1 = self.src.empty_allows_all
        if pc.get("keys") not in (None, []):
            self.bad(
                f"{where}.keys", "limits the key to some provider API keys, which spendfuse does not choose"
            )
            return _ERROR
        keys = self.white_list(pc.get("key_ids"), f"{where}.key_ids", v1, {})
        if keys is not None and keys[0] == "some":
            self.bad(
                f"{where}.key_ids",
                "limits the key to some provider API keys, which spendfuse does not choose",
            )
            return _ERROR
        allowed = self.white_list(pc.get("allowed_models"), f"{where}.allowed_models", v1, names)
        # An empty blacklist blocks nothing, whatever the version.
        denied = self.white_list(
            pc.get("blacklisted_models") or None, f"{where}.blacklisted_models", False, names
        )
        if keys is None or allowed is None or denied is None:
            return _ERROR
        if keys[0] == "none" or allowed[0] == "none" or denied[0] == "all":
            return None  # no API key to serve it, no model allowed, or every model blocked
        if allowed[0] == "all":
            return "all", frozenset(), denied[1]
        left = allowed[1] - denied[1]
        return ("some", left, frozenset()) if left else None

    def allow_lists(self, vk: Mapping[str, Any], path: str, out: dict[str, Any]) -> None:
        """allowed_providers / allowed_models / denied_models equal to the key's provider_configs,
        or a problem when spendfuse's per-key (not per-provider) lists cannot say the same."""
        configs = vk.get("provider_configs")
        if configs is None or configs == []:
            if not self.src.empty_allows_all:
                out["allowed_providers"] = []
                self.notes.append(
                    f"{path}: no provider_configs, which allows no provider since Bifrost 1.5 "
                    '(config.json `"version": 1` keeps the 1.4 meaning), so the key may use nothing'
                )
            return
        if not isinstance(configs, list):
            self.bad(f"{path}.provider_configs", "must be a list")
            return
        rules: dict[str, _Rule | None] = {}
        names: dict[str, str] = {}
        ok = True
        for j, pc in enumerate(configs):
            where = f"{path}.provider_configs[{j}]"
            if not self.fields(pc, _PROVIDER_CONFIG, where):
                ok = False
                continue
            assert isinstance(pc, Mapping)
            for key in ("budget_id", "rate_limit_id"):
                if pc.get(key) is not None:
                    self.bad(
                        f"{where}.{key}",
                        "a limit on one provider of one key: spendfuse attaches limits to a key or to a "
                        "provider, not to the pair, and either would widen or narrow it",
                    )
                    ok = False
            provider = pc.get("provider")
            if self.provider(provider, f"{where}.provider") is None:
                ok = False
                continue
            assert isinstance(provider, str)
            if provider in rules:
                self.bad(f"{where}.provider", f"{provider!r} has two provider configs")
                ok = False
                continue
            rules[provider] = self.model_rule(pc, where, names)
            ok = ok and rules[provider] != _ERROR
        if not ok:
            return
        by_id: dict[str, _Rule] = {}
        for provider, rule in rules.items():
            if rule is None:
                continue
            gid = PROVIDERS[provider]
            siblings = {m: rules.get(m) for m in _MEMBERS[gid]}
            if len(set(siblings.values())) > 1:
                self.bad(
                    f"{path}.provider_configs",
                    f"{', '.join(_MEMBERS[gid])} are all {gid!r} in spendfuse, so they must allow the same "
                    f"models; here: {_describe(siblings, names)}",
                )
                return
            by_id[gid] = rule
        distinct = set(by_id.values())
        if len(distinct) > 1:
            self.bad(
                f"{path}.provider_configs",
                f"allows different models per provider ({_describe(rules, names)}); spendfuse's allow-lists "
                "are per key, not per provider, so any union would let a model through on a provider that "
                "Bifrost refuses it on (give each provider its own virtual key)",
            )
            return
        out["allowed_providers"] = sorted(by_id)
        if not distinct:
            self.notes.append(f"{path}: its provider_configs allow no model, so the key may use nothing")
            return
        kind, models, denied = distinct.pop()
        if kind == "some":
            out["allowed_models"] = sorted(names[m] for m in models)
        elif denied:
            out["denied_models"] = sorted(names[m] for m in denied)

    # -- model configs and providers -----------------------------------------------------------

    def model_config(self, obj: object, path: str) -> None:
        if not self.fields(obj, _MODEL_CONFIG, path):
            return
        assert isinstance(obj, Mapping)
        ident = obj.get("id")
        if not isinstance(ident, str) or not ident:
            self.bad(f"{path}.id", "required, and must be text")
            return
        if ident in self.model_configs:
            self.bad(f"{path}.id", f"duplicate model config id {ident!r}")
            return
        self.model_configs[ident] = None
        model = obj.get("model_name")
        if not isinstance(model, str) or not model.strip():
            self.bad(f"{path}.model_name", "required, and must be text")
            return
        if model != "*" and "*" in model:
            self.bad(f"{path}.model_name", f"{model!r}: Bifrost matches it literally, spendfuse as a pattern")
            return
        provider = obj.get("provider")
        gid = None if provider is None else self.provider(provider, f"{path}.provider")
        if provider is not None and gid is None:
            return
        kind = obj.get("scope") or "global"
        calendar = self.flag(obj, "calendar_aligned", path)
        if kind == "virtual_key":
            vk = obj.get("scope_id")
            if not isinstance(vk, str) or vk not in self.keys:
                self.bad(f"{path}.scope_id", f"unknown virtual key {vk!r}")
                return
            if model != "*" or provider is not None:
                self.bad(
                    f"{path}.scope",
                    "a limit on one model or provider of one virtual key: spendfuse attaches limits to a "
                    "key, a model or a provider, not to a pair of them",
                )
                return
            scope = self.keys[vk]
            calendar = self.calendar["key", vk]  # Bifrost: a key's model configs follow the key
        elif kind == "global":
            if obj.get("scope_id") is not None:
                self.bad(f"{path}.scope_id", "a global model config has no scope_id")
                return
            if gid is None:
                # model_name "*" without a provider is every request (Bifrost's ModelConfigAllModels).
                scope = (
                    self.global_scope
                    if model == "*"
                    else self.models.setdefault(model.lower(), _Scope(path, {"model": model}))
                )
            else:
                assert isinstance(provider, str)
                scope = self.group_member(gid, None if model == "*" else model, provider, path)
        else:
            self.bad(f"{path}.scope", f"{kind!r} scope: spendfuse governs keys, not users")
            return
        # Model configs stamp their calendar alignment on their budgets only, not their rate limit.
        self.attach_all(obj, path, scope, calendar, False)
        self.model_configs[ident] = (scope, calendar)

    def governed_provider(self, obj: object, path: str) -> None:
        if not self.fields(obj, _PROVIDER, path):
            return
        assert isinstance(obj, Mapping)
        name = obj.get("name")
        gid = self.provider(name, f"{path}.name")
        if gid is None:
            return
        assert isinstance(name, str)
        self.attach_all(obj, path, self.group_member(gid, None, name, path), False, False)

    # -- the whole section ---------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        g = self.src.governance
        for name, why in (
            ("routing_rules", "routing rules change which provider and model serve a request"),
            (
                "pricing_overrides",
                "spendfuse prices with genai-prices; Bifrost's price overrides change spend",
            ),
            ("business_units", "spendfuse has no business units"),
            ("roles", "spendfuse has no dashboard roles or access profiles"),
        ):
            if g.get(name) not in (None, []):
                self.bad(self.src.paths[name], why)
        if g.get("complexity_analyzer_config") not in (None, {}) and g.get("routing_rules") not in (None, []):
            self.bad(self.src.paths["complexity_analyzer_config"], "only routing rules use it")
        auth = g.get("auth_config")
        if auth not in (None, {}):
            if not isinstance(auth, Mapping):
                self.bad(self.src.paths["auth_config"], "must be an object")
            else:
                self.notes.append(f"{self.src.paths['auth_config']}: dashboard credentials left out")

        owned: list[tuple[str, str, object, str]] = []
        path, items = self.section("budgets")
        for i, obj in enumerate(items):
            where = f"{path}[{i}]"
            ident = self.budget(obj, where, _BUDGET)
            if ident is None:
                continue
            assert isinstance(obj, Mapping)
            owners = [k for k in _OWNERS if obj.get(k) is not None]
            if len(owners) > 1:
                self.bad(where, f"a budget has at most one owner, here {', '.join(owners)}")
            elif owners == ["provider_config_id"]:
                self.bad(
                    f"{where}.provider_config_id",
                    "a budget on one provider of one key: spendfuse attaches limits to a key or to a "
                    "provider, not to the pair",
                )
            elif owners:
                owned.append((ident, owners[0], obj[owners[0]], f"{where}.{owners[0]}"))
        path, items = self.section("rate_limits")
        for i, obj in enumerate(items):
            self.rate_limit(obj, f"{path}[{i}]")
        for name, method in (
            ("customers", self.customer),
            ("teams", self.team),
            ("virtual_keys", self.virtual_key),
            ("model_configs", self.model_config),
            ("providers", self.governed_provider),
        ):
            path, items = self.section(name)
            for i, obj in enumerate(items):
                method(obj, f"{path}[{i}]")
        for ident, owner, target, where in owned:
            self.own(ident, owner, target, where)
        return self.build()

    def own(self, budget: str, owner: str, target: object, where: str) -> None:
        """Attach a budget by the owner it names (budgets[].virtual_key_id, team_id, ...)."""
        if owner == "model_config_id":
            if not isinstance(target, str) or target not in self.model_configs:
                self.bad(where, f"unknown model config {target!r}")
                return
            resolved = self.model_configs[target]
            if resolved is not None:  # None: the model config itself is already a problem
                self.attach("budget", budget, resolved[0], resolved[1], where)
            return
        kind, table = {
            "virtual_key_id": ("key", self.keys),
            "team_id": ("team", self.teams),
            "customer_id": ("customer", self.customers),
        }[owner]
        if not isinstance(target, str) or target not in table:
            self.bad(where, f"unknown {owner[:-3].replace('_', ' ')} {target!r}")
            return
        self.attach("budget", budget, table[target], self.calendar[kind, target], where)

    # -- output --------------------------------------------------------------------------------

    def finish(self, table: dict[str, _Limit], kind: str) -> list[dict[str, Any]]:
        """The spendfuse budgets or rate limits: windows converted, unattached ones left out."""
        out: list[dict[str, Any]] = []
        for ident, limit in table.items():
            if not limit.owners:
                self.notes.append(
                    f"{limit.path}: {kind} {ident!r} is attached to nothing in Bifrost; left out"
                )
                continue
            if not limit.durations:
                self.notes.append(f"{limit.path}: rate limit {ident!r} limits nothing; left out")
                continue
            calendars = {cal for cal, _ in limit.owners}
            if len(calendars) > 1:
                aligned = ", ".join(p for cal, p in limit.owners if cal)
                rolling = ", ".join(p for cal, p in limit.owners if not cal)
                self.bad(
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
                    self.bad(f"{limit.path}.{_DURATION_FIELD[key]}", converted)
                    break
                item[key], aligned = converted
                aligned_windows.add(aligned)
            else:
                if len(aligned_windows) > 1:
                    self.bad(
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

    def groups_out(self) -> tuple[list[_Scope], list[_Scope]]:
        """Provider scopes and provider-specific model scopes; every Bifrost provider sharing a
        genai-prices id must carry the same limits, or the shared scope would not be exact."""
        providers: list[_Scope] = []
        models: list[_Scope] = []
        for (gid, _), group in self.groups.items():
            members = group.members
            attached = {m: (frozenset(s.budgets), frozenset(s.rate_limits)) for m, s in members.items()}
            missing = [m for m in _MEMBERS[gid] if m not in members]
            if missing or len(set(attached.values())) > 1:
                what = f"model {group.model!r} of " if group.model is not None else ""
                self.bad(
                    ", ".join(s.path for s in members.values()),
                    f"limits on {what}{', '.join(sorted(members))}: Bifrost's {', '.join(_MEMBERS[gid])} are "
                    f"all {gid!r} in spendfuse, so each needs the same limits here",
                )
                continue
            first = next(iter(members.values()))
            out = {"provider": gid} if group.model is None else {"model": group.model, "provider": gid}
            (providers if group.model is None else models).append(
                _Scope(first.path, out, first.budgets, first.rate_limits)
            )
        return providers, models

    def build(self) -> dict[str, Any]:
        budgets = self.finish(self.budgets, "budget")
        limits = self.finish(self.limits, "rate limit")
        kept = {"budgets": {b["id"] for b in budgets}, "rate_limits": {r["id"] for r in limits}}

        def scope_out(scope: _Scope) -> dict[str, Any]:
            out = dict(scope.out)
            for key, ids in (("budgets", scope.budgets), ("rate_limits", scope.rate_limits)):
                # The same id can arrive twice (a team's budget_id and the budget's team_id).
                ids = [i for i in dict.fromkeys(ids) if i in kept[key]]
                if ids:
                    out[key] = ids
            return out

        rules: dict[str, Any] = {"version": 2}
        if self.src.vk_mandatory is not None:
            rules["require_key"] = self.src.vk_mandatory
        if budgets:
            rules["budgets"] = budgets
        if limits:
            rules["rate_limits"] = limits
        if glob := scope_out(self.global_scope):
            rules["global"] = glob
        providers, models = self.groups_out()
        if providers:
            rules["providers"] = [scope_out(s) for s in providers]
        if all_models := [scope_out(s) for s in [*self.models.values(), *models]]:
            rules["models"] = all_models
        for key, table in (("customers", self.customers), ("teams", self.teams), ("keys", self.keys)):
            if table:
                rules[key] = [scope_out(s) for s in table.values()]
        if not budgets and not limits:
            # Bifrost with no budget or rate limit caps nothing; spendfuse starts such rules only
            # when they say that is meant.
            rules["allow_unlimited"] = True
            self.notes.append("no budget or rate limit applies, as in Bifrost: allow_unlimited is set")
        self.check_secrets(rules)
        return rules

    def check_secrets(self, rules: dict[str, Any]) -> None:
        """No key's value may reach the output, even inside a name someone copied it into."""
        texts = list(_strings(rules))
        for path, secret in self.secrets.items():
            if any(secret == t or (len(secret) >= 8 and secret in t) for t in texts):
                self.bad(
                    f"{path}.value", "appears elsewhere in this configuration (a name?); refusing to print it"
                )


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


def _strings(value: object) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def convert_with_notes(
    data: object, *, environ: Mapping[str, str] | None = None
) -> tuple[dict[str, Any], list[str]]:
    """`convert`, plus notes worth a reader's attention (what was left out because it governs
    nothing, keys that may use nothing); `to_yaml` prints them in the header."""
    conv = _Converter(_locate(data), environ)
    rules = conv.run()
    if conv.problems:
        raise BifrostImportError(conv.problems)
    return rules, conv.notes


def convert(data: object, *, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """spendfuse version 2 rules equivalent to the Bifrost governance in `data` (a parsed
    config.json or Helm values file), as a plain dict of plain values, except that amounts are
    Decimal as written: print it with `to_yaml` (yaml.safe_dump has no Decimal). Virtual key values
    are hashed into `secret_sha256` and never appear in the result; a value `env.NAME` is read from
    `environ` when given.

    Raises BifrostImportError listing every field it cannot translate exactly."""
    return convert_with_notes(data, environ=environ)[0]
