"""Which scopes a request counts against, and the keys it may authenticate as. Pure.

A request counts against, in this order: its key, the key on the request's provider (a key's
`providers:` entry), the key's team, the customer above them,
every model scope its model matches, every provider scope of its provider, and the global scope.
Model and provider scopes apply whether or not the request carries a key. The order is the
order claims are checked in, so the limit a refusal names never depends on iteration order.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from governance.limits import BudgetRule, Key, RateLimitRule
from governance.matching import model_matches
from governance.policy import Policy


@dataclass(frozen=True)
class Scope:
    """One scope a request counts against, with the limits attached to it."""

    name: str  # "key=agent-1", "team=research", "customer=acme", "model=gpt-5*", "provider=openai", "global"
    budgets: tuple[BudgetRule, ...]
    rate_limits: tuple[RateLimitRule, ...]


def secret_hash(secret: str) -> str:
    """The hex SHA-256 of a key's secret, as the rules store it (`secret_sha256`)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class Scopes:
    """The policy's scopes, indexed for the request path. Built once per policy."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._budgets = {b.id: b for b in policy.budgets}
        self._limits = {r.id: r for r in policy.rate_limits}
        self.keys = {k.id: k for k in policy.keys}
        self._by_secret = {k.secret_sha256: k for k in policy.keys if k.secret_sha256}
        self._by_listener = {name: k for k in policy.keys for name in k.listeners}
        self._teams = {t.id: t for t in policy.teams}
        self._customers = {c.id: c for c in policy.customers}
        self._cache: dict[tuple[str | None, str, str], tuple[Scope, ...]] = {}

    @property
    def has_keys(self) -> bool:
        return bool(self.keys)

    # -- authentication ------------------------------------------------------------------------

    def key_by_secret(self, secret: str) -> Key | None:
        """The key whose secret this is, or None. Compared in constant time."""
        digest = secret_hash(secret)
        key = self._by_secret.get(digest)
        if key is not None and key.secret_sha256 and hmac.compare_digest(key.secret_sha256, digest):
            return key
        return None

    def key_with_secret(self, key_id: str, secret: str) -> Key | None:
        """The key `key_id` if `secret` is its secret, else None."""
        key = self.keys.get(key_id)
        if key is None or not key.secret_sha256:
            return None
        return key if hmac.compare_digest(key.secret_sha256, secret_hash(secret)) else None

    def key_by_listener(self, names: Iterable[str]) -> Key | None:
        """The key bound to the listener a client arrived on (its port or mode spec), or None."""
        for name in names:
            key = self._by_listener.get(name)
            if key is not None:
                return key
        return None

    # -- scopes --------------------------------------------------------------------------------

    def _scope(self, name: str, budgets: Iterable[str], limits: Iterable[str]) -> Scope:
        return Scope(name, tuple(self._budgets[b] for b in budgets), tuple(self._limits[r] for r in limits))

    def applicable(self, key: Key | None, provider: str, model: str) -> tuple[Scope, ...]:
        """Every scope a request by `key` for `model` on `provider` counts against, in check order;
        scopes with no limits attached are left out."""
        cache_key = (key.id if key else None, provider, model)
        found = self._cache.get(cache_key)
        if found is not None:
            return found
        p = self.policy
        scopes: list[Scope] = []
        if key is not None:
            scopes.append(self._scope(f"key={key.id}", key.budgets, key.rate_limits))
            for kp in key.providers:
                if kp.provider == provider:
                    scopes.append(
                        self._scope(f"key={key.id}/provider={provider}", kp.budgets, kp.rate_limits)
                    )
            customer_id = key.customer
            if key.team is not None:
                team = self._teams[key.team]
                scopes.append(self._scope(f"team={team.id}", team.budgets, team.rate_limits))
                customer_id = team.customer
            if customer_id is not None:
                c = self._customers[customer_id]
                scopes.append(self._scope(f"customer={c.id}", c.budgets, c.rate_limits))
        for m in p.models:
            if model_matches(m.model, model) and (m.provider is None or m.provider == provider):
                name = f"model={m.provider}/{m.model}" if m.provider else f"model={m.model}"
                scopes.append(self._scope(name, m.budgets, m.rate_limits))
        for pr in p.providers:
            if pr.provider == provider:
                scopes.append(self._scope(f"provider={pr.provider}", pr.budgets, pr.rate_limits))
        scopes.append(self._scope("global", p.global_scope.budgets, p.global_scope.rate_limits))
        result = tuple(s for s in scopes if s.budgets or s.rate_limits)
        if len(self._cache) < 65_536:  # bounded: model names come from clients
            self._cache[cache_key] = result
        return result

    def every_scope(self) -> tuple[Scope, ...]:
        """Every scope the rules define, with limits attached, for `spendfuse status`."""
        p = self.policy
        out = [self._scope("global", p.global_scope.budgets, p.global_scope.rate_limits)]
        out += [self._scope(f"provider={s.provider}", s.budgets, s.rate_limits) for s in p.providers]
        out += [
            self._scope(
                f"model={s.provider}/{s.model}" if s.provider else f"model={s.model}",
                s.budgets,
                s.rate_limits,
            )
            for s in p.models
        ]
        out += [self._scope(f"customer={c.id}", c.budgets, c.rate_limits) for c in p.customers]
        out += [self._scope(f"team={t.id}", t.budgets, t.rate_limits) for t in p.teams]
        out += [self._scope(f"key={k.id}", k.budgets, k.rate_limits) for k in p.keys]
        out += [
            self._scope(f"key={k.id}/provider={kp.provider}", kp.budgets, kp.rate_limits)
            for k in p.keys
            for kp in k.providers
        ]
        return tuple(s for s in out if s.budgets or s.rate_limits)
