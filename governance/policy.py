"""The operator's rules: pydantic models of a rules file, loading, overrides and the JSON schema.

A rules file is YAML. Unknown keys are errors, so a misspelled limit can never be silently
ignored. Model tables (multipliers, output caps) may live in their own files, named relative
to the rules file, and are loaded and validated with it.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from governance.errors import PolicyError
from governance.hosts import HostTable, build_table
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
from governance.shape import UnknownHostsRules

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


class LegacyBudget(_Strict):
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


class ImageFormula(_Strict):
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


Family = Literal["openai", "anthropic"]
Envelope = Literal["openai", "anthropic", "google", "bedrock"]


class HostRule(_Strict):
    """An LLM API host: shipped in `rules/hosts.yaml`, or added by the operator under `hosts:`
    (a self-hosted vLLM, an internal LiteLLM, a corporate gateway). Operator entries win."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    """Names the entry in refusals and logs."""
    match: Annotated[list[str], Field(min_length=1)]
    """Host names or IP literals, or globs where `*` stands for any characters (dots included)."""
    family: Family | None = None
    """The API family whose requests are metered on it. Null: known but not metered (refused)."""
    envelope: Envelope | None = None
    """Whose error format its clients understand. Defaults to the family, else openai."""
    provider: str | None = None
    """genai-prices provider id for pricing. Defaults to the family."""
    base_path: str = "/v1"
    """Path prefix of the API on this host, before the family's routes (`/v1/chat/completions`)."""
    prices: dict[str, PriceOverride] = {}
    """Model prices on this host, USD per 1M tokens, by exact model then longest prefix. They win
    over the rules' `prices` and over genai-prices."""
    default_price: PriceOverride | None = None
    """Price of any model on this host that nothing else prices."""

    @field_validator("match")
    @classmethod
    def _patterns(cls, v: list[str]) -> list[str]:
        for pattern in v:
            if not pattern.strip() or pattern.strip("*. ") == "":
                raise ValueError(f"host pattern {pattern!r} would match every host")
        return [p.strip().lower() for p in v]

    @field_validator("base_path")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must start with /")
        return v


class FamilyRoutes(_Strict):
    """One API family's routes after a host's base path: path -> API name (POST only)."""

    metered: dict[str, str]
    """Billable routes that spendfuse prices, reserves and settles."""
    free: dict[str, str] = {}
    """Routes the provider does not bill (token counting)."""


class HostsFile(_Strict):
    """`rules/hosts.yaml`: the shipped table of LLM hosts and family routes."""

    families: dict[Family, FamilyRoutes]
    """Routes per API family."""
    hosts: list[HostRule]
    """Every LLM API host spendfuse knows."""
    unknown_hosts: UnknownHostsRules
    """What makes a request to a host missing from `hosts` LLM-shaped."""


class EgressAllow(_Strict):
    """A destination the egress allowlist lets through."""

    host: str
    """Host name, IP literal, or a glob where `*` stands for any characters (`*.pypi.org`)."""
    ports: list[Annotated[int, Field(ge=1, le=65535)]] = []
    """Ports allowed on that host; empty: every port."""


class Egress(_Strict):
    """Which non-LLM destinations agents may reach through the proxy. LLM hosts are always
    reachable, and always metered."""

    mode: Literal["open", "allowlist"] = "open"
    """`open`: every non-LLM host passes untouched. `allowlist`: only hosts listed in `allow`
    (plus the LLM hosts); everything else is refused (HTTP 403, other protocols closed)."""
    allow: list[EgressAllow] = []
    """Destinations allowed in `allowlist` mode."""


class ClampOutput(_Strict):
    """Output-cap injection. When a request sets no output cap, spendfuse writes the cap it
    reserved for into the request's own field; when its cap costs more than the room left in its
    budgets, spendfuse writes the largest cap that fits. Never below `floor_tokens`."""

    floor_tokens: Annotated[int, Field(ge=1)] = 1024
    """The smallest output cap (per choice) spendfuse writes; a request that cannot afford even
    this many output tokens is refused."""


class LedgerSettings(_Strict):
    """Ledger housekeeping."""

    hold_ttl_seconds: Annotated[int, Field(ge=60)] = 7200
    """A reservation older than this is taken as lost in a crash and charged at its amount."""


class Policy(_Strict):
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


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key repeated in one mapping is an error naming its
    line: last-wins would let a second `limit_usd` silently change a cap."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:
            continue  # an unhashable key: the constructor below reports it
        line = key_node.start_mark.line + 1
        if first is not None:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first on line {first}, again on line {line})",
                key_node.start_mark,
            )
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_yaml(text: str) -> Any:
    """Parse YAML as rules are parsed: safe, and duplicate keys are errors."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass


def _read_yaml(path: Path, what: str) -> Any:
    if not path.is_file():
        # A mistyped path must not mean "no rules": that would be a proxy without enforcement.
        raise PolicyError(f"{what} {str(path)!r} does not exist")
    try:
        return parse_yaml(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise PolicyError(f"cannot read {what} {str(path)!r}: {e}") from e


def _load_table(value: Any, base: Path, key: str) -> Any:
    if not isinstance(value, str):
        return value
    data = _read_yaml(base / value, f"{key} table")
    if not isinstance(data, dict):
        raise PolicyError(f"{key} table {str(base / value)!r} must be a mapping of model to value")
    return data


@dataclass(frozen=True)
class Problem:
    """Something wrong in a rules file, at a place in it (`("keys", 2, "team")`)."""

    loc: tuple[str | int, ...]
    message: str
    fatal: bool = True  # False: a warning (legal, but likely not what was meant)

    def where(self) -> str:
        return ".".join(str(p) for p in self.loc) or "(top level)"


class RulesInvalid(PolicyError):
    """A rules file with problems; `problems` lists each, with its place in the file."""

    def __init__(self, origin: str, problems: list[Problem]) -> None:
        self.origin = origin
        self.problems = problems
        lines = "\n".join(f"  {p.where()}: {p.message}" for p in problems)
        super().__init__(f"{origin} is invalid:\n{lines}")


def _validation_problems(e: ValidationError) -> list[Problem]:
    return [Problem(tuple(err["loc"]), err["msg"]) for err in e.errors()]


# Keys that only version 2 understands: in a version 1 file they would be silently dropped.
_V2_KEYS = ("rate_limits", "global", "providers", "models", "customers", "teams", "keys", "require_key")


def _from_version_1(data: dict[str, Any]) -> tuple[dict[str, Any], list[Problem]]:
    """A version 1 file as version 2: each budget becomes one of the same id on `global`."""
    problems = [
        Problem((key,), f"`{key}` needs `version: 2` (this file is version 1)")
        for key in _V2_KEYS
        if key in data
    ]
    raw = data.get("budgets", [])
    if not isinstance(raw, list):
        return data, [*problems, Problem(("budgets",), "must be a list")]
    budgets = []
    for i, item in enumerate(raw):
        try:
            legacy = LegacyBudget.model_validate(item)
        except ValidationError as e:
            problems += [Problem(("budgets", i, *p.loc), p.message) for p in _validation_problems(e)]
            continue
        budgets.append({"id": legacy.name, "max_usd": legacy.limit_usd, "reset": legacy.window})
    names = [b["id"] for b in budgets]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        problems.append(Problem(("budgets",), f"duplicate budget names: {', '.join(dupes)}"))
    converted = {**data, "budgets": budgets, "global": {"budgets": names}}
    return converted, problems


def reference_problems(p: Policy) -> list[Problem]:
    """What pydantic cannot see field by field: duplicate ids, references to ids that do not
    exist, limits attached nowhere (settings that would silently do nothing), and empty
    allow-lists (legal: they allow nothing, but seldom meant)."""
    out: list[Problem] = []
    for field, items in (
        ("budgets", p.budgets),
        ("rate_limits", p.rate_limits),
        ("customers", p.customers),
        ("teams", p.teams),
        ("keys", p.keys),
    ):
        first: dict[str, int] = {}
        for i, item in enumerate(items):
            if item.id in first:
                out.append(
                    Problem((field, i, "id"), f"duplicate id {item.id!r} (first at {field}.{first[item.id]})")
                )
            first.setdefault(item.id, i)
    secrets: dict[str, str] = {}
    for i, k in enumerate(p.keys):
        if k.secret_sha256 is not None and k.secret_sha256 in secrets:
            out.append(
                Problem(
                    ("keys", i, "secret_sha256"),
                    f"key {k.id!r} has the same secret as {secrets[k.secret_sha256]!r}",
                )
            )
        elif k.secret_sha256 is not None:
            secrets[k.secret_sha256] = k.id
    budget_ids = {b.id for b in p.budgets}
    limit_ids = {r.id for r in p.rate_limits}
    used: set[str] = set()
    used_limits: set[str] = set()
    scopes: list[tuple[tuple[str | int, ...], Any]] = [(("global",), p.global_scope)]
    for field in ("providers", "models", "customers", "teams", "keys"):
        scopes += [((field, i), s) for i, s in enumerate(getattr(p, field))]
    for loc, scope in scopes:
        for j, bid in enumerate(scope.budgets):
            used.add(bid)
            if bid not in budget_ids:
                out.append(Problem((*loc, "budgets", j), f"unknown budget id {bid!r}"))
        for j, rid in enumerate(scope.rate_limits):
            used_limits.add(rid)
            if rid not in limit_ids:
                out.append(Problem((*loc, "rate_limits", j), f"unknown rate limit id {rid!r}"))
        for what, ids in (("budget", scope.budgets), ("rate limit", scope.rate_limits)):
            for dupe in sorted({x for x in ids if ids.count(x) > 1}):
                out.append(Problem(loc, f"{what} {dupe!r} attached twice"))
    for i, b in enumerate(p.budgets):
        if b.id not in used:
            out.append(
                Problem(("budgets", i), f"budget {b.id!r} is attached to no scope, so it limits nothing")
            )
    for i, r in enumerate(p.rate_limits):
        if r.id not in used_limits:
            out.append(
                Problem(
                    ("rate_limits", i), f"rate limit {r.id!r} is attached to no scope, so it limits nothing"
                )
            )
    known_providers = {e.provider for e in host_table(p.hosts).entries if e.family and e.provider}
    seen_scopes: dict[str, str] = {}
    for field, items in (("providers", p.providers), ("models", p.models)):
        for i, item in enumerate(items):
            provider = item.provider
            if provider is not None and provider not in known_providers:
                out.append(
                    Problem(
                        (field, i, "provider"),
                        f"unknown provider {provider!r}: no metered host is priced as it "
                        f"(known: {', '.join(sorted(known_providers))})",
                    )
                )
            name = f"{field}:{provider}/{getattr(item, 'model', '')}"
            if name in seen_scopes:
                out.append(Problem((field, i), f"the same scope as {seen_scopes[name]}: merge their limits"))
            seen_scopes.setdefault(name, f"{field}.{i}")
    if p.require_key and not p.keys:
        out.append(
            Problem(("require_key",), "require_key with no keys: every client is refused", fatal=False)
        )
    customers = {c.id for c in p.customers}
    teams = {t.id for t in p.teams}
    for i, t in enumerate(p.teams):
        if t.customer is not None and t.customer not in customers:
            out.append(Problem(("teams", i, "customer"), f"unknown customer {t.customer!r}"))
    listeners: dict[str, str] = {}
    for i, k in enumerate(p.keys):
        if k.team is not None and k.team not in teams:
            out.append(Problem(("keys", i, "team"), f"unknown team {k.team!r}"))
        if k.customer is not None and k.customer not in customers:
            out.append(Problem(("keys", i, "customer"), f"unknown customer {k.customer!r}"))
        if k.secret_sha256 is None and not k.listeners:
            out.append(
                Problem(
                    ("keys", i), f"key {k.id!r} has no secret_sha256 and no listeners: nothing can use it"
                )
            )
        for j, listener in enumerate(k.listeners):
            if listener in listeners:
                out.append(
                    Problem(
                        ("keys", i, "listeners", j),
                        f"listener {listener!r} is already key {listeners[listener]!r}'s",
                    )
                )
            listeners[listener] = k.id
        for field in ("allowed_models", "allowed_providers"):
            if getattr(k, field) == []:
                out.append(
                    Problem(
                        ("keys", i, field), f"empty: key {k.id!r} may use no {field[8:]} at all", fatal=False
                    )
                )
    return out


def parse(data: Any, base: Path, origin: str = "rules", *, warnings: list[Problem] | None = None) -> Policy:
    """Validate already-parsed rules data; model table paths are resolved against `base`.
    Raises `RulesInvalid` listing every problem; warnings (legal but likely unmeant settings)
    are appended to `warnings` when given."""
    if data is None:
        # Empty, comments only, or `---`: a proxy that enforces nothing must not start by accident.
        raise PolicyError(f"{origin} is empty; write the limits to enforce (see rules/default.yaml)")
    if not isinstance(data, dict):
        raise PolicyError(f"{origin}: the rules file must be a mapping")
    data = dict(data)
    problems: list[Problem] = []
    if data.get("version", 1) == 1:
        data, problems = _from_version_1(data)
    # Tables the rules do not name are the shipped ones, so a rules file works wherever it is
    # saved; a table the rules name by a relative path is next to the rules file.
    shipped = _shipped_rules_dir()
    data["multipliers"] = _load_table(
        data.get("multipliers", str(shipped / "multipliers.yaml")), base, "multipliers"
    )
    data["model_limits"] = _load_table(
        data.get("model_limits", str(shipped / "model_limits.yaml")), base, "model_limits"
    )
    data["image_formulas"] = _load_table(
        data.get("image_formulas", str(shipped / "image_tokens.yaml")), base, "image_formulas"
    )
    try:
        validated = Policy.model_validate(data)
    except ValidationError as e:
        raise RulesInvalid(origin, problems + _validation_problems(e)) from e
    problems += reference_problems(validated)
    fatal = [p for p in problems if p.fatal]
    if fatal:
        raise RulesInvalid(origin, fatal)
    if warnings is not None:
        warnings.extend(p for p in problems if not p.fatal)
    return validated


def load(path: str | Path, *, warnings: list[Problem] | None = None) -> Policy:
    """Load and validate a rules file. Raises `PolicyError` with every problem it finds."""
    p = Path(path)
    return parse(_read_yaml(p, "rules file"), p.parent, origin=str(p), warnings=warnings)


def _shipped_rules_dir() -> Path:
    from governance import RULES_DIR

    return RULES_DIR


def require_limits(policy: Policy, origin: str = "rules") -> None:
    """Refuse rules that enforce nothing (no budget, no multiplier cap) unless they say
    `allow_unlimited: true`: `version: 1` alone must not start a proxy that forwards everything."""
    if policy.budgets or policy.rate_limits or policy.max_multiplier is not None or policy.allow_unlimited:
        return
    raise PolicyError(
        f"{origin} sets no limit at all (no budget, no max_multiplier), so the proxy would enforce "
        f"nothing. Add a budget, or set `allow_unlimited: true` to meter without limits."
    )


def host_table(operator: list[HostRule] | tuple[HostRule, ...]) -> HostTable:
    """The shipped `rules/hosts.yaml` plus the operator's host entries, checked first."""
    from governance import RULES_DIR

    shipped = _shipped_hosts(RULES_DIR / "hosts.yaml")
    data = shipped.model_dump(exclude_none=True)
    operator_entries = [_host_entry(h) for h in operator]
    return build_table(
        {
            "families": data["families"],
            "hosts": [_host_entry(h) for h in shipped.hosts],
            "unknown_hosts": data["unknown_hosts"],
        },
        operator_entries,
    )


@functools.cache
def _shipped_hosts(path: Path) -> HostsFile:
    try:
        return HostsFile.model_validate(_read_yaml(path, "host table"))
    except ValidationError as e:
        raise RulesInvalid(str(path), _validation_problems(e)) from e


def _host_entry(rule: HostRule) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": rule.name,
        "match": rule.match,
        "family": rule.family,
        "base_path": rule.base_path,
    }
    if rule.envelope is not None:
        entry["envelope"] = rule.envelope
    if rule.provider is not None:
        entry["provider"] = rule.provider
    if rule.prices or rule.default_price is not None:
        entry["settings"] = {"prices": rule.prices, "default_price": rule.default_price}
    return entry


def with_overrides(
    policy: Policy, *, budget_usd: Decimal | None = None, max_multiplier: Decimal | None = None
) -> Policy:
    """Apply operator overrides: `budget_usd` replaces the budget with id `global` (a cap that
    never resets, attached to the global scope, added when the rules have none);
    `max_multiplier` replaces the multiplier cap."""
    update: dict[str, Any] = {}
    if budget_usd is not None:
        if budget_usd < 0 or not budget_usd.is_finite():
            raise PolicyError(f"budget must be a non-negative amount of USD, not {budget_usd}")
        budgets = [b for b in policy.budgets if b.id != "global"]
        budgets.insert(0, BudgetRule(id="global", max_usd=budget_usd))
        update["budgets"] = budgets
        attached = policy.global_scope.budgets
        if "global" not in attached:
            update["global_scope"] = policy.global_scope.model_copy(update={"budgets": ["global", *attached]})
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
