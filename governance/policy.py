"""The operator's rules: pydantic models of a rules file, loading, overrides and the JSON schema.

A rules file is YAML. Unknown keys are errors, so a misspelled limit can never be silently
ignored. Model tables (multipliers, output caps) may live in their own files, named relative
to the rules file, and are loaded and validated with it.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from governance.errors import PolicyError

NonNegativeUSD = Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]
PerMillionUSD = Annotated[Decimal, Field(ge=0, allow_inf_nan=False, description="USD per 1M tokens")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class PriceOverride(_Strict):
    """A model's price in USD per million tokens. Cache prices default to the input price."""

    input_mtok: PerMillionUSD
    """USD per 1M input tokens."""
    output_mtok: PerMillionUSD
    """USD per 1M output tokens (reasoning included)."""
    cache_read_mtok: PerMillionUSD | None = None
    """USD per 1M cache-read input tokens; the input price when unset."""
    cache_write_mtok: PerMillionUSD | None = None
    """USD per 1M cache-write input tokens; the input price when unset."""


class Budget(_Strict):
    """A hard USD cap. This version knows the global scope and the window that never resets."""

    name: str = Field(default="global", pattern=r"^[A-Za-z0-9_.-]+$")
    """Names the budget in refusals and in `spendfuse status`."""
    scope: Literal["global"] = "global"
    """Whose spend counts: `global` is every request through the proxy."""
    limit_usd: NonNegativeUSD
    """The cap. Spend plus reservations never pass it."""
    window: Literal["never"] = "never"
    """When spend resets: `never` (a per-run cap, as eval harnesses use)."""


class UnmeteredAllowance(_Strict):
    """Lets chosen unmetered endpoints on known LLM hosts through, unpriced and unrecorded."""

    host: str
    """Exact host, lower case (e.g. `api.openai.com`)."""
    path: str
    """Path, or a prefix ending in `*` (e.g. `/v1/embeddings` or `/v1/files*`)."""
    methods: list[str] = ["POST"]
    """HTTP methods this allowance covers."""

    @field_validator("host")
    @classmethod
    def _host_lower(cls, v: str) -> str:
        return v.strip().lower().rstrip(".")

    @field_validator("methods")
    @classmethod
    def _methods_upper(cls, v: list[str]) -> list[str]:
        return [m.upper() for m in v]

    def matches(self, method: str, host: str, path: str) -> bool:
        if host != self.host or method.upper() not in self.methods:
            return False
        want = self.path.lower().rstrip("/") or "/"
        if want.endswith("*"):
            return path.startswith(want[:-1])
        return path == want


class Estimate(_Strict):
    """How the worst case of a request is estimated before it is forwarded."""

    input_margin: Annotated[Decimal, Field(ge=1, le=10)] = Decimal("1.10")
    """Multiplier on the tokenizer's input count: tiktoken is exact only for OpenAI models."""
    image_tokens: Annotated[int, Field(ge=0)] = 1600
    """Tokens reserved per image (base64 or URL), which is never tokenized as text."""
    default_max_output_tokens: Annotated[int, Field(gt=0)] | None = None
    """Output cap assumed when a request sets none and the model is not in the output-cap table."""


class LedgerSettings(_Strict):
    """Ledger housekeeping."""

    hold_ttl_seconds: Annotated[int, Field(ge=60)] = 7200
    """A reservation older than this is taken as lost in a crash and charged at its amount."""


class Policy(_Strict):
    """A whole rules file, with its model tables loaded."""

    version: Literal[1] = 1
    """Rules format version."""
    budgets: list[Budget] = []
    """Hard USD caps. All applicable budgets must have room for a request's worst case."""
    max_multiplier: Annotated[Decimal, Field(ge=0, allow_inf_nan=False)] | None = None
    """Refuse models whose multiplier is above this. Unset: no multiplier cap."""
    multipliers: dict[str, Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]] | str = "multipliers.yaml"
    """Model -> multiplier (exact, then longest prefix, then `default`), or a YAML file of them."""
    model_limits: dict[str, Annotated[int, Field(gt=0)]] | str = "model_limits.yaml"
    """Model -> maximum output tokens, used when a request sets no output cap, or a YAML file."""
    prices: dict[str, PriceOverride] = {}
    """Price overrides, by exact model then longest prefix. They win over genai-prices."""
    default_price: PriceOverride | None = None
    """Price for models nobody knows. Unset: such models are refused."""
    estimate: Estimate = Estimate()
    """How worst cases are estimated."""
    allow_unmetered: list[UnmeteredAllowance] = []
    """Billable endpoints on LLM hosts that are let through unmetered. Empty: none."""
    ledger: LedgerSettings = LedgerSettings()
    """Ledger housekeeping."""

    @field_validator("budgets")
    @classmethod
    def _unique_budget_names(cls, v: list[Budget]) -> list[Budget]:
        names = [b.name for b in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate budget names: {', '.join(dupes)}")
        return v

    @model_validator(mode="after")
    def _tables_loaded(self) -> Policy:
        if isinstance(self.multipliers, str) or isinstance(self.model_limits, str):
            raise ValueError("model tables must be loaded through governance.policy.load()")
        return self

    def multiplier_table(self) -> dict[str, Decimal]:
        assert isinstance(self.multipliers, dict)
        return self.multipliers

    def output_cap_table(self) -> dict[str, int]:
        assert isinstance(self.model_limits, dict)
        return self.model_limits


def _read_yaml(path: Path, what: str) -> Any:
    if not path.is_file():
        # A mistyped path must not mean "no rules": that would be a proxy without enforcement.
        raise PolicyError(f"{what} {str(path)!r} does not exist")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise PolicyError(f"cannot read {what} {str(path)!r}: {e}") from e


def _load_table(value: Any, base: Path, key: str) -> Any:
    if not isinstance(value, str):
        return value
    data = _read_yaml(base / value, f"{key} table")
    if not isinstance(data, dict):
        raise PolicyError(f"{key} table {str(base / value)!r} must be a mapping of model to value")
    return data


def _format_errors(e: ValidationError) -> str:
    lines = []
    for err in e.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)


def parse(data: Any, base: Path, origin: str = "rules") -> Policy:
    """Validate already-parsed rules data; model table paths are resolved against `base`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError(f"{origin}: the rules file must be a mapping")
    data = dict(data)
    data["multipliers"] = _load_table(data.get("multipliers", "multipliers.yaml"), base, "multipliers")
    data["model_limits"] = _load_table(data.get("model_limits", "model_limits.yaml"), base, "model_limits")
    try:
        return Policy.model_validate(data)
    except ValidationError as e:
        raise PolicyError(f"{origin} is invalid:\n{_format_errors(e)}") from e


def load(path: str | Path) -> Policy:
    """Load and validate a rules file. Raises `PolicyError` with every problem it finds."""
    p = Path(path)
    return parse(_read_yaml(p, "rules file"), p.parent, origin=str(p))


def with_overrides(
    policy: Policy, *, budget_usd: Decimal | None = None, max_multiplier: Decimal | None = None
) -> Policy:
    """Apply operator overrides: `budget_usd` replaces the global budget's limit (adding one when
    the rules have none); `max_multiplier` replaces the multiplier cap."""
    update: dict[str, Any] = {}
    if budget_usd is not None:
        if budget_usd < 0 or not budget_usd.is_finite():
            raise PolicyError(f"budget must be a non-negative amount of USD, not {budget_usd}")
        budgets = [b for b in policy.budgets if b.name != "global"]
        budgets.insert(0, Budget(name="global", limit_usd=budget_usd))
        update["budgets"] = budgets
    if max_multiplier is not None:
        if max_multiplier < 0 or not max_multiplier.is_finite():
            raise PolicyError(f"max multiplier must be a non-negative number, not {max_multiplier}")
        update["max_multiplier"] = max_multiplier
    return policy.model_copy(update=update) if update else policy


def json_schema() -> str:
    """The JSON schema of a rules file, as committed in `rules/policy.schema.json`."""
    schema = Policy.model_json_schema(mode="validation")
    schema["title"] = "spendfuse rules"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
