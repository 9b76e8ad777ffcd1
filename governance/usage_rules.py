"""How a host's usage reports are read: the `usage:` rule of a host entry (rules/hosts.yaml, or
an operator's `hosts:`), and what it does to the usage a response reports.

OpenAI-compatible hosts speak OpenAI's usage object with differences that change the bill:
xAI counts reasoning tokens outside `completion_tokens`; OpenRouter reports what it charged
(`usage.cost`); Mistral always sends usage at the end of a stream and rejects
`stream_options`. These are facts about a host, so they are data on its entry.
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from typing import Literal

from governance.rulemodels import Strict
from governance.types import Usage


class UsageRules(Strict):
    """How a host reports usage, where it differs from OpenAI's own API."""

    stream: Literal["inject", "sent"] = "inject"
    """`inject`: a streamed request gets `stream_options.include_usage` (OpenAI's way to have the
    final chunk carry usage). `sent`: the host sends usage at the end of every stream and rejects
    fields it does not know, so the request is forwarded as the client wrote it."""
    cost: Literal["computed", "reported"] = "computed"
    """`reported`: settle at the USD cost the response reports (`usage.cost`), the provider's own
    bill, when it reports one; otherwise price its tokens."""
    reasoning: Literal["included", "separate"] = "included"
    """`separate`: Chat Completions' reasoning tokens are billed on top of `completion_tokens` (xAI;
    its Responses API counts them inside `output_tokens`, as OpenAI does)."""
    cap_field: Literal["max_completion_tokens", "max_tokens"] = "max_completion_tokens"
    """Where an output cap spendfuse writes into a chat request that sets none goes: `max_tokens`
    on a host that rejects OpenAI's newer field (Mistral answers it 422)."""


#: OpenAI's own way: every rule at its default.
OPENAI = UsageRules()


def billed(rules: UsageRules, usage: Usage) -> Usage:
    """`usage` as the host bills it: reasoning reported apart is added to the output."""
    if rules.reasoning == "separate" and usage.reasoning_tokens:
        return replace(usage, output_tokens=usage.output_tokens + usage.reasoning_tokens)
    return usage


def settled_cost(rules: UsageRules, usage: Usage) -> Decimal | None:
    """The cost to settle at as the host reported it, or None to price the tokens."""
    return usage.reported_cost if rules.cost == "reported" else None


def legacy_cap(rules: UsageRules | None) -> bool:
    """Whether an output cap written into a request goes in `max_tokens`."""
    return rules is not None and rules.cap_field == "max_tokens"


def injects_stream_usage(rules: UsageRules | None) -> bool:
    """Whether a streamed request to the host may be changed to report its usage."""
    return rules is None or rules.stream == "inject"
