"""Governance rules (rules format version 2): budgets and rate limits defined once with ids, and
the scopes they attach to (global, providers, models, customers, teams, keys).

Pydantic models only, validated strictly (`extra="forbid"`); `governance.policymodel` embeds them in
the rules file's one model, and `governance.scopes` resolves which limits apply to a request.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from governance import windows

Id = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=128)]
NonNegativeUSD = Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0)]
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def _check_reset(value: str) -> str:
    windows.parse_reset(value)  # raises ValueError naming the accepted forms
    return value


def _check_timezone(value: str) -> str:
    windows.zone(value)  # raises ValueError naming the zone
    return value


class _Window(_Strict):
    calendar: bool = False
    """`false`: windows roll from when the limit was first used (or last reset), each exactly
    one reset long. `true`: windows follow the calendar in `timezone` (a day starts at midnight,
    a week on Monday, a month on the 1st)."""
    timezone: str = "UTC"
    """IANA time zone of calendar windows (`Europe/Berlin`); ignored by rolling windows."""

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        return _check_timezone(v)


class BudgetRule(_Window):
    """A hard USD cap over a window. Spend plus reservations never pass it."""

    id: Id
    """Names the budget; scopes attach it by this id, and refusals name it."""
    max_usd: NonNegativeUSD
    """The cap, in USD."""
    reset: str = "never"
    """`never` (a per-run cap), or how long a window lasts: `30s`, `5m`, `1h`, `1d`, `1w`, `1M`
    (calendar month), `1Y`, or any count of those units."""

    @field_validator("reset")
    @classmethod
    def _reset(cls, v: str) -> str:
        return _check_reset(v)


class RateLimitRule(_Window):
    """Requests, tokens and requests in flight, each limited on its own: one window expiring
    never lifts another limit."""

    id: Id
    """Names the rate limit; scopes attach it by this id, and refusals name it."""
    max_requests: Count | None = None
    """Requests allowed per `requests_reset` window. Unset: not limited."""
    requests_reset: str = "1m"
    """Window of `max_requests` (`30s`, `1m`, `1h`, `1d`, ...)."""
    max_tokens: Count | None = None
    """Tokens allowed per `tokens_reset` window: reserved at the request's worst case and settled
    to the real count. Unset: not limited."""
    tokens_reset: str = "1m"
    """Window of `max_tokens`."""
    count_tokens: Literal["input", "output", "total"] = "total"
    """Which tokens `max_tokens` counts."""
    max_in_flight: Count | None = None
    """Requests forwarded and not yet finished, at any one time. Unset: not limited."""

    @field_validator("requests_reset", "tokens_reset")
    @classmethod
    def _reset(cls, v: str) -> str:
        if windows.parse_reset(v) is None:
            raise ValueError("a rate limit's window must end (`1m`, `1h`, ...), not `never`")
        return v

    @model_validator(mode="after")
    def _limits_something(self) -> RateLimitRule:
        if self.max_requests is None and self.max_tokens is None and self.max_in_flight is None:
            raise ValueError("a rate limit needs max_requests, max_tokens or max_in_flight")
        return self


class _Attached(_Strict):
    budgets: list[Id] = []
    """Ids of the budgets (under `budgets:`) that apply to this scope, each counted separately."""
    rate_limits: list[Id] = []
    """Ids of the rate limits (under `rate_limits:`) that apply to this scope."""


class GlobalScope(_Attached):
    """Limits on every request through the proxy."""


class ProviderScope(_Attached):
    """Limits on every request to one provider, with or without a key."""

    provider: str = Field(min_length=1, pattern=r"^[^|,=\s]+$")
    """genai-prices provider id of a metered host: `openai`, `anthropic`, or an operator host's."""


class ModelScope(_Attached):
    """Limits on every request for a model, with or without a key. A glob's requests share one
    counter (`claude-opus-*` caps all Opus models together)."""

    model: str = Field(min_length=1, pattern=r"^[^|,=\s]+$")
    """Exact model name (`gpt-5`, not a prefix; it covers its dated snapshots such as
    `gpt-5-2025-08-07` and vendor-prefixed names such as `openai/gpt-5`), or a glob where `*`
    stands for any characters."""
    provider: str | None = Field(default=None, pattern=r"^[^|,=\s]+$")
    """Only this provider's requests for the model. Unset: any provider."""


class KeyProvider(_Attached):
    """A key on one provider (Bifrost's provider config of a virtual key): the models it may use
    there, and limits that count only its requests to that provider (scope
    `key=ID/provider=P`), besides the key's own."""

    provider: str = Field(min_length=1, pattern=r"^[^|,=\s]+$")
    """genai-prices provider id of a metered host: `openai`, `anthropic`, or an operator host's."""
    allowed_models: list[str] | None = None
    """Models (exact names or globs) the key may use on this provider, instead of the key's
    `allowed_models`. Unset: the key's."""
    denied_models: list[str] = []
    """Models the key may not use on this provider, besides the key's `denied_models`."""


class Customer(_Attached):
    """A customer: teams and keys belong to it, and its limits count all of their requests."""

    id: Id
    """The customer's id."""
    name: str | None = None
    """A display name."""


class Team(_Attached):
    """A team: keys belong to it, and its limits count all of their requests."""

    id: Id
    """The team's id."""
    name: str | None = None
    """A display name."""
    customer: Id | None = None
    """The customer it belongs to (at most one)."""


class Key(_Attached):
    """A key an agent authenticates as: by proxy credentials (`http://ID:SECRET@proxy:port`),
    by the `x-spendfuse-key` (or Bifrost's `x-bf-vk`) header carrying its secret, or by arriving
    on one of its listeners."""

    id: Id
    """The key's id: the user name of proxy credentials, and the principal in the ledger."""
    secret_sha256: str | None = None
    """Hex SHA-256 of the key's secret (`spendfuse hash-secret`); the secret itself is never
    stored. Unset: the key authenticates only by its listeners."""
    name: str | None = None
    """A display name."""
    team: Id | None = None
    """The team it belongs to (at most one)."""
    customer: Id | None = None
    """The customer it belongs to directly, when it has no team."""
    active: bool = True
    """An inactive key is refused."""
    expires_at: datetime | None = None
    """After this instant (ISO 8601 with a zone) the key is refused."""
    listeners: list[str] = []
    """Listening ports (`"8081"`) or mitmproxy mode specs (`"regular@8081"`) whose clients are
    this key without a secret: the operator gives each sandbox its own port."""
    allowed_models: list[str] | None = None
    """Models (exact names or globs) the key may use. Unset: any; empty: none."""
    denied_models: list[str] = []
    """Models (exact names or globs) the key may not use; wins over `allowed_models`."""
    allowed_providers: list[str] | None = None
    """Providers (genai-prices ids) the key may use. Unset: any; empty: none."""
    max_multiplier: Annotated[Decimal, Field(ge=0, allow_inf_nan=False)] | None = None
    """The key's own multiplier cap; the rules' `max_multiplier` still applies."""
    providers: list[KeyProvider] = []
    """The key's models and limits on one provider each (at most one entry per provider)."""
    credentials: list[Id] | None = None
    """Custody credentials (ids in `credentials:`) this key's requests may be sent with. Unset: any
    credential of the request's provider."""

    @field_validator("secret_sha256")
    @classmethod
    def _hex(cls, v: str | None) -> str | None:
        if v is not None and not _SHA256.match(v.strip().lower()):
            raise ValueError("must be 64 hex digits: the SHA-256 of the secret (spendfuse hash-secret)")
        return v.strip().lower() if v is not None else None

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("must carry a time zone (e.g. 2027-01-01T00:00:00Z)")
        return v

    @model_validator(mode="after")
    def _one_parent(self) -> Key:
        if self.team is not None and self.customer is not None:
            raise ValueError("a key belongs to a team or directly to a customer, not both")
        return self
