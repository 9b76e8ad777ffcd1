"""`Policy`: the pydantic model of a whole rules file, with its model tables loaded."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator

from governance.clients import ClientShapes
from governance.custody import Credential
from governance.hostrules import HostRule
from governance.limits import (
    BudgetRule,
    Customer,
    GlobalScope,
    Key,
    ModelScope,
    ProviderScope,
    RateLimitRule,
    Team,
)
from governance.rulemodels import (
    ClampOutput,
    Egress,
    Estimate,
    ImageFormula,
    LedgerSettings,
    PriceOverride,
    Strict,
    UnmeteredAllowance,
)


class Policy(Strict):
    """A whole rules file, with its model tables loaded.

    Version 2 defines budgets and rate limits once, by id, and attaches them to scopes (`global`,
    `providers`, `models`, `customers`, `teams`, `keys`). A version 1 file's `budgets` are the
    global scope's, and are read as version 2 budgets attached to `global`."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, use_attribute_docstrings=True, populate_by_name=True
    )

    version: Literal[1, 2] = 1
    """Rules format version: 2 for scopes, keys and rate limits; 1 for a global budget only."""
    budgets: list[BudgetRule] = []
    """Every budget, by id: a USD cap over a window. Attach them to scopes by id."""
    rate_limits: list[RateLimitRule] = []
    """Every rate limit, by id: requests, tokens and requests in flight per window."""
    global_scope: GlobalScope = Field(default=GlobalScope(), alias="global")
    """Limits on every request."""
    providers: list[ProviderScope] = []
    """Limits per provider, applied with or without a key."""
    models: list[ModelScope] = []
    """Limits per model (exact or glob), applied with or without a key."""
    customers: list[Customer] = []
    """Customers: their limits count every request of their teams and keys."""
    teams: list[Team] = []
    """Teams: their limits count every request of their keys."""
    keys: list[Key] = []
    """Keys agents authenticate as. Once there is one, a claimed key must prove itself."""
    require_key: bool = False
    """Refuse requests from clients that authenticate as no key."""
    credentials: list[Credential] = []
    """Provider keys spendfuse holds (custody): injected into admitted requests, so agents need none."""
    refusal_clients: list[ClientShapes] = []
    """Clients that need refusals shaped their own way, tried before the shipped ones
    (`rules/refusal_clients.yaml`, which says how a client is recognised)."""
    refusal_codes: Literal["provider", "bifrost"] = "provider"
    """HTTP statuses of refusals. `provider`: each provider's own, chosen so its clients stop at
    once (`rules/refusal_shapes.yaml`). `bifrost`: Bifrost's, for harnesses that check them: 402
    for a budget, 403 for a blocked key, model or provider, 429 for a rate limit (same bodies)."""
    custody: Literal["optional", "required"] = "optional"
    """`required`: refuse any request whose provider credential is not a virtual key (a key's secret)
    or absent, so that an agent holding a stray real key cannot spend through the fuse either."""
    max_multiplier: Annotated[Decimal, Field(ge=0, allow_inf_nan=False)] | None = None
    """Refuse models whose multiplier is above this. Unset: no multiplier cap."""
    multipliers: dict[str, Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]] | str = "multipliers.yaml"
    """Model -> multiplier (exact, then longest prefix, then `default`), or a YAML file of them
    (relative to the rules file). Unset: the shipped `rules/multipliers.yaml`."""
    model_limits: dict[str, Annotated[int, Field(gt=0)]] | str = "model_limits.yaml"
    """Model -> maximum output tokens, used when a request sets no output cap, or a YAML file
    (relative to the rules file). Unset: the shipped `rules/model_limits.yaml`."""
    image_formulas: dict[str, ImageFormula] | str = "image_tokens.yaml"
    """Model -> how its images are counted, or a YAML file of them. A model missing here counts
    `estimate.image_tokens` per image."""
    prices: dict[str, PriceOverride] = {}
    """Price overrides, by exact model then longest prefix. They win over genai-prices."""
    default_price: PriceOverride | None = None
    """Price for models nobody knows. Unset: such models are refused."""
    estimate: Estimate = Estimate()
    """How worst cases are estimated."""
    allow_unmetered: list[UnmeteredAllowance] = []
    """Billable endpoints on LLM hosts that are let through unmetered. Empty: none."""
    azure_deployments: dict[str, str | Annotated[list[str], Field(min_length=1)]] = {}
    """Azure OpenAI deployment names (`name`, or `host/name` for one resource; `*`: any other) ->
    the model each runs, or the models it may run (reserved as the priciest, settled by the model
    the response reports). A deployment mapped nowhere is bounded by the key's `allowed_models`,
    else refused."""
    hosts: list[HostRule] = []
    """LLM hosts of the operator's own (vLLM, LiteLLM, a gateway), checked before the shipped
    table in `rules/hosts.yaml`."""
    egress: Egress = Egress()
    """Which non-LLM destinations agents may reach."""
    unknown_llm_hosts: Literal["refuse", "meter", "pass"] = "refuse"
    """LLM-shaped requests to hosts missing from the host table (a POST whose JSON body names a
    model and carries a prompt, or whose path ends in an inference route such as
    `/chat/completions`): `refuse` them, naming the host; `meter` them as OpenAI-compatible,
    priced by `prices`, else `default_price` (which must be set), refusing other routes; or
    `pass` them untouched."""
    websockets: Literal["meter", "refuse"] = "meter"
    """WebSocket upgrades to a metered Responses route (`/v1/responses`, Codex's first transport):
    `meter` lets them through and reserves each `response.create` frame before passing it on,
    settling it from the server's terminal event; `refuse` answers 426, after which Codex falls
    back to HTTP streaming. Other upgrades to LLM hosts (the Realtime API) are always refused."""
    clamp_output: ClampOutput | None = None
    """Output-cap injection (see ClampOutput). Null: off; a request's cap is reserved as it is."""
    allow_unlimited: bool = False
    """Rules with no budget and no multiplier cap refuse to start, since they enforce nothing.
    `true` says that metering without limits is what the operator wants."""
    ledger: LedgerSettings = LedgerSettings()
    """Ledger housekeeping."""

    @field_validator("hosts")
    @classmethod
    def _unique_names(cls, v: list[HostRule], info: ValidationInfo) -> list[HostRule]:
        names = [item.name for item in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate host names: {', '.join(dupes)}")
        return v

    @model_validator(mode="after")
    def _unknown_hosts_priced(self) -> Policy:
        if self.unknown_llm_hosts == "meter" and self.default_price is None:
            raise ValueError("unknown_llm_hosts: meter needs a default_price to price unknown hosts at")
        return self

    @model_validator(mode="after")
    def _tables_loaded(self) -> Policy:
        if (
            isinstance(self.multipliers, str)
            or isinstance(self.model_limits, str)
            or isinstance(self.image_formulas, str)
        ):
            raise ValueError("model tables must be loaded through governance.policy.load()")
        return self

    def multiplier_table(self) -> dict[str, Decimal]:
        assert isinstance(self.multipliers, dict)
        return self.multipliers

    def output_cap_table(self) -> dict[str, int]:
        assert isinstance(self.model_limits, dict)
        return self.model_limits

    def image_formula_table(self) -> dict[str, ImageFormula]:
        assert isinstance(self.image_formulas, dict)
        return self.image_formulas
