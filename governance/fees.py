"""Per-call fees the price data lacks (`rules/fees.yaml`): a search model that searches on every
call bills a fee per call that genai-prices does not carry, so it is added here, when reserving
and when settling, and named in the price source."""

from __future__ import annotations

import functools
from decimal import Decimal
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from governance.matching import model_matches
from governance.tables import load_table

THOUSAND = Decimal(1000)


class Fee(BaseModel):
    """One model's fee per call."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: str
    model: str  # an exact name (covering its snapshots) or a glob
    per_call_usd: Annotated[Decimal, Field(ge=0)] | None = None
    per_1k_calls_usd: Annotated[Decimal, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _one_price(self) -> Fee:
        if (self.per_call_usd is None) == (self.per_1k_calls_usd is None):
            raise ValueError("set exactly one of per_call_usd and per_1k_calls_usd")
        return self

    @property
    def per_call(self) -> Decimal:
        """The fee of one call in USD, exact."""
        if self.per_call_usd is not None:
            return self.per_call_usd
        assert self.per_1k_calls_usd is not None
        return self.per_1k_calls_usd / THOUSAND

    @property
    def source(self) -> str:
        """How a price source names this entry."""
        return f"fees.yaml:{self.model}"


class FeeTable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    fees: list[Fee] = []
    _memo: dict[tuple[str, str], Fee | None] = PrivateAttr(default_factory=dict)  # every price asks

    def fee_for(self, provider: str, model: str) -> Fee | None:
        """The first entry covering `model` at `provider`, or None."""
        key = (provider, model)
        if key in self._memo:
            return self._memo[key]
        found = next((f for f in self.fees if f.provider == provider and model_matches(f.model, model)), None)
        if len(self._memo) > 4096:
            self._memo.clear()
        self._memo[key] = found
        return found


@functools.cache
def load(path: Path) -> FeeTable:
    """The fee table at `path`. Raises `PolicyError`: a proxy without its fees must not start."""
    return load_table(path, FeeTable, "fee table")


def shipped() -> FeeTable:
    """The shipped `rules/fees.yaml`."""
    from governance import RULES_DIR

    return load(RULES_DIR / "fees.yaml")
