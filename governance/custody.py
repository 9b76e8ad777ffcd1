"""Key custody in the rules: the provider keys spendfuse holds so that the agent never has one.

Pydantic models only. A `Credential` names where a provider key is read from (an environment
variable or a file, never the rules file itself); `governance.policymodel.Policy` lists them under
`credentials:` and says with `custody:` whether a request may still bring its own provider key.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from governance.limits import Id
from governance.rulemodels import Strict


class Credential(Strict):
    """A provider key held by spendfuse. It is injected into an admitted request to its provider,
    in the provider's own auth header, and used for the provider's free token counter. Its value
    never appears in logs, the ledger, a refusal, `spendfuse status` or a saved flow."""

    id: Id
    """The credential's id, named by keys' `credentials:` and in logs (never the secret)."""
    provider: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    """The provider whose requests it serves (genai-prices id: `openai`, `anthropic`, `google`, …)."""
    env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """The environment variable holding the key."""
    file: Path | None = None
    """A file holding the key (surrounding whitespace stripped)."""
    weight: Annotated[Decimal, Field(gt=0, allow_inf_nan=False)] = Decimal(1)
    """Among several credentials of one provider, each is chosen with probability weight / sum."""
    models: list[str] | None = None
    """Models (exact names or globs) this credential serves. Unset: every model of its provider."""
    hosts: list[str] | None = None
    """Exact host names this key may be sent to (`myres.openai.azure.com`). Required for a provider
    whose hosts are customers' own resources (Azure: an agent could create one). Unset: every
    shipped host of its provider."""

    @field_validator("hosts")
    @classmethod
    def _exact_hosts(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        if not v:
            raise ValueError("empty: the key could be sent nowhere (leave `hosts` unset, or name hosts)")
        for host in v:
            if "*" in host or "/" in host or not host.strip():
                raise ValueError(f"{host!r}: name each host exactly (no globs, no paths)")
        return [h.strip().lower().rstrip(".") for h in v]

    @model_validator(mode="after")
    def _one_source(self) -> Credential:
        if (self.env is None) == (self.file is None):
            raise ValueError("a credential reads its key from exactly one of `env` or `file`")
        return self
