"""API families: what spendfuse knows of each provider's wire format, behind one protocol.

`ApiFamily` is the contract of a metered family; `FAMILIES` registers each one explicitly, and
the rules' family names (`hosts.yaml`, `hosts:`) derive from it. `ErrorEnvelope` is the part
every known provider has, metered or not: its refusal body (shapes are data in
`rules/refusal_shapes.yaml`). A new family is one module satisfying `ApiFamily`, its fixtures
under `tests/fixtures/<name>/`, an entry in `FAMILIES` and its routes and hosts in `hosts.yaml`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any, Protocol, runtime_checkable

from pydantic import AfterValidator

from governance.families import anthropic, azure, bedrock, google, openai, shapes
from governance.families.common import Auth
from governance.families.sse import Event
from governance.families.tap import StreamReader, UsageReader
from governance.types import NO_LINE, ParsedRequest, Refusal, RequestLine, Usage


@runtime_checkable
class ErrorEnvelope(Protocol):
    """How a provider's clients read an error."""

    NAME: str
    """The envelope's name in `hosts.yaml` (`envelope:`) and `rules/refusal_shapes.yaml`."""
    API_KEY_HEADERS: tuple[str, ...]
    """Request headers carrying the client's API key, in the order they identify it."""

    def render_error(self, refusal: Refusal, request_id: str) -> tuple[int, dict[str, str], bytes]:
        """`(status, headers, body)` of `refusal` as the provider sends errors."""

    def auth(self, provider: str) -> Auth | None:
        """How a custody key is sent to `provider` (a genai-prices id) by clients of this
        envelope: its header and prefix; None when a key cannot simply be put in a header."""


@runtime_checkable
class ApiFamily(ErrorEnvelope, Protocol):
    """A metered API family. Every `api` argument is one of `APIS` (the API names its routes in
    `hosts.yaml` map to); every body is a decoded JSON object."""

    APIS: tuple[str, ...]
    """The metered APIs; `hosts.yaml` routes each to one of them."""
    PRICE_HEADERS: tuple[str, ...]
    """Request headers whose values change what the provider bills (a request re-priced when
    one changes after the decision is refused)."""
    COUNTER_HEADERS: frozenset[str]
    """Request headers sent on to the provider's token counter (credentials, API versions)."""

    def parse_request(self, api: str, body: Mapping[str, Any], line: RequestLine = NO_LINE) -> ParsedRequest:
        """The request's priced facts, from its body and, where the API puts them there, its path
        and headers (`line`). Raises `RequestParseError` on a request it cannot meter."""

    def price_flags(self, headers: Callable[[str], list[str]]) -> list[str]:
        """The items of `PRICE_HEADERS` that change the price (betas); `headers` is a `get_all`."""

    def prepare_request(
        self, api: str, body: Mapping[str, Any], parsed: ParsedRequest
    ) -> dict[str, Any] | None:
        """The body to forward instead (so its usage can be read), or None to forward it as is."""

    def adds_stream_events(
        self, api: str, sent: Mapping[str, Any], forwarded: Mapping[str, Any] | None
    ) -> bool:
        """Whether forwarding `forwarded` (`prepare_request`'s body, None: `sent` as is) makes the
        response stream carry events the client did not ask for (see `added_event`)."""

    def added_event(self, api: str, event: Event) -> bool:
        """Whether a streamed `event` is one that preparing the request added; such events are
        taken out of the stream the client receives."""

    def with_output_cap(self, api: str, body: Mapping[str, Any], cap: int) -> dict[str, Any]:
        """`body` with its output cap set to `cap` in the field the API reads."""

    def count_request(self, api: str, body: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """`(path suffix, body)` of the provider's free input-token counter, or None."""

    def counter_request(
        self, api: str, path: str, body: Mapping[str, Any]
    ) -> tuple[str, dict[str, Any]] | None:
        """`(path, body)` of the counter's request for a request to `path`, or None."""

    def read_counter_response(self, status: int, body: Any) -> int | None:
        """The input tokens of the counter's answer, or None when it gave none."""

    def usage_from_body(self, api: str, body: Any) -> Usage | None:
        """Usage from a whole JSON response, or None when it carries none."""

    def stream_reader(self, api: str) -> StreamReader:
        """A reader of a streamed response's usage that frames the bytes itself."""

    def StreamUsage(self, api: str) -> UsageReader:  # noqa: N802 - a class on the modules
        """A reader of usage off a streamed response's SSE events."""


#: Metered API families, by name (the rules' `family:` values).
FAMILIES: dict[str, ApiFamily] = {  # type: ignore[dict-item]
    "openai": openai,
    "anthropic": anthropic,
    "google": google,
    "azure": azure,
    "bedrock": bedrock,
}

#: Error envelopes, by name (the rules' `envelope:` values): every metered family's, and those
#: of providers known but not metered.
ENVELOPES: dict[str, ErrorEnvelope] = {**FAMILIES}  # type: ignore[dict-item]

#: Request headers that carry an upstream API key, in the order they identify a principal: the
#: first present is the client's key (an Anthropic key beside a gateway's bearer names the caller).
API_KEY_HEADERS = ("x-api-key", "api-key", "authorization", "x-goog-api-key")
#: Headers sent on to a provider's free token counter: the client's credentials and API versions.
COUNTER_HEADERS = frozenset(h for f in FAMILIES.values() for h in f.COUNTER_HEADERS)
#: Headers that change what a metered request is billed (the 1M-token context beta).
PRICE_HEADERS = tuple(dict.fromkeys(h for f in FAMILIES.values() for h in f.PRICE_HEADERS))

if set(API_KEY_HEADERS) != {h for e in ENVELOPES.values() for h in e.API_KEY_HEADERS}:
    # Every envelope's key headers are read, and none that no provider uses.
    raise RuntimeError("API_KEY_HEADERS must list exactly the envelopes' API key headers")


def known_envelope(name: str) -> str:
    """`name`, if it names an error envelope; else ValueError (a rules value that names one)."""
    if name not in ENVELOPES:
        raise ValueError(f"unknown envelope {name!r} (envelopes: {', '.join(ENVELOPES)})")
    return name


#: A rules field naming an error envelope.
EnvelopeName = Annotated[str, AfterValidator(known_envelope)]

# Refusal shapes are data: checked on import, so a proxy whose refusals it cannot shape never starts.
shapes.require(ENVELOPES)

__all__ = [
    "API_KEY_HEADERS",
    "Auth",
    "COUNTER_HEADERS",
    "ENVELOPES",
    "FAMILIES",
    "PRICE_HEADERS",
    "ApiFamily",
    "ErrorEnvelope",
    "StreamReader",
    "UsageReader",
]
