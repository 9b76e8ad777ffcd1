"""What a claim counts, as a type that carries its rules.

A claim counts money (micro-USD), tokens (input, output or both), requests, or requests in
flight. Each unit knows what a request claims in it, what the claim becomes when the request
is settled or its hold expires, whether a smaller output cap can make the request fit, and how
it is shown to people and in headers. `Unit` is a `StrEnum`, so it is stored, compared and
logged as its text (`"usd"`, `"tokens:total"`, ...), which the ledger's rows already hold.
"""

from __future__ import annotations

from enum import StrEnum


class Unit(StrEnum):
    """One unit a limit counts in. Amounts in `USD` are micro-USD; every other unit is a count."""

    USD = "usd"
    TOKENS_INPUT = "tokens:input"
    TOKENS_OUTPUT = "tokens:output"
    TOKENS_TOTAL = "tokens:total"
    REQUESTS = "requests"
    IN_FLIGHT = "in_flight"

    @property
    def is_money(self) -> bool:
        return self is Unit.USD

    @property
    def is_tokens(self) -> bool:
        return self in _TOKEN_UNITS

    @property
    def counts_output(self) -> bool:
        """Whether the unit counts output tokens, so that a smaller output cap shrinks a claim."""
        return self is Unit.TOKENS_OUTPUT or self is Unit.TOKENS_TOTAL

    @property
    def fittable(self) -> bool:
        """Whether output-cap injection can make a claim in this unit fit: money and output tokens."""
        return self is Unit.USD or self.counts_output

    @property
    def part(self) -> str:
        """The part of a rate limit this unit is: `requests`, `tokens` or `in_flight`."""
        return self.value.split(":", 1)[0]

    @property
    def label(self) -> str:
        """How a count in this unit is named in a message: `requests in flight`, `tokens input`."""
        if self is Unit.IN_FLIGHT:
            return "requests in flight"
        return self.value.replace(":", " ")

    @property
    def status_label(self) -> str:
        """How the operator's status table names the unit: `USD`, `tokens:input`, `in flight`."""
        return "USD" if self is Unit.USD else self.value.replace("_", " ")

    @property
    def header_suffix(self) -> str:
        """The unit as a header name ends: `usd`, `tokens-input`, `in-flight`."""
        return self.value.replace(":", "-").replace("_", "-")

    @property
    def field_suffix(self) -> str:
        """The unit as a JSON field name ends: `usd`, `tokens_input`, `in_flight`."""
        return self.value.replace(":", "_")

    def tokens(self, input_tokens: int, output_tokens: int) -> int:
        """What a token claim counts of a request with these input and output tokens."""
        if self is Unit.TOKENS_INPUT:
            return input_tokens
        if self is Unit.TOKENS_OUTPUT:
            return output_tokens
        if self is Unit.TOKENS_TOTAL:
            return input_tokens + output_tokens
        raise ValueError(f"{self.value} is not a token unit")

    def output_room(self, left: int, input_tokens: int) -> int | None:
        """The output tokens a window with `left` of this unit still has room for (None: the unit
        does not count output, so it sets no bound on it)."""
        if self is Unit.TOKENS_OUTPUT:
            return left
        if self is Unit.TOKENS_TOTAL:
            return left - input_tokens
        return None

    def refitted(self, amount: int, usd_micro: int, input_tokens: int, output_tokens: int) -> int:
        """A claim's amount once its request is made to fit: money at the refit's `usd_micro`,
        tokens at the refit's worst case, any other unit unchanged."""
        if self is Unit.USD:
            return usd_micro
        if self.is_tokens:
            return self.tokens(input_tokens, output_tokens)
        return amount

    def final_amount(
        self, amount: int, cost_micro: int, used: tuple[int, int] | None, *, released: bool
    ) -> int:
        """What a claim of `amount` counts once its request is finished: money at the cost;
        tokens at the real count `used` = (input, output) (the reservation when unknown); a
        request once (nothing if released); a request in flight no longer."""
        if self is Unit.USD:
            return cost_micro
        if self is Unit.IN_FLIGHT or released:
            return 0
        if self.is_tokens and used is not None:
            return self.tokens(*used)
        return amount

    def at_expiry(self, amount: int) -> int:
        """What the reaper charges a lost hold's claim: its amount, except that nothing is in flight."""
        return 0 if self is Unit.IN_FLIGHT else amount


_TOKEN_UNITS = frozenset({Unit.TOKENS_INPUT, Unit.TOKENS_OUTPUT, Unit.TOKENS_TOTAL})


#: Each unit by its text: a dict lookup, for the paths that run for every claim.
BY_TEXT: dict[str, Unit] = {u.value: u for u in Unit}


def unit_of(text: str) -> Unit:
    """The unit a stored text names."""
    try:
        return BY_TEXT[text]
    except KeyError:
        raise ValueError(f"unknown unit {text!r}") from None


def token_unit(counts: str) -> Unit:
    """The token unit of a rate limit counting `input`, `output` or `total` tokens."""
    return Unit(f"tokens:{counts}")
