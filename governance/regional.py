"""Regional prices (`rules/regional_prices.yaml`): where inference runs can cost more than the
price data says (Anthropic's US-only `inference_geo`, OpenAI's data-residency hosts). The uplift
multiplies a request's token price, when reserving and when settling.

A request that names no geo may still be served in its workspace's default geo, which only the
response reports (`usage.inference_geo`): the reservation assumes the uplift whenever a geo
could apply, and settlement uses the geo the response reports."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from governance.errors import RequestParseError
from governance.fees import Fee
from governance.matching import glob_match, model_matches
from governance.tables import load_table
from governance.types import Priced


class Uplift(BaseModel):
    """One regional uplift: whom it applies to and by how much."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    provider: str
    factor: Annotated[Decimal, Field(ge=1, le=10)]
    hosts: list[str] | None = None  # host globs: applies to requests sent there
    geos: list[str] | None = None  # applies to requests served in these geos
    exempt_models: list[str] = []  # models released before the uplift (exact names or globs)
    models: list[str] | None = None  # set: applies to these models only (exact names or globs)

    @model_validator(mode="after")
    def _one_key(self) -> Uplift:
        if (self.hosts is None) == (self.geos is None):
            raise ValueError("set exactly one of hosts and geos")
        return self

    @property
    def source(self) -> str:
        """How a price source names this uplift."""
        return f"regional:{self.name} x{self.factor}"

    def covers(self, provider: str, model: str, host: str, geo: str | None, *, reserving: bool) -> bool:
        """Whether this uplift applies. `geo` None: the request named none (reserving: its
        workspace default may be one of ours) or the response reported none (settling: none)."""
        if provider != self.provider or any(model_matches(m, model) for m in self.exempt_models):
            return False
        if self.models is not None and not any(model_matches(m, model) for m in self.models):
            return False
        if self.hosts is not None:
            return any(glob_match(h, host) for h in self.hosts)
        assert self.geos is not None
        if geo is None:
            return reserving
        return geo.strip().lower() in {g.lower() for g in self.geos}


class RegionalPrices(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    uplifts: list[Uplift] = []
    _memo: dict[tuple[str, str, str, str | None, bool], Uplift | None] = PrivateAttr(default_factory=dict)

    def uplift(
        self, provider: str, model: str, host: str, geo: str | None, *, reserving: bool
    ) -> Uplift | None:
        """The dearest uplift that applies, or None."""
        key = (provider, model, host, geo, reserving)
        if key in self._memo:
            return self._memo[key]
        found = [u for u in self.uplifts if u.covers(provider, model, host, geo, reserving=reserving)]
        dearest = max(found, key=lambda u: u.factor, default=None)
        if len(self._memo) > 4096:
            self._memo.clear()
        self._memo[key] = dearest
        return dearest


@functools.cache
def load(path: Path) -> RegionalPrices:
    """The table at `path`. Raises `PolicyError`: a proxy without it must not start."""
    return load_table(path, RegionalPrices, "regional price table")


def shipped() -> RegionalPrices:
    """The shipped `rules/regional_prices.yaml`."""
    from governance import RULES_DIR

    return load(RULES_DIR / "regional_prices.yaml")


def request_geo(body: Mapping[str, Any]) -> str | None:
    """The geo a request asks inference to run in (Anthropic `inference_geo`), or None."""
    geo = body.get("inference_geo")
    if geo is not None and not isinstance(geo, str):
        raise RequestParseError(f"`inference_geo` must be a string, not {geo!r}")
    return geo


def surcharged(
    price: Callable[[int], Priced], searches: int, uplift: Uplift | None, fee: Fee | None
) -> Priced:
    """`price(searches)` with `uplift` on its token part (search fees are not regional) and the
    fee table's per-call `fee` added, each named in the price source."""
    priced = price(searches)
    cost, source = priced.cost, priced.source
    if uplift is not None:
        tokens_only = price(0).cost if searches else cost
        cost = tokens_only * uplift.factor + (cost - tokens_only)
        source = f"{source}; {uplift.source}"
    if fee is not None:
        cost, source = cost + fee.per_call, f"{source}; {fee.source}"
    return Priced(cost, source)
