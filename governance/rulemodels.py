"""The small pydantic models of a rules file: prices, estimates, image formulas, egress,
output clamping and ledger housekeeping (the whole file is `governance.policymodel.Policy`)."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

NonNegativeUSD = Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]
PerMillionUSD = Annotated[Decimal, Field(ge=0, allow_inf_nan=False, description="USD per 1M tokens")]


class Strict(BaseModel):
    """A rules model: unknown keys are errors, values frozen, attribute docstrings in the schema."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class PriceOverride(Strict):
    """A model's price in USD per million tokens. Cache prices default to the input price."""

    input_mtok: PerMillionUSD
    """USD per 1M input tokens."""
    output_mtok: PerMillionUSD
    """USD per 1M output tokens (reasoning included)."""
    cache_read_mtok: PerMillionUSD | None = None
    """USD per 1M cache-read input tokens; the input price when unset."""
    cache_write_mtok: PerMillionUSD | None = None
    """USD per 1M cache-write input tokens; the input price when unset."""


class LegacyBudget(Strict):
    """A budget in a version 1 rules file: the global scope's, read as a version 2 budget of the
    same name attached to `global`, so its recorded spend carries over."""

    name: str = Field(default="global", pattern=r"^[A-Za-z0-9_.-]+$")
    """Names the budget in refusals and in `spendfuse status`."""
    scope: Literal["global"] = "global"
    """Whose spend counts: `global` is every request through the proxy."""
    limit_usd: NonNegativeUSD
    """The cap. Spend plus reservations never pass it."""
    window: Literal["never"] = "never"
    """When spend resets: `never` (a per-run cap, as eval harnesses use)."""


class UnmeteredAllowance(Strict):
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


class Estimate(Strict):
    """How the worst case of a request is estimated before it is forwarded."""

    input_margin: Annotated[Decimal, Field(ge=1, le=10)] = Decimal("1.10")
    """Multiplier on the tokenizer's input count: tiktoken is exact only for OpenAI models."""
    image_tokens: Annotated[int, Field(ge=0)] = 1600
    """Tokens reserved per image (base64 or URL), which is never tokenized as text."""
    default_max_output_tokens: Annotated[int, Field(gt=0)] | None = None
    """Output cap assumed when a request sets none and the model is not in the output-cap table."""
    script_margins: dict[
        Literal["ascii", "emoji", "cjk", "other"], Annotated[Decimal, Field(ge=1, le=10)]
    ] = {
        "ascii": Decimal("1.30"),
        "emoji": Decimal("1.40"),
        "cjk": Decimal("1.35"),
        "other": Decimal("1.15"),
    }
    """For models tiktoken only approximates (Claude): multipliers on cl100k's count of ASCII text
    (Claude splits English prose about 16% and code up to 30% finer than OpenAI's tokenizers), of
    emoji, of CJK and of other non-ASCII text (Cyrillic, Greek, accented Latin), which cl100k
    splits coarser still; `input_margin` applies on top."""
    auto_service_tier: Literal["default", "priority", "flex"] = "default"
    """The OpenAI service tier a request asking for `auto` (or none) is reserved at: the tier the
    project is configured to use. Settlement uses the tier the response reports."""
    server_tool_uses: Annotated[int, Field(ge=0)] = 10
    """Calls assumed for a server tool with no bound of its own (`max_uses`, `max_tool_calls`):
    they bound its web searches and its loop's rounds, and are written into the request where
    the API takes a bound."""
    unpriced_tool_fees: Literal["refuse", "allow"] = "refuse"
    """Hosted tools billed per use at prices spendfuse does not model (OpenAI code interpreter,
    file search, image generation; Anthropic code execution): refused, or let through with their
    fees unmetered (their tokens are still metered)."""
    unbounded_tool_calls: Literal["assume", "refuse"] = "assume"
    """A server tool loop with no bound of its own (`max_tool_calls`, `max_uses`): assume
    `server_tool_uses` calls per unbounded tool (written into the request where the API takes a
    bound), or refuse the request."""
    counter_margin: Annotated[Decimal, Field(ge=1, le=2)] = Decimal("1.02")
    """Multiplier on the provider's own input count, which is itself an estimate ("may differ by
    a small amount")."""
    server_input: Literal["context_window", "refuse"] = "context_window"
    """Input the provider keeps on its side that spendfuse cannot count (a previous response it
    never saw, a file by id, a server tool's results): reserve the model's whole context window
    for it, or refuse the request."""


class ImageFormula(Strict):
    """How one model's images are counted (see `rules/image_tokens.yaml`)."""

    method: Literal["tiles", "patches", "pixels", "gemini"]
    """Which provider formula."""
    base: Annotated[int, Field(ge=0)] | None = None
    """tiles: tokens every image costs."""
    tile: Annotated[int, Field(ge=0)] | None = None
    """tiles: tokens per 512 px tile."""
    multiplier: Annotated[Decimal, Field(gt=0)] | None = None
    """patches: tokens per 32 px patch."""
    max_patches: Annotated[int, Field(gt=0)] = 1536
    """patches: the most patches an image is scaled down to."""
    pixels_per_token: Annotated[int, Field(gt=0)] | None = None
    """pixels: pixels per token."""
    max_long_edge: Annotated[int, Field(gt=0)] | None = None
    """pixels: the longest edge an image is scaled down to."""
    max_tokens: Annotated[int, Field(gt=0)] | None = None
    """pixels: the most tokens one image costs."""
    per_tile: Annotated[int, Field(gt=0)] | None = None
    """gemini: tokens per tile."""
    max_tiles: Annotated[int, Field(gt=0)] = 16
    """gemini: tiles counted for an image whose size is unknown."""

    @model_validator(mode="after")
    def _complete(self) -> ImageFormula:
        needs = {
            "tiles": ("base", "tile"),
            "patches": ("multiplier",),
            "pixels": ("pixels_per_token", "max_long_edge", "max_tokens"),
            "gemini": ("per_tile",),
        }[self.method]
        missing = [k for k in needs if getattr(self, k) is None]
        if missing:
            raise ValueError(f"method {self.method} needs {', '.join(missing)}")
        return self


class EgressAllow(Strict):
    """A destination the egress allowlist lets through."""

    host: str
    """Host name, IP literal, or a glob where `*` stands for any characters (`*.pypi.org`)."""
    ports: list[Annotated[int, Field(ge=1, le=65535)]] = []
    """Ports allowed on that host; empty: every port."""


class Egress(Strict):
    """Which non-LLM destinations agents may reach through the proxy. LLM hosts are always
    reachable, and always metered."""

    mode: Literal["open", "allowlist"] = "open"
    """`open`: every non-LLM host passes untouched. `allowlist`: only hosts listed in `allow`
    (plus the LLM hosts); everything else is refused (HTTP 403, other protocols closed)."""
    allow: list[EgressAllow] = []
    """Destinations allowed in `allowlist` mode."""


class ClampOutput(Strict):
    """Output-cap injection. When a request sets no output cap, spendfuse writes the cap it
    reserved for into the request's own field; when its cap costs more than the room left in its
    budgets, spendfuse writes the largest cap that fits. Never below `floor_tokens`."""

    floor_tokens: Annotated[int, Field(ge=1)] = 1024
    """The smallest output cap (per choice) spendfuse writes; a request that cannot afford even
    this many output tokens is refused."""


class LedgerSettings(Strict):
    """Ledger housekeeping."""

    hold_ttl_seconds: Annotated[int, Field(ge=60)] = 7200
    """A reservation older than this is taken as lost in a crash and charged at its amount."""
