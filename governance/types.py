"""Plain domain values shared by the engine's modules. Frozen, so they can cross threads."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING

from governance.units import Unit

if TYPE_CHECKING:
    from governance.families.shapes import Shape

MICRO = Decimal("0.000001")


def to_micro(usd: Decimal) -> int:
    """USD as integer micro-USD, rounded up: a reservation must never be smaller than its price.
    A settled cost is kept exactly instead (governance.money)."""
    return int((usd / MICRO).to_integral_value(rounding="ROUND_CEILING"))


def limit_to_micro(usd: Decimal) -> int:
    """A limit in USD as integer micro-USD, rounded down: a cap of $0.0000015 allows 1 µ$, not 2."""
    return int((usd / MICRO).to_integral_value(rounding="ROUND_FLOOR"))


def from_micro(micro: int) -> Decimal:
    """Integer micro-USD back to an exact `Decimal` of USD."""
    return (Decimal(micro) * MICRO).quantize(MICRO)


def usd(amount: Decimal | None) -> str:
    """Money for humans: `$0.123456` trimmed to cents where exact (`$1.00`)."""
    if amount is None:
        return "n/a"
    q = amount.quantize(MICRO)
    text = f"{q:.6f}".rstrip("0")
    whole, _, frac = text.partition(".")
    return f"${whole}.{frac.ljust(2, '0')}"


class Metering(enum.Enum):
    """How an endpoint on a known LLM host is treated."""

    METERED = "metered"  # priced, checked, reserved and settled
    FREE = "free"  # passes untouched: model lists, token counting
    UNMETERED = "unmetered"  # billable but not metered by this version: refused unless allowed


@dataclass(frozen=True)
class Endpoint:
    """What `wire.detect` found: an API family and what to do with the request."""

    family: str  # "openai" | "anthropic" | a known-but-unmetered host's name
    api: str  # "chat" | "responses" | "completions" | "messages" | "count_tokens" | "models" | path
    metering: Metering
    host: str
    path: str  # normalised: lower case, no query, no duplicate or trailing slashes
    envelope: str = "openai"  # whose error format this endpoint's clients understand
    entry: str = ""  # the host table entry that matched (governance.hosts)


@dataclass(frozen=True)
class RequestLine:
    """What a family may read besides the body: the request's path (with its query) and its
    headers, names lower-cased, in the order sent. Google names the model in the path."""

    path: str = ""
    headers: tuple[tuple[str, str], ...] = ()

    def get_all(self, name: str) -> list[str]:
        """Every value of header `name` (any case), in the order sent."""
        name = name.lower()
        return [v for k, v in self.headers if k == name]


#: A request known only by its body (tests, and families that read nothing else).
NO_LINE = RequestLine()


@dataclass(frozen=True)
class ParsedRequest:
    """The facts a wire parser reads from a request body."""

    model: str
    max_output_tokens: int | None  # the request's own cap, per choice; None when absent
    choices: int  # n (or best_of): each choice can produce max_output_tokens
    stream: bool
    prompt: tuple[object, ...]  # the JSON values whose text is billed as input
    cache_write_hint: str | None = None  # "5m" / "1h" when the prompt asks for cache writes
    service_tier: str | None = None  # the tier the request asks for (OpenAI), as sent
    speed: str | None = None  # "fast" when the request asks for fast mode (Anthropic)
    web_searches: int = 0  # the most server-side web searches the request allows
    audio_output: bool = False  # the request may answer in audio (OpenAI `modalities`)
    audio_input: bool = False  # the prompt carries audio (OpenAI `input_audio` parts)
    server_context: tuple[str, ...] = ()  # ids of context stored on the provider (previous response...)
    server_input: str | None = None  # why input may live on the server beyond what we can count
    unpriced_fees: tuple[str, ...] = ()  # enabled tools whose per-use fees spendfuse does not price
    tool_calls: int | None = None  # server tools that loop: the calls allowed (UNBOUNDED: no bound)
    inference_geo: str | None = None  # where the request asks inference to run (Anthropic)
    provider_prompt_tokens: int = 0  # input the provider adds on its side (Anthropic's tool-use prompt)
    fallbacks: tuple[str, ...] = ()  # other models the host may run it as (OpenRouter's `models`)


@dataclass(frozen=True)
class RequestInfo:
    """Everything the engine needs to decide on one request."""

    request_id: str
    provider: str  # genai-prices provider id
    api: str
    model: str
    principal: str
    stream: bool
    input_tokens: int  # estimate, margin included
    max_output_tokens: int  # worst case across all choices
    output_cap_source: str  # "request" | "model_table" | "default"
    cache_write_hint: str | None = None
    host_entry: str = ""  # the host table entry the request went to (its own prices, if any)
    choices: int = 1  # completions the request asks for; max_output_tokens covers all of them
    requested_output_tokens: int | None = None  # the request's own cap per choice; None: it set none
    service_tier: str | None = None  # the price tier the request may be served at
    speed: str | None = None
    web_searches: int = 0  # the most server-side web searches it may make
    audio_output: bool = False
    audio_input: bool = False
    server_context: tuple[str, ...] = ()  # ids of context the provider keeps (see ParsedRequest)
    server_input: str | None = None  # why its input may exceed what was counted (bounded at admit)
    unpriced_fees: tuple[str, ...] = ()
    tool_calls: int | None = None  # server-tool calls allowed (see governance.server_tools)
    tool_rounds: int = 1  # sampling rounds the provider may run: input and output add up over them
    inference_geo: str | None = None  # the geo the request asks for (None: the workspace default)
    host: str = ""  # the host it went to (regional prices key on it)
    long_context: bool = False  # the client asked for a context window beyond the model's default
    key_id: str | None = None  # the key the client proved (governance.identity), if any
    hides_added_events: bool = False  # the stream carries events spendfuse asked for, not the client
    body_fixed: bool = False  # signed over its bytes (Bedrock's SigV4): forwarded exactly as sent


@dataclass(frozen=True)
class Usage:
    """Real usage, normalised: `input_tokens` is the TOTAL input, cache reads and writes included."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    model: str | None = None  # the model the upstream says it used, when it says
    cache_write_1h_tokens: int = 0  # of cache_write_tokens, those written for an hour (Anthropic: 2x input)
    input_audio_tokens: int = 0  # of input_tokens, audio (priced at the model's audio rate)
    output_audio_tokens: int = 0  # of output_tokens, audio
    web_searches: int = 0  # server-side web searches, billed per search
    service_tier: str | None = None  # OpenAI: "priority", "flex", ... as the response reports it
    speed: str | None = None  # Anthropic: "fast" when fast mode served it
    response_id: str | None = None  # OpenAI Responses: the answer's id (a follow-up may name it)
    conversation_id: str | None = None  # OpenAI Responses: the conversation it belongs to
    inference_geo: str | None = None  # Anthropic: where inference ran, as the response reports it
    reasoning_tokens: int = 0  # as reported: in output_tokens, or on top (a host's `usage:` rule)
    reported_cost: Decimal | None = None  # USD the response says it cost (OpenRouter's usage.cost)

    def __post_init__(self) -> None:
        for name in USAGE_COUNTS:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} is negative")
        if self.cache_read_tokens + self.cache_write_tokens > self.input_tokens:
            raise ValueError("cache tokens exceed the total input")
        if self.cache_write_1h_tokens > self.cache_write_tokens:
            raise ValueError("one-hour cache writes exceed the cache writes")
        if self.input_audio_tokens > self.input_tokens or self.output_audio_tokens > self.output_tokens:
            raise ValueError("audio tokens exceed the tokens they are part of")

    def price_context(self) -> dict[str, str]:
        """genai-prices' `price_context`: the variant of the price that served this usage."""
        context = {}
        if self.service_tier in PRICED_SERVICE_TIERS:
            context["service_tier"] = self.service_tier
        if self.speed == "fast":
            context["speed"] = "fast"
        return context

    @property
    def plain(self) -> bool:
        """Only token counts, at the standard price: what a rate card prices."""
        return not (
            self.input_audio_tokens or self.output_audio_tokens or self.web_searches or self.price_context()
        )


#: The counts a `Usage` carries, each a genai-prices usage field of the same name.
USAGE_COUNTS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "input_audio_tokens",
    "output_audio_tokens",
    "web_searches",
)

#: `ParsedRequest.web_searches` for a search tool with no bound of its own (the rules set one).
UNBOUNDED = -1

#: OpenAI service tiers whose price differs from the default one (genai-prices' variants).
PRICED_SERVICE_TIERS = frozenset({"priority", "flex", "fast"})


@dataclass(frozen=True)
class Priced:
    """A price and where it came from, so every ledger row can say which prices it used."""

    cost: Decimal
    source: str  # "genai-prices 0.2.3", "override:<key>" or "default_price"


class RefusalKind(enum.Enum):
    """The family of a refusal; `rules/refusal_shapes.yaml` maps it to each provider's status and type."""

    QUOTA = "quota"  # a budget: terminal until raised or reset
    INVALID = "invalid"  # the request itself is unacceptable (parse, model, multiplier)
    FORBIDDEN = "forbidden"  # an endpoint this proxy does not let through
    UPGRADE = "upgrade"  # a WebSocket upgrade; the client falls back to HTTP
    UNAVAILABLE = "unavailable"  # the proxy cannot decide (ledger down, internal error)
    RATE = "rate"  # a limit whose window will reset: 429 with Retry-After, and the client may retry
    AUTH = "auth"  # a key that is wrong, inactive, expired, or missing where required: 401
    PROXY_AUTH = "proxy_auth"  # proxy credentials whose secret is wrong: 407
    NOT_FOUND = "not_found"  # a gateway path that names no upstream: 404


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused. Every refusal names its rule; quota refusals carry the numbers."""

    rule: str  # which rule tripped: "budget:global", "model_multiplier_cap", ...
    code: str  # machine-readable code placed in the provider's envelope
    kind: RefusalKind
    message: str
    limit: Decimal | None = None
    spent: Decimal | None = None
    reserved: Decimal | None = None
    remaining: Decimal | None = None
    requested: Decimal | None = None
    resets: str | None = None  # ISO time, or "never"
    headers: dict[str, str] = field(default_factory=dict)
    retry_after: int | None = None  # seconds until the window resets (RATE refusals)
    unit: Unit = Unit.USD  # what limit/spent/reserved/requested count (governance.units)
    status: int | None = None  # set: answer with this HTTP status (`refusal_codes: bifrost`)
    shape: Shape | None = None  # set: the client's own shape, not its envelope's (governance.clients)
    client: str | None = None  # the client that shape is for


#: Units a claim counts in (`governance.units.Unit`, as text).
UNITS = tuple(u.value for u in Unit)


def claim_tokens(unit: str, input_tokens: int, output_tokens: int) -> int:
    """What a token claim (`tokens:input`, `tokens:output`, `tokens:total`) counts of a request."""
    return Unit(unit).tokens(input_tokens, output_tokens)


@dataclass(frozen=True)
class Claim:
    """One limit a request must fit under: `amount` against `limit` in the current window of
    counter `scope`, both in the claim's `unit` (micro-USD for money; tokens, requests or
    requests in flight otherwise).

    The engine fills the window's rule (`reset`, `calendar`, `timezone`); the store resolves the
    window itself (`window_start`, `resets`, by `governance.store.counters`) inside the reserving
    transaction, because a rolling window's anchor and an operator's reset live in the ledger."""

    scope: str  # the counter: "global", "key=a|daily", "team=t|rl|requests"
    window_start: str  # ISO time, or "" for a window that never resets (and was never reset)
    resets: str  # ISO time, or "never"
    limit: int  # in `unit`: micro-USD, tokens, requests or requests in flight
    amount: int  # in `unit`
    rule: str  # the rule name shown to the client: "budget:daily@key=a"
    unit: Unit = Unit.USD
    reset: str = "never"  # the window's length ("never", "1h", "1M")
    calendar: bool = False
    timezone: str = "UTC"


@dataclass(frozen=True)
class Decision:
    """The engine's answer to `admit`."""

    allowed: bool
    reserved: Decimal = Decimal(0)
    refusal: Refusal | None = None  # set when refused, and in dry run when it *would* refuse
    output_cap: int | None = None  # set: write this output cap (per choice) into the request
    hinges_on_count: bool = False  # refused, unrecorded: the provider's exact input count may admit it
    remaining: Decimal | None = None  # USD left in the tightest budget after this reservation
    binding: str | None = None  # that budget's rule name
